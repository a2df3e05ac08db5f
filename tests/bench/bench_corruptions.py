"""CIFAR-10-C build speed: searchlab's batched corruptions against the per-image reference port.

What it measures
    For each of the 15 corruptions, all 5 severities:

    batched: ``CORRUPTIONS[name](x, severity, generator)`` on the 10,000 CIFAR-10 test images in
    chunks of ``--chunk`` (1,000) uint8 (N, 3, 32, 32) images, as ``corruptions.build`` runs it
    (without the disk writes).

    reference: tests/cifar_c_reference.py, the straightforward per-image numpy/PIL/scipy port of
    make_cifar_c.py, on the first ``--ref-images`` (100) test images per severity, with its random
    draws made per image by numpy as the original makes them. Its time is scaled linearly to
    10,000 images (the per-image work does not depend on the image), which the output says.

    The two are timed in interleaved rounds per corruption (``timing.interleave``) after one
    untimed warmup on a few images, so that load on a shared machine hits both alike. The report
    gives, per corruption, the batched seconds for 5 x 10,000 images, the scaled reference seconds
    and their ratio; then the total and a final line ``corruptions ratio N.Nx`` (total reference
    time / total batched time). Runs measured under load are flagged NOT CONCLUSIVE (timing.py).

How to run
    python tests/bench/bench_corruptions.py
    python tests/bench/bench_corruptions.py --images 2000 --ref-images 50 --corruptions fog snow

    The script reports and exits 0; it asserts nothing. It is not collected by pytest.

Target
    corruptions ratio >= 10x.
"""
import argparse
import os
import sys

import numpy as np
import torch
from timing import interleave

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cifar_c_reference as R

from searchlab.corruptions import CORRUPTIONS, FROST_TEXTURES, SEVERITIES, frost_texture

RATIO_TARGET = 10.0
DEFAULT_DATA = os.path.join(os.environ.get("SEARCHLAB_DATA", "/work/shared/data"), "cifar10", "test_x.npy")


R_SNOW = [(0.1, 0.2), (0.1, 0.2), (0.15, 0.3), (0.25, 0.3), (0.3, 0.3)]  # snow layer mean, std


def reference_draws(name, severity, rng):
    """One image's random draws, made with numpy the way make_cifar_c.py makes them."""
    if name == "gaussian_noise":
        return {"normal": rng.normal(size=(32, 32, 3))}
    if name == "shot_noise":
        return rng
    if name == "impulse_noise":
        return {"hit": rng.random((32, 32, 3)), "salt": rng.random((32, 32, 3))}
    if name == "glass_blur":
        passes = [1, 1, 1, 2, 2][severity - 1]
        # the original calls np.random.randint(-1, 1, size=(2,)) once per pixel position
        return {"shift": np.array([[[rng.integers(-1, 1, size=2) for _ in range(30)] for _ in range(30)]
                                   for _ in range(passes)])}
    if name == "motion_blur":
        return {"angle": rng.uniform(-45, 45)}
    if name == "snow":
        mean, std = R_SNOW[severity - 1]
        return {"layer": rng.normal(size=(32, 32), loc=mean, scale=std), "angle": rng.uniform(-135, -45)}
    if name == "frost":
        index = rng.integers(5)
        (h, w), _, _ = FROST_TEXTURES[index]
        top, left = rng.integers(0, h - 32), rng.integers(0, w - 32)
        return frost_texture(int(index))[top:top + 32, left:left + 32]
    if name == "fog":
        shapes, step = [], 32
        while step >= 2:
            shapes += [(32 // step, 32 // step)] * 3
            step //= 2
        return {"uniform": [rng.random(s) for s in shapes]}
    if name == "elastic_transform":
        jitter = 32 * [0.08, 0.07, 0.06, 0.05, 0.03][severity - 1]
        return {"affine": rng.uniform(-jitter, jitter, size=(3, 2)).astype(np.float32),
                "dx": rng.uniform(-1, 1, size=(32, 32)), "dy": rng.uniform(-1, 1, size=(32, 32))}
    return None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="CIFAR-10-C corruptions: batched vs per-image reference "
                                                 f"(target ratio >= {RATIO_TARGET:g}x)")
    parser.add_argument("--data", default=DEFAULT_DATA, help="CIFAR-10 test images .npy (default: %(default)s)")
    parser.add_argument("--images", type=int, default=10000, help="images for the batched run (default: %(default)s)")
    parser.add_argument("--ref-images", type=int, default=100,
                        help="images per severity for the reference, scaled to --images (default: %(default)s)")
    parser.add_argument("--chunk", type=int, default=1000, help="batched chunk size (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=list(CORRUPTIONS))
    return parser.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(2)
    hwc = np.array(np.load(a.data, mmap_mode="r")[:a.images])
    x = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous()
    ref_images = hwc[:a.ref_images]
    scale = len(x) / len(ref_images)
    print(f"batched: {len(x)} images x 5 severities, chunks of {a.chunk}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"reference: per image on {len(ref_images)} images x 5 severities, time scaled x{scale:g} to "
          f"{len(x)} images (linear per image)")

    def batched(name, images):
        def run():
            for severity in SEVERITIES:
                g = torch.Generator().manual_seed(severity)
                for start in range(0, len(images), a.chunk):
                    CORRUPTIONS[name](images[start:start + a.chunk], severity, g)
        return run

    def reference(name, images):
        def run():
            rng = np.random.default_rng(0)
            for severity in SEVERITIES:
                for img in images:
                    R.REFERENCE[name](img, severity, reference_draws(name, severity, rng))
        return run

    totals = {"batched": 0.0, "reference": 0.0}
    loads = []
    print(f"{'corruption':18s} {'batched s':>10s} {'reference s':>12s} {'ratio':>8s}")
    for name in a.corruptions:
        batched(name, x[:8])()
        reference(name, ref_images[:2])()
        result = interleave({"batched": batched(name, x), "reference": reference(name, ref_images)},
                            rounds=a.rounds, warmup=[])
        tb = result.median("batched")
        tr = result.median("reference") * scale
        totals["batched"] += tb
        totals["reference"] += tr
        loads.append(result)
        print(f"{name:18s} {tb:10.2f} {tr:12.2f} {tr / tb:7.1f}x", flush=True)
    print(f"{'total':18s} {totals['batched']:10.2f} {totals['reference']:12.2f}")
    # The 1-min load average before a later corruption counts this benchmark's own previous
    # corruption, so only the first one is the machine's; others' CPU time is per corruption.
    others = [r.others for r in loads if r.others is not None]
    load = max(loads[0].load_before, max(others, default=0.0))
    limit, cores = loads[0].limit, loads[0].cores
    print(f"load: 1-min average {loads[0].load_before:.2f} before the first corruption; other processes "
          f"and steal during the rounds: at most {max(others, default=float('nan')):.2f} cores")
    print(f"conclusive: quiet machine (load {load:.1f} on {cores} cores, limit {limit:.1f})" if load <= limit else
          f"NOT CONCLUSIVE: measured under load (load {load:.1f} on {cores} cores, limit {limit:.1f}); "
          "rerun on a quiet machine")
    print(f"corruptions ratio {totals['reference'] / totals['batched']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
