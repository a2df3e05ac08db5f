"""Per-image stochastic ops against independent expectations: torchvision applied image by image with
the parameters the op drew, brute-force enumeration, and closed forms."""
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as F

from searchlab.augment.stochastic import (STOCHASTIC, _jitter_factors, _rrc_boxes, box_mask, color_jitter,
                                          cutout, gaussian_noise, pad_crop, random_boxes, random_resized_crop)
from searchlab.errors import UserError

CIFAR_MEAN = (125, 123, 114)
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def cifar(cifar_data):
    """64 real CIFAR-10 test images, uint8 (N, C, H, W)."""
    x = np.load(f"{cifar_data}/cifar10/test_x.npy", mmap_mode="r")[:64]
    return torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous()


def total_variation(a, b, bins):
    """Between the histograms of samples a and b (b may also be the bins' exact probabilities)."""
    pa = np.histogram(np.asarray(a), bins)[0] / len(a)
    pb = b if isinstance(b, float) else np.histogram(np.asarray(b), bins)[0] / len(b)
    return 0.5 * np.abs(pa - pb).sum()


# ---------------------------------------------------------------------------------------------------
# pad_crop
# ---------------------------------------------------------------------------------------------------

def padded_crops(img, padding, colour):
    """Every image pad_crop can return for ``img`` (C, H, W): PIL pads it with ``colour`` (an RGB
    triple) and crops it back at each of the (2 padding + 1)^2 offsets. Returns bytes -> (top, left)."""
    pil = ImageOps.expand(Image.fromarray(img.permute(1, 2, 0).numpy()), border=padding, fill=colour)
    h, w = img.shape[1:]
    return {np.asarray(pil.crop((left, top, left + w, top + h))).tobytes(): (top, left)
            for top in range(2 * padding + 1) for left in range(2 * padding + 1)}


@pytest.mark.parametrize("fill, colour", [(0, (0, 0, 0)), (200, (200, 200, 200)), (CIFAR_MEAN, CIFAR_MEAN)])
def test_pad_crop_returns_a_crop_of_the_image_padded_with_fill_at_every_offset(cifar, fill, colour):
    img = cifar[7]
    crops = padded_crops(img, 4, colour)
    assert len(crops) == 81  # the 81 offsets give 81 different images
    out = pad_crop(img[None].expand(2000, -1, -1, -1).contiguous(), gen(11), padding=4, fill=fill)
    seen = [out_img.permute(1, 2, 0).numpy().tobytes() for out_img in out]
    assert all(s in crops for s in seen)
    # 2,000 draws of 81 equally likely offsets: every offset occurs (P(one missing) < 1e-19).
    assert {crops[s] for s in seen} == set(crops.values())


def test_pad_crop_rejects_a_fill_that_does_not_fit_the_channels(cifar):
    with pytest.raises(UserError, match=r"pad_crop fill must be one value or 3 values \(one per channel\)"):
        pad_crop(cifar, gen(0), fill=(1, 2))
    with pytest.raises(UserError, match=r"pad_crop fill must be one value or 1 values .*got \[125, 123, 114\]"):
        pad_crop(cifar[:, :1], gen(0), fill=CIFAR_MEAN)


# ---------------------------------------------------------------------------------------------------
# cutout
# ---------------------------------------------------------------------------------------------------

def clipped_spans(size, length=32):
    """Every span a size-pixel square can cover along one axis, centre at each pixel (brute force)."""
    return {(max(c - size // 2, 0), min(c - size // 2 + size, length)) for c in range(length)}


@pytest.mark.parametrize("size, fill", [(16, 0), (16, CIFAR_MEAN), (5, 255)])
def test_cutout_changes_exactly_one_clipped_square(cifar, size, fill):
    out = cutout(cifar, gen(0), size=size, fill=fill)
    y0, y1, x0, x1 = random_boxes(len(cifar), 32, 32, size, gen(0), "cpu")  # the boxes the op drew
    spans = clipped_spans(size)
    for img, res, box in zip(cifar, out, zip(y0.tolist(), y1.tolist(), x0.tolist(), x1.tolist())):
        top, bottom, left, right = box
        assert (top, bottom) in spans and (left, right) in spans
        expected = img.clone()
        expected[:, top:bottom, left:right] = torch.tensor(fill, dtype=torch.uint8).reshape(-1, 1, 1)
        assert torch.equal(res, expected)


@pytest.fixture(scope="module")
def cutout_masks():
    """Cutout masks of 20,000 identical black images, read back from the output (fill 255)."""
    out = cutout(torch.zeros(20000, 1, 32, 32, dtype=torch.uint8), gen(1), size=16, fill=255)
    return out[:, 0] == 255


def test_cutout_masks_are_single_boxes_whose_centres_cover_every_pixel(cutout_masks):
    rows, cols = cutout_masks.any(2), cutout_masks.any(1)  # (N, H), (N, W)
    assert torch.equal(cutout_masks, rows[:, :, None] & cols[:, None, :])  # one rectangle per image
    assert torch.equal(box_mask(*random_boxes(20000, 32, 32, 16, gen(1), "cpu"), 32, 32), cutout_masks)
    y0, y1 = rows.int().argmax(1), 32 - rows.flip(1).int().argmax(1)
    x0, x1 = cols.int().argmax(1), 32 - cols.flip(1).int().argmax(1)
    # A 16-square on 32 pixels is clipped on one side at most, so its centre can be read back.
    cy = torch.where(y0 > 0, y0 + 8, y1 - 8)
    cx = torch.where(x0 > 0, x0 + 8, x1 - 8)
    # Identical inputs, and every one of the 1024 centres occurs: the boxes are drawn per image.
    assert set(zip(cy.tolist(), cx.tolist())) == {(r, c) for r in range(32) for c in range(32)}


def test_cutout_area_distribution_matches_enumeration_of_all_centres(cutout_masks):
    spans = [min(c + 8, 32) - max(c - 8, 0) for c in range(32)]
    exact = {}
    for a in spans:
        for b in spans:
            exact[a * b] = exact.get(a * b, 0) + 1 / 1024
    mean = sum(area * p for area, p in exact.items())
    std = math.sqrt(sum((area - mean) ** 2 * p for area, p in exact.items()))
    areas = cutout_masks.sum((1, 2)).numpy()
    assert set(areas.tolist()) <= set(exact)
    assert abs(areas.mean() - mean) < 4 * std / math.sqrt(len(areas))  # 196 = 14 * 14 pixels of 256
    observed = {a: (areas == a).mean() for a in exact}
    assert 0.5 * sum(abs(observed[a] - p) for a, p in exact.items()) < 0.04  # measured 0.014


def test_cutout_rejects_a_fill_that_does_not_fit_the_channels(cifar):
    with pytest.raises(UserError, match="one per channel"):
        cutout(cifar, gen(0), fill=(1, 2))


# ---------------------------------------------------------------------------------------------------
# random_resized_crop
# ---------------------------------------------------------------------------------------------------

def test_random_resized_crop_is_torchvision_resized_crop_of_the_drawn_box(cifar):
    out = random_resized_crop(cifar, gen(3))
    boxes = torch.stack(_rrc_boxes(len(cifar), 32, 32, SCALE, RATIO, gen(3), "cpu"), 1).tolist()
    uint8_ref = torch.stack([F.resized_crop(img, *box, [32, 32], antialias=False)
                             for img, box in zip(cifar, boxes)])
    float_ref = torch.stack([F.resized_crop(img.float(), *box, [32, 32], antialias=False)
                             for img, box in zip(cifar, boxes)]).round().to(torch.uint8)
    # Against torchvision on float images, rounded: identical (measured: 0 values differ).
    diff = (out.int() - float_ref.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    # torchvision's native uint8 CPU kernel rounds between its two passes: off by at most 1
    # (measured: mean 0.150, max 1).
    diff = (out.int() - uint8_ref.int()).abs()
    assert diff.max() <= 1 and diff.float().mean() < 0.2


def test_random_resized_crop_boxes_follow_torchvision_distribution():
    n = 20000
    top, left, h, w = _rrc_boxes(n, 32, 32, SCALE, RATIO, gen(4), "cpu")
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    # Area fraction within scale and aspect ratio within ratio, up to rounding h and w to integers.
    hf, wf = h.double(), w.double()
    assert ((hf - 0.5) * (wf - 0.5) <= SCALE[1] * 1024).all()
    assert ((hf + 0.5) * (wf + 0.5) >= SCALE[0] * 1024).all()
    assert ((wf - 0.5) / (hf + 0.5) <= RATIO[1]).all() and ((wf + 0.5) / (hf - 0.5) >= RATIO[0]).all()

    with torch.random.fork_rng():
        torch.manual_seed(4)
        ref = torch.tensor([RandomResizedCrop.get_params(torch.empty(3, 32, 32), list(SCALE), list(RATIO))
                            for _ in range(n)]).T
    # Histograms of 10 bins, 20,000 draws each: measured total variation 0.004 to 0.012.
    assert total_variation(h * w / 1024, ref[2] * ref[3] / 1024, np.linspace(0, 1, 11)) < 0.03
    assert total_variation((w / h).log(), (ref[3] / ref[2]).log(), np.linspace(-0.35, 0.35, 11)) < 0.03
    assert total_variation(top + h / 2, ref[0] + ref[2] / 2, np.linspace(0, 32, 11)) < 0.03
    assert total_variation(left + w / 2, ref[1] + ref[3] / 2, np.linspace(0, 32, 11)) < 0.03


@pytest.mark.parametrize("ratio", [(2.0, 3.0), (0.3, 0.5), (0.5, 2.0)])
def test_random_resized_crop_falls_back_to_torchvision_centre_crop(ratio):
    scale = (1.5, 2.0)  # every candidate is larger than the image
    expected = RandomResizedCrop.get_params(torch.empty(3, 32, 32), list(scale), list(ratio))
    boxes = torch.stack(_rrc_boxes(8, 32, 32, scale, ratio, gen(0), "cpu"), 1)
    assert boxes.tolist() == [list(expected)] * 8


# ---------------------------------------------------------------------------------------------------
# color_jitter
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("brightness, hue", [(0.5, 0.0), (0.0, 0.15), (0.5, 0.5)])
def test_color_jitter_is_torchvision_brightness_then_hue_with_the_drawn_factors(cifar, brightness, hue):
    out = color_jitter(cifar, gen(5), brightness=brightness, hue=hue)
    factors, shifts = _jitter_factors(len(cifar), brightness, hue, gen(5), "cpu")
    for img, res, factor, shift in zip(cifar, out, factors.tolist(), shifts.tolist()):
        expected = img
        if brightness:
            expected = F.adjust_brightness(expected, factor)
        if hue:
            expected = F.adjust_hue(expected, shift)
        assert torch.equal(res, expected)  # bit-identical


def test_jitter_factors_are_uniform_per_image_in_torchvision_ranges():
    n = 20000
    factors, shifts = _jitter_factors(n, 0.5, 0.15, gen(6), "cpu")
    assert factors.unique().numel() > 0.99 * n and shifts.unique().numel() > 0.99 * n
    for values, low, high in [(factors, 0.5, 1.5), (shifts, -0.15, 0.15)]:
        assert low <= values.min() and values.max() <= high
        # 10 equal bins against their exact probability; measured 0.011 (factors), 0.009 (shifts).
        assert total_variation(values, 0.1, np.linspace(low, high, 11)) < 0.025
    factors, _ = _jitter_factors(n, 1.5, 0.0, gen(6), "cpu")  # the lower end is clipped at 0
    assert 0 <= factors.min() < 0.01 and 2.49 < factors.max() <= 2.5


def test_color_jitter_rejects_hue_beyond_half_a_turn(cifar):
    with pytest.raises(UserError, match=r"hue in \[0, 0.5\]"):
        color_jitter(cifar, gen(0), hue=0.6)


# ---------------------------------------------------------------------------------------------------
# gaussian_noise
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [0.05, 0.2])
def test_gaussian_noise_on_mid_grey_has_std_sigma_and_mean_zero(sigma):
    x = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    delta = (gaussian_noise(x, gen(7), sigma=sigma).double() - 128) / 255
    # Clamping at about +-0.5 trims the tails: sigma 0.2 loses ~1% of its std (2.5 sigma clipping).
    assert abs(delta.std().item() / sigma - 1) < 0.03
    assert abs(delta.mean().item()) < 0.002


@pytest.mark.parametrize("value", [0, 255])
def test_gaussian_noise_clamps_at_black_and_white(value):
    sigma = 0.2
    x = torch.full((64, 3, 32, 32), value, dtype=torch.uint8)
    out = gaussian_noise(x, gen(8), sigma=sigma).double()
    # Half of the noise pushes past the end and is clamped there (rounding widens it by half a level).
    unchanged = 0.5 * (1 + math.erf(0.5 / 255 / sigma / math.sqrt(2)))
    assert abs((out == value).double().mean().item() - unchanged) < 0.01
    # The rest moves inward by |N(0, sigma^2)|: mean shift sigma * phi(0) * 255 (~20 levels).
    shift = sigma * 255 / math.sqrt(2 * math.pi)
    assert abs((out - value).abs().mean().item() - shift) < 0.02 * shift


# ---------------------------------------------------------------------------------------------------
# Every op: seeded replay, fresh parameters per image
# ---------------------------------------------------------------------------------------------------

PARAMS = {"color_jitter": {"brightness": 0.5, "hue": 0.15}}


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_same_seed_replays_and_identical_images_get_their_own_parameters(cifar, name):
    op, params = STOCHASTIC[name], PARAMS.get(name, {})
    x = cifar[:1].expand(64, -1, -1, -1).contiguous()
    a, b, c = op(x, gen(9), **params), op(x, gen(9), **params), op(x, gen(10), **params)
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == x.shape
    if name != "flip":  # flip is deterministic; the pipeline's p makes it random
        assert not torch.equal(a, c)
        assert len({img.numpy().tobytes() for img in a}) > 32  # pad_crop has only 81 offsets
