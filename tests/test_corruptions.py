"""CIFAR-10-C corruptions against an independent per-image port of make_cifar_c.py
(tests/cifar_c_reference.py), plus the dataset they build on disk."""
import os
import sys

import numpy as np
import pytest
import torch

from searchlab import corruptions as C
from searchlab.errors import UserError

sys.path.insert(0, os.path.dirname(__file__))
import cifar_c_reference as R

# Max abs difference (uint8 levels) to the reference. 0 everywhere both sides do the same float
# operations in the same order. zoom_blur: its float64 products are GEMMs, whose summation order
# depends on the BLAS build; a 1e-16 difference can flip a truncation near an integer.
TOLERANCE = {"zoom_blur": 1}
INDICES = [0, 7, 19, 42]  # a few real CIFAR-10 test images


@pytest.fixture(scope="module")
def images(cifar_data):
    x = np.load(os.path.join(cifar_data, "cifar10", "test_x.npy"), mmap_mode="r")
    hwc = np.ascontiguousarray(x[INDICES])
    return hwc, torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous()


def reference_draws(name, draws, i):
    """Image i's share of searchlab's draws, in the reference's layout (HWC fields)."""
    if name == "frost":
        return C._frost_crops({k: v[i:i + 1] for k, v in draws.items()}, "cpu")[0].permute(1, 2, 0).numpy()
    if name == "fog":
        return {"uniform": [u[i].numpy() for u in draws["uniform"]]}
    return {k: (v[i].permute(1, 2, 0) if v.ndim == 4 else v[i]).numpy() for k, v in draws.items()}


@pytest.mark.parametrize("name", [n for n in C.CORRUPTIONS if n != "shot_noise"])
def test_each_severity_matches_the_reference(images, name):
    hwc, x = images
    for severity in C.SEVERITIES:
        g = torch.Generator().manual_seed(severity)
        if name in C.STAGES:
            draw, apply = C.STAGES[name]
            draws = draw(len(x), severity, g)
            ours = apply(x, severity, draws)
            ref = [R.REFERENCE[name](hwc[i], severity, reference_draws(name, draws, i)) for i in range(len(x))]
        else:
            ours = C.CORRUPTIONS[name](x, severity, g)
            ref = [R.REFERENCE[name](hwc[i], severity) for i in range(len(x))]
        assert ours.dtype == torch.uint8 and ours.shape == x.shape
        diff = np.abs(ours.permute(0, 2, 3, 1).numpy().astype(int) - np.stack(ref).astype(int))
        assert diff.max() <= TOLERANCE.get(name, 0), (name, severity, diff.max(), (diff > 0).sum())
        assert (diff > 0).mean() < 0.01, (name, severity, (diff > 0).mean())


def test_staged_corruptions_are_draw_then_apply(images):
    """CORRUPTIONS[name] is apply(draw) with the same generator stream."""
    _, x = images
    for name, (draw, apply) in C.STAGES.items():
        a = C.CORRUPTIONS[name](x, 3, torch.Generator().manual_seed(5))
        b = apply(x, 3, draw(len(x), 3, torch.Generator().manual_seed(5)))
        assert torch.equal(a, b), name


def _mid_pixels(x, low=0.35, high=0.65):
    v = x.double() / 255
    return (v >= low) & (v <= high), v


def test_gaussian_noise_residual_has_the_table_sigma(images):
    _, x = images
    x = x.repeat(8, 1, 1, 1)
    mask, v = _mid_pixels(x)
    for severity, sigma in zip(C.SEVERITIES, C.GAUSSIAN_NOISE):
        y = C.CORRUPTIONS["gaussian_noise"](x, severity, torch.Generator().manual_seed(severity))
        r = (y.double() / 255 - v)[mask]
        # truncation to uint8 subtracts U[0, 1) / 255: mean -0.5/255, variance + 1/(12 * 255^2)
        assert abs(r.mean().item() + 0.5 / 255) < 3 * sigma / len(r) ** 0.5 + 1e-4
        expected = (sigma ** 2 + 1 / (12 * 255 ** 2)) ** 0.5
        assert abs(r.std().item() / expected - 1) < 0.02, (severity, r.std().item(), expected)


def test_shot_noise_follows_the_poisson_law_and_the_reference(images):
    hwc, x = images
    x = x.repeat(8, 1, 1, 1)
    hwc = np.concatenate([hwc] * 8)
    mask, v = _mid_pixels(x)
    rng = np.random.default_rng(0)
    for severity, photons in zip(C.SEVERITIES, C.SHOT_NOISE):
        y = C.CORRUPTIONS["shot_noise"](x, severity, torch.Generator().manual_seed(severity))
        r = (y.double() / 255 - v)[mask]
        variance = (v[mask] / photons).mean().item() + 1 / (12 * 255 ** 2)  # Poisson: var = mean
        assert abs(r.var().item() / variance - 1) < 0.05, (severity, r.var().item(), variance)
        ref = np.stack([R.shot_noise(img, severity, rng) for img in hwc]).transpose(0, 3, 1, 2)
        r_ref = (torch.from_numpy(ref).double() / 255 - v)[mask]
        assert abs(r.var().item() / r_ref.var().item() - 1) < 0.05
        assert abs(r.mean().item() - r_ref.mean().item()) < 0.002


def test_impulse_noise_hits_the_table_fraction_half_salt_half_pepper(images):
    _, x = images
    x = x.repeat(16, 1, 1, 1)
    for severity, amount in zip(C.SEVERITIES, C.IMPULSE_NOISE):
        y = C.CORRUPTIONS["impulse_noise"](x, severity, torch.Generator().manual_seed(severity))
        changed = y != x
        assert torch.all((y[changed] == 0) | (y[changed] == 255))  # nothing else is touched
        salt = ((y == 255) & (x != 255)).sum().item() / (x != 255).sum().item()
        pepper = ((y == 0) & (x != 0)).sum().item() / (x != 0).sum().item()
        n = x.numel()
        tolerance = 4 * (amount / 2 / n) ** 0.5
        assert abs(salt - amount / 2) < tolerance and abs(pepper - amount / 2) < tolerance, (salt, pepper)


def test_uint8_shape_replay_and_severity_order(images):
    _, x = images
    x = x.repeat(4, 1, 1, 1)  # 16 draws: snow's severities 2 and 3 differ by a few percent only
    for name, f in C.CORRUPTIONS.items():
        changes = []
        for severity in C.SEVERITIES:
            y = f(x, severity, torch.Generator().manual_seed(0))
            assert y.dtype == torch.uint8 and y.shape == x.shape and y.device == x.device
            assert torch.equal(y, f(x, severity, torch.Generator().manual_seed(0))), name
            changes.append((y.double() - x.double()).abs().mean().item())
        assert changes[0] > 0, name
        if name == "elastic_transform":
            # The original's table is not ordered by this measure: severity 1 has the largest
            # affine jitter (0.08 * 32 px) and no elastic field, so it moves pixels the most.
            continue
        if name == "glass_blur":
            # Nor is glass blur's within a pass count: a wider blur (severity 3: sigma 0.4 vs 0.25)
            # smooths the shuffled pixels back; two passes (severities 4, 5) change more than one.
            assert min(changes[3:]) > max(changes[:3]), changes
            continue
        if name == "frost":
            # Severities 4 and 5 also darken the image (weight 0.85, 0.75) while adding frost; on
            # bright frost the two partly cancel, so the mean change is ordered up to severity 3.
            assert changes[:3] == sorted(changes[:3]) and min(changes[3:]) > changes[0], changes
            continue
        assert changes == sorted(changes), (name, changes)


def test_bad_input_is_one_line_naming_the_choices(images):
    _, x = images
    with pytest.raises(UserError, match="valid corruptions: gaussian_noise, shot_noise, .*jpeg_compression$"):
        C.corrupt(x, "speckle", 1, torch.Generator())
    for bad in (0, 6, 2.0, True):
        with pytest.raises(UserError, match="severity must be one of 1, 2, 3, 4, 5"):
            C.corrupt(x, "contrast", bad, torch.Generator())
    with pytest.raises(UserError, match=r"uint8 tensors \(N, 3, 32, 32\), got torch.float32"):
        C.corrupt(x.float(), "contrast", 1, torch.Generator())
    assert list(C.CORRUPTIONS) == ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur",
                                   "glass_blur", "motion_blur", "zoom_blur", "snow", "frost", "fog",
                                   "brightness", "contrast", "elastic_transform", "pixelate",
                                   "jpeg_compression"]


# ------------------------------------------------------------------------------------------------
# build / load
# ------------------------------------------------------------------------------------------------

N = 20


def fake_dataset(root, n=N):
    rng = np.random.default_rng(1)
    folder = root / "cifar10"
    folder.mkdir(parents=True)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n, dtype=np.int64) % 10
    for part in ("train", "test"):
        np.save(folder / f"{part}_x.npy", x)
        np.save(folder / f"{part}_y.npy", y)
    return x, y


def test_build_writes_the_official_layout_and_load_reads_it(tmp_path):
    x, y = fake_dataset(tmp_path)
    out = C.build("cifar10", root=tmp_path, seed=3, progress=False, chunk=8)
    assert out == tmp_path / "cifar10-c"
    arrays, labels = C.load("cifar10", root=tmp_path)
    assert list(arrays) == list(C.CORRUPTIONS)
    assert labels.dtype == np.uint8 and np.array_equal(labels, np.tile(y, 5))
    for name, a in arrays.items():
        assert a.shape == (5 * N, 32, 32, 3) and a.dtype == np.uint8, name
    # Deterministic corruptions: each severity block is the reference applied to every image.
    for name in ("contrast", "pixelate", "brightness"):
        for severity, block in zip(C.SEVERITIES, C.severity_slices(5 * N)):
            ref = np.stack([R.REFERENCE[name](img, severity) for img in x])
            assert np.array_equal(arrays[name][block], ref), (name, severity)
    # Seeded: the same seed replays, another seed differs, severity blocks differ from each other.
    (tmp_path / "again").mkdir()
    fake_dataset(tmp_path / "again")
    C.build("cifar10", root=tmp_path / "again", seed=3, progress=False, chunk=8,
            corruptions=["gaussian_noise"])
    again = np.load(tmp_path / "again" / "cifar10-c" / "gaussian_noise.npy")
    assert np.array_equal(again, arrays["gaussian_noise"])
    (tmp_path / "other").mkdir()
    fake_dataset(tmp_path / "other")
    C.build("cifar10", root=tmp_path / "other", seed=4, progress=False, corruptions=["gaussian_noise"])
    assert not np.array_equal(np.load(tmp_path / "other" / "cifar10-c" / "gaussian_noise.npy"),
                              arrays["gaussian_noise"])
    first, second = C.severity_slices(5 * N, k=3)[:2]
    assert (first, second) == (slice(0, 3), slice(N, N + 3))


def test_build_resumes_without_rewriting_complete_files(tmp_path):
    fake_dataset(tmp_path)
    names = ["gaussian_noise", "contrast", "fog"]
    out = C.build("cifar10", root=tmp_path, seed=0, progress=False, corruptions=names)
    before = {n: (out / f"{n}.npy").stat().st_mtime_ns for n in names}
    fog = np.load(out / "fog.npy")
    (out / "fog.npy").unlink()
    (out / "contrast.npy").write_bytes(b"truncated")  # an incomplete file is rebuilt
    C.build("cifar10", root=tmp_path, seed=0, progress=False, corruptions=names)
    assert (out / "gaussian_noise.npy").stat().st_mtime_ns == before["gaussian_noise"]
    assert np.load(out / "contrast.npy").shape == (5 * N, 32, 32, 3)
    assert np.array_equal(np.load(out / "fog.npy"), fog)  # seeded per (corruption, severity, chunk)
    assert not list(out.glob("*.tmp"))
    with pytest.raises(UserError, match="was built with .*seed.*delete it or build with the same"):
        C.build("cifar10", root=tmp_path, seed=1, progress=False, corruptions=names)


def test_load_errors_name_what_is_missing_and_the_command(tmp_path):
    with pytest.raises(UserError, match=r"cifar10-c not found: build it with `searchlab data corrupt cifar10`"):
        C.load("cifar10", root=tmp_path)
    folder = tmp_path / "cifar10-c"
    folder.mkdir()
    labels = np.tile(np.arange(10, dtype=np.uint8), 5 * 2)  # 100 = 5 * 20
    np.save(folder / "labels.npy", labels)
    for name in C.CORRUPTIONS:
        if name != "fog":
            np.save(folder / f"{name}.npy", np.zeros((100, 32, 32, 3), np.uint8))
    with pytest.raises(UserError, match=r"lacks fog.npy: build it with `searchlab data corrupt cifar10`"):
        C.load("cifar10", root=tmp_path)
    np.save(folder / "fog.npy", np.zeros((99, 32, 32, 3), np.uint8))
    with pytest.raises(UserError, match=r"fog.npy has shape \(99, 32, 32, 3\) uint8, expected \(100, 32, 32, 3\)"):
        C.load("cifar10", root=tmp_path)
    # An official CIFAR-10-C folder: extra corruptions are there but only the 15 are loaded.
    np.save(folder / "fog.npy", np.zeros((100, 32, 32, 3), np.uint8))
    np.save(folder / "speckle_noise.npy", np.zeros((100, 32, 32, 3), np.uint8))
    arrays, loaded = C.load("cifar10", root=tmp_path)
    assert list(arrays) == list(C.CORRUPTIONS) and np.array_equal(loaded, labels)


def test_build_needs_the_dataset(tmp_path):
    with pytest.raises(UserError, match=r"dataset 'cifar10' not found.*searchlab data prepare cifar10"):
        C.build("cifar10", root=tmp_path, progress=False)
    fake_dataset(tmp_path)
    with pytest.raises(UserError, match=r"severities must be distinct values of 1, 2, 3, 4, 5, got \[0\]"):
        C.build("cifar10", root=tmp_path, severities=[0], progress=False)
