"""Augmentation throughput of searchlab's batched pipeline against the usual per-image PIL pipeline.

What it measures
    Images per second of two augmentations on 256-image CIFAR-10 batches:

    (a) flip + pad-4 crop + cutout 16;
    (b) flip + pad-4 crop + RandAugment (N=2, M=9) + cutout 16.

    searchlab: ``Pipeline(specs).images(batch, generator)`` on uint8 (N, 3, 32, 32) batches gathered
    by a shuffled index from one in-memory tensor on the device, as the training loop does.

    PIL: the usual torchvision recipe, a ``Dataset`` of PIL images (made once up front) with
    ``Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), (RandAugment(2, 9),)
    PILToTensor(), Cutout(16)])``, batched by a shuffling ``DataLoader`` with two persistent
    workers, the same two cores. A single-process loader (num_workers=0) is timed too, for
    reference. Both produce uint8 (N, 3, 32, 32) batches, so neither side pays for a float copy.
    torchvision has no cutout, and RandomErasing at a fixed 16x16 scale still places the box
    wholly inside the image, so ``Cutout`` below is written out: it clips a box around a uniformly
    random centre, as searchlab's cutout (and DeVries & Taylor's) does.

    Each timing covers ``--batches`` batches; the loaders run interleaved (searchlab, PIL workers,
    PIL single process, for (a) then (b)) after one warmup pass each, so noise on a shared machine
    hits all alike; the report gives medians and the searchlab / PIL-workers ratio.

    Then the share of a training step: the time of one ResNet-20 step (batch 128, normalised
    channels-last float input, forward + cross_entropy + backward + SGD step with the trainable's
    optimiser settings) against the time of pipeline (b) on a 128-image batch, reported as
    augmentation / (augmentation + step).

How to run
    python tests/bench/bench_augment.py
    python tests/bench/bench_augment.py --batches 10 --repeats 2
    python tests/bench/bench_augment.py --data /path/to/cifar10/train_x.npy

    The script reports and exits 0; it asserts nothing. It is not collected by pytest.

Target
    (b) searchlab >= 5x the PIL pipeline with two workers; augmentation (b) <= 15% of a
    ResNet-20 training step at batch 128.
"""
import argparse
import os
import random
import statistics

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from searchlab.augment import Pipeline
from searchlab.config import resolve
from searchlab.data import channel_stats, normalize
from searchlab.models import build_model
from searchlab.train import make_optimizer
from timing import timed

RATIO_TARGET = 5.0
SHARE_TARGET = 0.15
DEFAULT_DATA = os.path.join(os.environ.get("SEARCHLAB_DATA", "/work/shared/data"), "cifar10", "train_x.npy")

BASIC = [{"op": "flip", "p": 0.5}, {"op": "pad_crop", "padding": 4}, {"op": "cutout", "size": 16}]
# RandAugment after the geometric basics and before cutout, the order of the PIL Compose below.
RANDAUGMENT = [{"op": "flip", "p": 0.5}, {"op": "pad_crop", "padding": 4},
               {"op": "randaugment", "n": 2, "m": 9}, {"op": "cutout", "size": 16}]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Augmentation throughput of searchlab's batched pipeline against torchvision's "
                    f"per-image PIL pipeline (target: RandAugment ratio >= {RATIO_TARGET:g}x, "
                    f"<= {100 * SHARE_TARGET:g}% of a ResNet-20 step).")
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="CIFAR-10 training images, uint8 (N, 32, 32, 3) .npy (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="default: %(default)s")
    parser.add_argument("--batches", type=int, default=20,
                        help="batches per timing (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timings of each loader, after one warmup each (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch intra-op threads of the main process (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2,
                        help="DataLoader workers of the PIL pipeline (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for searchlab and the model "
                                                        "(default: %(default)s)")
    parser.add_argument("--step-batch-size", type=int, default=128,
                        help="batch size of the training-step comparison (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=10,
                        help="training steps (and augmented batches) per timing (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.batches, args.repeats, args.threads, args.workers,
           args.step_batch_size, args.steps) < 1:
        parser.error("sizes, counts, --threads and --workers must be >= 1")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but CUDA is not available")
    return args


# ------------------------------------------------------------------------------------------------
# The per-image PIL pipeline
# ------------------------------------------------------------------------------------------------

class Cutout:
    """One ``size`` x ``size`` zero square per uint8 (C, H, W) tensor, at a uniformly random centre
    pixel and clipped at the border: the reference cutout, and what searchlab's ``cutout`` does."""

    def __init__(self, size):
        self.size = size

    def __call__(self, img):
        _, h, w = img.shape
        # Python's random is reseeded per DataLoader worker, and is cheaper per call than torch's.
        cy, cx = random.randrange(h), random.randrange(w)
        y0, x0 = max(cy - self.size // 2, 0), max(cx - self.size // 2, 0)
        y1, x1 = min(cy - self.size // 2 + self.size, h), min(cx - self.size // 2 + self.size, w)
        img = img.clone()
        img[:, y0:y1, x0:x1] = 0
        return img


class PILImages(Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def pil_transform(randaugment):
    return transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        *([transforms.RandAugment(num_ops=2, magnitude=9)] if randaugment else []),
        transforms.PILToTensor(),
        Cutout(16),
    ])


def drain(loader):
    for _ in loader:
        pass


# ------------------------------------------------------------------------------------------------
# searchlab
# ------------------------------------------------------------------------------------------------

def searchlab_pass(pipeline, x, batch_size, generator, device):
    """One shuffled pass over ``x`` (on ``device``) in batches, augmenting each."""
    order = torch.randperm(len(x), generator=generator, device=generator.device).to(device)
    for start in range(0, len(x), batch_size):
        pipeline.images(x[order[start:start + batch_size]], generator)


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    load_before = os.getloadavg()[0]

    n = args.batch_size * args.batches
    hwc = np.load(args.data, mmap_mode="r")
    if len(hwc) < max(n, args.step_batch_size):
        raise SystemExit(f"{args.data} holds {len(hwc)} images; --batch-size x --batches needs {n}")
    hwc = np.array(hwc[:n])  # a writable in-memory copy, not a view of the memory map
    labels = torch.zeros(n, dtype=torch.long)  # labels play no part in the augmentation's cost
    x = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous().to(device)
    pil_images = [Image.fromarray(img) for img in hwc]
    generator = torch.Generator(device).manual_seed(args.seed)

    # --- throughput: searchlab, PIL with workers, PIL in one process; (a) and (b) ---------------
    rows = {}
    for key, specs, randaugment in (("a", BASIC, False), ("b", RANDAUGMENT, True)):
        pipeline = Pipeline(specs)
        dataset = PILImages(pil_images, labels, pil_transform(randaugment))
        workers = DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                             num_workers=args.workers, persistent_workers=True)
        single = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=0)
        runs = {
            "searchlab": lambda: searchlab_pass(pipeline, x, args.batch_size, generator, device),
            "workers": lambda: drain(workers),
            "single": lambda: drain(single),
        }
        # The warmup pass also starts the persistent workers, so their start-up is not timed.
        for run in runs.values():
            timed(run, device)
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                times[name].append(timed(run, device))
        del workers  # shuts its worker processes down before the next loader starts its own
        rows[key] = times

    # --- share of a training step ---------------------------------------------------------------
    optim = resolve({"optim": {"batch_size": args.step_batch_size}})["optim"]
    mean, std = (t.to(device) for t in channel_stats(x.cpu()))
    torch.manual_seed(args.seed)
    model = build_model("resnet20", 10).to(device)
    optimizer = make_optimizer(model, optim)
    bs = args.step_batch_size
    step_x, step_y = x[:bs], torch.randint(0, 10, (bs,), device=device)
    augment = Pipeline(RANDAUGMENT)

    def train_steps():
        model.train()
        for _ in range(args.steps):
            loss = F.cross_entropy(model(normalize(step_x, mean, std)), step_y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def augment_batches():
        for i in range(args.steps):
            start = (i * bs) % (n - bs + 1)
            augment.images(x[start:start + bs], generator)

    timed(train_steps, device)
    timed(augment_batches, device)
    step_times, aug_times = [], []
    for _ in range(args.repeats):
        step_times.append(timed(train_steps, device) / args.steps)
        aug_times.append(timed(augment_batches, device) / args.steps)

    # --- report ---------------------------------------------------------------------------------
    def ips(times):
        return n / statistics.median(times)

    # OpenMP's wait policy decides whether a thread idling between parallel regions spins or
    # sleeps; with other processes on the same cores it changes small-op timings many times over.
    print(f"CIFAR-10, {args.batch_size}-image batches x {args.batches}, {args.threads} threads, "
          f"{args.repeats} repeats (median), {device}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"{'':25}{'searchlab':>13}   {f'PIL x{args.workers} workers':>16}   {'PIL 1 process':>13}   "
          f"ratio (vs workers)")
    titles = {"a": "(a) flip+crop+cutout", "b": "(b) RandAugment+(a)"}
    for key, times in rows.items():
        ratio = ips(times["searchlab"]) / ips(times["workers"])
        note = (f"   (target >= {RATIO_TARGET:g}x: {'meets' if ratio >= RATIO_TARGET else 'below'})"
                if key == "b" else "")
        print(f"{titles[key]:25}{ips(times['searchlab']):7.0f} img/s   {ips(times['workers']):10.0f} img/s"
              f"   {ips(times['single']):7.0f} img/s   {ratio:6.1f}x{note}")
    step, aug = statistics.median(step_times), statistics.median(aug_times)
    share = aug / (aug + step)
    print(f"ResNet-20 step (batch {bs}): {1000 * step:.0f} ms; augmentation (b): {1000 * aug:.1f} ms "
          f"= {100 * share:.1f}% of the step (target <= {100 * SHARE_TARGET:g}%: "
          f"{'meets' if share <= SHARE_TARGET else 'above'})")
    # How far apart the repeats are says how much the machine's noise can be trusted.
    spread = ", ".join(
        f"({key}) {min(pil / sl for pil, sl in zip(t['workers'], t['searchlab'])):.1f}.."
        f"{max(pil / sl for pil, sl in zip(t['workers'], t['searchlab'])):.1f}x"
        for key, t in rows.items())
    print(f"noise: per-repeat ratios {spread}; step {1000 * min(step_times):.0f}.."
          f"{1000 * max(step_times):.0f} ms, augmentation {1000 * min(aug_times):.1f}.."
          f"{1000 * max(aug_times):.1f} ms")


if __name__ == "__main__":
    main()
