import numpy as np
import pytest
import torch
import torch.nn.functional as F

from searchlab.augment import PRESETS, Pipeline, validate
from searchlab.augment.mix import cutmix, mixup
from searchlab.errors import UserError
from searchlab.models import build_model
from searchlab.regimes import mixed_forward


def batch(n=16, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.arange(n) % classes
    return x, y, F.one_hot(y, classes).float()


def partner_weights(y_mixed, y):
    """For each image, (own weight, partner index) read off soft labels of distinct classes."""
    own = y_mixed[torch.arange(len(y)), y]
    other = y_mixed.clone()
    other[torch.arange(len(y)), y] = 0
    return own, other.argmax(1)


def test_mixup_is_the_convex_combination_its_labels_state():
    x, y, soft = batch(10)  # ten distinct classes: partners are identifiable from the labels
    xm, ym = mixup(x, soft, torch.Generator().manual_seed(3), alpha=1.0)
    torch.testing.assert_close(ym.sum(1), torch.ones(10))
    lam, partner_class = partner_weights(ym, y)
    moved = lam < 1  # images the permutation paired with themselves keep weight 1
    assert moved.any() and torch.allclose(lam[moved], lam[moved][0]), "one weight per batch"
    for i in range(10):
        j = int((y == partner_class[i]).nonzero()) if lam[i] < 1 else i
        torch.testing.assert_close(xm[i], lam[i] * x[i] + (1 - lam[i]) * x[j])


def test_mixup_weights_follow_beta():
    x, y, soft = batch(10)
    g = torch.Generator().manual_seed(0)
    lams = []
    for _ in range(2000):
        _, ym = mixup(x[:2], soft[:2], g, alpha=0.5)
        if ym[0, 1] > 0:  # the two images were paired with each other, not with themselves
            lams.append(ym[0].max().item())
    lam = np.array(lams)
    assert 800 < len(lam) < 1200  # half the permutations of two swap them
    # max(lam, 1 - lam) of Beta(0.5, 0.5): mean 0.5 + 1/pi (closed form of E|lam - 1/2| = 1/pi)
    assert abs(lam.mean() - (0.5 + 1 / np.pi)) < 0.02


def test_cutmix_label_weight_is_the_pasted_area():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    areas = []
    for _ in range(50):
        x, y, soft = batch(10)
        xm, ym = cutmix(x, soft, g, alpha=1.0)
        torch.testing.assert_close(ym.sum(1), torch.ones(10))
        own, _ = partner_weights(ym, y)
        pasted = (xm != x).any(1).float().mean((1, 2))  # random images: every pasted pixel differs
        fixed_points = (own == 1) & (pasted == 0)
        torch.testing.assert_close(1 - own[~fixed_points], pasted[~fixed_points])
        areas.append(pasted.mean().item())
    assert 0.1 < np.mean(areas) < 0.6
    x, y, soft = batch()
    same, ys = cutmix(x, soft, torch.Generator(), p=0.0)
    assert same is x and ys is soft


def test_manifold_mixup_mixes_the_chosen_stage():
    torch.manual_seed(0)
    model = build_model("resnet20", 10).eval()
    x, y, soft = batch(6)
    for layer in (0, 1, 2):
        g = torch.Generator().manual_seed(7)
        mix = {"name": "manifold_mixup", "alpha": 2.0, "layers": (layer,)}
        logits, ym = mixed_forward(model, x, soft, Pipeline([], mix, num_classes=10), g)
        lam, partner_class = partner_weights(ym, y)
        perm = torch.tensor([int((y == c).nonzero()) for c in partner_class])
        with torch.no_grad():
            h = x if layer == 0 else model.stages[:layer](model.stem(x))
            h = lam[0] * h + (1 - lam[0]) * h[perm]
            h = model.stem(h) if layer == 0 else h
            expected = model.head(model.stages[layer if layer else 0:](h))
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)
    assert not model.stages[0]._forward_hooks, "hooks are removed"


def test_presets_and_mixes_validate_and_replay():
    for name in PRESETS:
        validate(name)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(8)
    for mix in ({"name": "mixup", "alpha": 1.0}, {"name": "cutmix", "alpha": 1.0, "p": 1.0}):
        pipe = Pipeline("cutout", mix, num_classes=10)
        a = pipe(x, y, torch.Generator().manual_seed(0))
        b = pipe(x, y, torch.Generator().manual_seed(0))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[1].shape == (8, 10)


@pytest.mark.parametrize("pipeline, mix, message", [
    ("fancy", None, r"unknown augment preset 'fancy'; valid presets: none, flip, crop, standard"),
    ([{"op": "cutout", "length": 8}], None, r"unknown parameter\(s\) length for op 'cutout'; valid: p, size"),
    ([], {"name": "mixupp"}, r"unknown mix 'mixupp'; valid mixes: mixup, cutmix, manifold_mixup"),
    ([], {"name": "cutmix", "beta": 1}, r"unknown parameter\(s\) beta for mix 'cutmix'; valid: alpha, p"),
    ([{"op": "deepaa", "policy": "/nonexistent.npz"}], None, r"fails: "),
])
def test_bad_augment_config(pipeline, mix, message):
    with pytest.raises(UserError, match=message):
        validate(pipeline, mix)
