import pytest
import torch
import torchvision.transforms.functional as TF

from searchlab.augment import STANDARD, Pipeline, validate
from searchlab.errors import UserError


def images(n=64, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_flip_matches_torchvision():
    x = images()
    out, _ = Pipeline([{"op": "flip"}])(x, None, torch.Generator())
    assert torch.equal(out, torch.stack([TF.hflip(img) for img in x]))


def test_pad_crop_is_a_torchvision_crop_of_the_padded_image_at_a_per_image_offset():
    x = images(1).expand(256, -1, -1, -1).contiguous()  # 256 copies of one image
    out, _ = Pipeline([{"op": "pad_crop", "padding": 4}])(x, None, torch.Generator().manual_seed(0))
    padded = TF.pad(x[0], 4, fill=0)
    crops = {(top, left): TF.crop(padded, top, left, 32, 32) for top in range(9) for left in range(9)}
    offsets = []
    for img in out:
        match = [k for k, crop in crops.items() if torch.equal(crop, img)]
        assert match, "every output must be one of the 81 crops"
        offsets.append(match[0])
    # Per-image randomness: identical inputs, many different offsets, covering the whole range.
    assert len(set(offsets)) > 50
    assert {t for t, _ in offsets} == set(range(9)) and {l for _, l in offsets} == set(range(9))


def test_flip_probability_is_per_image():
    x = images(1).expand(2000, -1, -1, -1)
    out, _ = Pipeline([{"op": "flip", "p": 0.5}])(x, None, torch.Generator().manual_seed(0))
    flipped = (out == TF.hflip(x[0])).flatten(1).all(1).float().mean().item()
    assert abs(flipped - 0.5) < 0.05  # 4.5 binomial standard deviations


def test_seeded_pipeline_replays_and_labels_pass_through():
    x, y = images(), torch.arange(64)
    a, ya = Pipeline(STANDARD)(x, y, torch.Generator().manual_seed(5))
    b, _ = Pipeline(STANDARD)(x, y, torch.Generator().manual_seed(5))
    c, _ = Pipeline(STANDARD)(x, y, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(ya, y)
    assert a.dtype == torch.uint8 and a.shape == x.shape


@pytest.mark.parametrize("spec, message", [
    ([{"op": "blur"}], r"unknown op .blur.; valid ops: flip, pad_crop, cutout"),
    ([{"op": "pad_crop", "pad": 4}], r"unknown parameter\(s\) pad for op 'pad_crop'; valid: p, padding"),
    ([{"op": "flip", "p": 2}], r"p must be in \[0, 1\]"),
    ([{"name": "flip"}], r"an op spec is a dict with an 'op' key"),
    (42, r"must be a preset name or a list of op specs"),
])
def test_bad_specs_name_what_is_valid(spec, message):
    with pytest.raises(UserError, match=message):
        validate(spec)


# (make_grid returns a lone image unpadded, so every case has several)
@pytest.mark.parametrize("rows, columns, size", [(1, 4, 4), (3, 5, 8), (2, 9, 7)])
def test_image_grid_is_torchvisions_make_grid(rows, columns, size):
    from torchvision.utils import make_grid

    from searchlab.augment import image_grid

    images = torch.randint(0, 256, (rows, columns, 3, size, size + 1), dtype=torch.uint8)
    expected = make_grid(images.flatten(0, 1), nrow=columns, padding=2, pad_value=255)
    assert torch.equal(image_grid(images), expected)
