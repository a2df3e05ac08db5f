"""searchlab.augment.ops against PIL applied image by image, on real CIFAR-10 images.

The reference is Deep AutoAugment's augmentation.py written out with PIL (``pil_op`` below). Every op
is checked at every magnitude of the 139-entry table and at random magnitudes. Bound for every op,
the enhance ops included: exact equality. The ops reproduce Pillow's float32 arithmetic operation by
operation; on this machine's Pillow that gives 0 differing pixels.
"""
import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from searchlab.augment.ops import DEEPAA_OPS, FILL, OPS, RANGES, deepaa_table

GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
N_IMAGES = 64


def pil_op(name, img, v, fill=None):
    """One PIL image through PIL; ``fill=None`` is PIL's default fill, as in DeepAA's code."""
    fillcolor = None if fill is None else fill if img.mode == "L" else (fill,) * 3
    if name == "Identity":
        return img.copy()
    if name in ("ShearX", "ShearY", "TranslateX", "TranslateY"):
        data = {"ShearX": (1, v, 0, 0, 1, 0), "ShearY": (1, 0, 0, v, 1, 0),
                "TranslateX": (1, 0, v * img.size[0], 0, 1, 0),
                "TranslateY": (1, 0, 0, 0, 1, v * img.size[1])}[name]
        return img.transform(img.size, Image.AFFINE, data, fillcolor=fillcolor)
    if name == "Rotate":
        return img.rotate(v, fillcolor=fillcolor)
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Solarize":
        return ImageOps.solarize(img, v)
    if name == "Posterize":
        return ImageOps.posterize(img, int(v))
    return getattr(ImageEnhance, name)(img).enhance(v)


@pytest.fixture(scope="module")
def cifar(cifar_data):
    """64 real CIFAR-10 test images, (64, 32, 32, 3) uint8, spread over the test set."""
    test_x = np.load(f"{cifar_data}/cifar10/test_x.npy", mmap_mode="r")
    return np.ascontiguousarray(test_x[np.linspace(0, len(test_x) - 1, N_IMAGES).astype(int)])


def to_tensor(images_hwc):
    """(N, H, W, C) or (N, H, W) numpy uint8 -> (N, C, H, W) torch uint8."""
    x = torch.from_numpy(np.array(images_hwc))  # a writable copy
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def differences(name, images_hwc, magnitudes, mode="RGB", fill=None):
    """Apply op ``name`` with each magnitude to every image: one batched call (image-magnitude
    pairs, one magnitude per image) against PIL image by image. Returns, per magnitude,
    (largest absolute pixel difference, number of differing values, number of values)."""
    pil_images = [Image.fromarray(a).convert(mode) for a in images_hwc]
    inputs = np.stack([np.asarray(p) for p in pil_images] * len(magnitudes))
    per_image_v = torch.tensor(np.repeat(magnitudes, len(pil_images)), dtype=torch.float64)
    expected = np.stack([np.asarray(pil_op(name, p, m, fill)) for m in magnitudes for p in pil_images])

    kwargs = {} if fill is None else {"fill": fill}
    ours = OPS[name](to_tensor(inputs), per_image_v, **kwargs)
    diff = (ours.int() - to_tensor(expected).int()).abs().view(len(magnitudes), -1)
    return [(m, d.max().item(), (d > 0).sum().item(), d.numel()) for m, d in zip(magnitudes, diff)]


def assert_exact(name, results, what=""):
    bad = [f"{name}{what} magnitude {m!r}: max |diff| {mx}, {n} of {total} values differ"
           for m, mx, n, total in results if mx > 0]
    assert not bad, "ours != PIL:\n" + "\n".join(bad)


def table_magnitudes(name):
    return [m for op, m in deepaa_table() if op == name and m is not None]


def magnitudes_to_test(name, seed=0):
    """Every level of the table plus four random magnitudes in the op's range."""
    if name not in RANGES:
        return [0.0]
    lo, hi = RANGES[name]
    return table_magnitudes(name) + np.random.default_rng(seed).uniform(lo, hi, 4).tolist()


# ---------------------------------------------------------------------------------------------
# The ops against PIL
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(OPS))
def test_rgb_op_equals_pil_at_every_table_level_and_random_magnitudes(cifar, name):
    assert_exact(name, differences(name, cifar, magnitudes_to_test(name)))


@pytest.mark.parametrize("name", list(OPS))
def test_grey_op_equals_pil_on_mode_L_images(cifar, name):
    """C = 1 works everywhere; Color leaves a grey image unchanged, as PIL does."""
    assert_exact(name, differences(name, cifar[:16], magnitudes_to_test(name, seed=1), mode="L"), " (L)")


@pytest.mark.parametrize("name", GEOMETRIC)
@pytest.mark.parametrize("fill", [128, 7])
def test_fill_equals_pil_fillcolor(cifar, name, fill):
    lo, hi = RANGES[name]
    assert_exact(name, differences(name, cifar[:16], [lo, hi, lo / 3], fill=fill), f" (fill {fill})")


def test_per_channel_fill_equals_pil_fillcolor(cifar):
    img = Image.fromarray(cifar[0])
    expected = to_tensor(np.asarray(img.rotate(30, fillcolor=(10, 200, 30)))[None])
    assert torch.equal(OPS["Rotate"](to_tensor(cifar[:1]), torch.tensor([30.0]), fill=(10, 200, 30)), expected)


def test_default_fill_is_deepaas_black():
    assert FILL == 0


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("h, w", [(24, 32), (32, 20), (3, 5)])
def test_non_square_and_tiny_images_equal_pil(cifar, name, h, w):
    """Width and height are not mixed up; the 3x5 image has a one-row interior for Sharpness."""
    crops = np.ascontiguousarray(cifar[:16, :h, :w])
    assert_exact(name, differences(name, crops, magnitudes_to_test(name, seed=2)[-4:]), f" ({h}x{w})")


@pytest.mark.parametrize("name", GEOMETRIC[:4])
def test_pixel_centres_next_to_a_pixel_border_equal_pil(cifar, name):
    """Where nearest sampling is decided by rounding: a translation whose sampled centres land
    1e-7 from a pixel border (PIL's double-precision scale path, not its fixed-point path), a shear
    that does so in row 10, and a shear exactly halfway between two 16.16 fixed-point values."""
    size = 32
    near_border = [(k + 0.5 + d) / size for k in (2, -3) for d in (-1e-7, 1e-7)]
    if name.startswith("Shear"):
        near_border = [(k + 0.5 + d) / 10.5 for k in (2, -3) for d in (-1e-7, 1e-7)] + [1040.5 / 65536]
    assert_exact(name, differences(name, cifar[:8], near_border), " (near a pixel border)")


def test_flat_and_two_valued_channels_equal_pil():
    """AutoContrast and Equalize leave flat channels alone; Contrast on a flat image."""
    rng = np.random.default_rng(3)
    flat = np.full((8, 8, 3), 77, np.uint8)
    two_values = np.where(rng.random((8, 8, 3)) < 0.1, 200, 13).astype(np.uint8)
    one_odd_pixel = flat.copy()
    one_odd_pixel[3, 4] = (0, 255, 78)
    images = np.stack([flat, two_values, one_odd_pixel])
    for name in ("AutoContrast", "Equalize", "Contrast", "Sharpness", "Color"):
        assert_exact(name, differences(name, images, [0.0] if name in ("AutoContrast", "Equalize") else
                                       [0.1, 1.9]), " (flat images)")


# ---------------------------------------------------------------------------------------------
# Batching, dtype, device
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(RANGES))
def test_batch_with_a_magnitude_per_image_equals_one_image_at_a_time(cifar, name):
    x = to_tensor(cifar[:12])
    v = torch.tensor(table_magnitudes(name), dtype=torch.float64)  # 12 different magnitudes
    batched = OPS[name](x, v)
    one_by_one = torch.cat([OPS[name](x[i:i + 1], v[i:i + 1]) for i in range(len(x))])
    assert torch.equal(batched, one_by_one), f"{name}: batched result differs from per-image calls"
    # ... and the magnitudes really are per image: one magnitude for all gives something else.
    assert not torch.equal(batched, OPS[name](x, v[:1].expand(len(x)))), name


@pytest.mark.parametrize("name", list(OPS))
def test_dtype_device_shape_kept_and_input_untouched(cifar, name):
    x = to_tensor(cifar[:8])
    before = x.clone()
    v = float(np.float32(magnitudes_to_test(name)[0]))  # a float32 number: float32 and float64 agree
    out = OPS[name](x, torch.full((8,), v, dtype=torch.float64))
    assert out.dtype == torch.uint8 and out.device == x.device and out.shape == x.shape, name
    assert torch.equal(x, before), f"{name} modified its input"
    # v as a float32 tensor or a plain number, x in channels-last layout: the same values.
    for other in (OPS[name](x, torch.full((8,), v, dtype=torch.float32)), OPS[name](x, v),
                  OPS[name](x.contiguous(memory_format=torch.channels_last), v)):
        assert torch.equal(other, out), f"{name}: result depends on how v or x is passed"


# ---------------------------------------------------------------------------------------------
# The DeepAA table
# ---------------------------------------------------------------------------------------------

# Written out from DeepAA_utils.aug_op_cifar_list() of the Deep AutoAugment code.
EXPECTED_ORDER = ["Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "AutoContrast",
                  "Invert", "Equalize", "Solarize", "Posterize", "Contrast", "Color", "Brightness",
                  "Sharpness", "flip", "cutout", "pad_crop"]
EXPECTED_RANGES = {"ShearX": (-0.3, 0.3, 6), "ShearY": (-0.3, 0.3, 6), "TranslateX": (-0.45, 0.45, 6),
                   "TranslateY": (-0.45, 0.45, 6), "Rotate": (-30, 30, 6), "Solarize": (0, 256, 12),
                   "Posterize": (4, 8, 12), "Contrast": (0.1, 1.9, 6), "Color": (0.1, 1.9, 6),
                   "Brightness": (0.1, 1.9, 6), "Sharpness": (0.1, 1.9, 6)}  # (lo, hi, dropped level)


def expected_table(large_images=False):
    table = []
    for name in EXPECTED_ORDER:
        if name in EXPECTED_RANGES:
            lo, hi, dropped = EXPECTED_RANGES[name]
            table += [(name, m) for k, m in enumerate(np.linspace(lo, hi, 13)) if k != dropped]
        elif name == "cutout":
            table.append((name, 60 if large_images else 16))
        elif name == "pad_crop":
            table.append(("random_resized_crop", None) if large_images else ("pad_crop", 4))
        else:
            table.append((name, None))
    return table


@pytest.mark.parametrize("large_images", [False, True])
def test_deepaa_table_has_139_entries_in_the_authors_order(large_images):
    table = deepaa_table(large_images)
    expected = expected_table(large_images)
    assert len(table) == len(expected) == 139
    assert [op for op, _ in table] == [op for op, _ in expected]
    for (op, m), (_, e) in zip(table, expected):
        if e is None or op in ("cutout", "pad_crop"):
            assert m == e, (op, m, e)
        else:
            assert abs(m - e) < 1e-9, (op, m, e)


def test_deepaa_table_drops_the_level_that_changes_nothing():
    table = deepaa_table()
    assert all(m != 0 for op, m in table if op in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"))
    assert all(m != 1.0 for op, m in table if op in ("Contrast", "Color", "Brightness", "Sharpness"))
    assert 256 not in table_magnitudes("Solarize") and 0 in table_magnitudes("Solarize")
    # Posterize's 12 levels, as int(v) gives them to PIL: three levels per bit count.
    assert [int(m) for m in table_magnitudes("Posterize")] == [4] * 3 + [5] * 3 + [6] * 3 + [7] * 3
    assert table_magnitudes("Rotate") == [-30, -25, -20, -15, -10, -5, 5, 10, 15, 20, 25, 30]


def test_deepaa_ops_and_op_names():
    assert list(DEEPAA_OPS) == EXPECTED_ORDER
    assert list(OPS) == EXPECTED_ORDER[:15]
    assert set(RANGES) == set(EXPECTED_RANGES)
