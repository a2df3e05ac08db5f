import collections
import hashlib
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from scipy import stats
from torchvision.transforms import AutoAugment, AutoAugmentPolicy, RandAugment, TrivialAugmentWide

from searchlab.augment import ops, policies
from searchlab.augment.policies import (POLICIES, apply_per_image, augmix, augmix_jsd, autoaugment, deepaa,
                                        load_policy, randaugment, save_policy, trivialaugment)
from searchlab.errors import UserError

ENHANCE = ("Brightness", "Color", "Contrast", "Sharpness")


@pytest.fixture(scope="module")
def cifar(cifar_data):
    """64 real CIFAR-10 test images, uint8 (N, 3, 32, 32)."""
    raw = np.load(f"{cifar_data}/cifar10/test_x.npy", mmap_mode="r")
    return torch.from_numpy(np.array(raw[:64])).permute(0, 3, 1, 2).contiguous()


def copies(img, n):
    return img[None].expand(n, -1, -1, -1).contiguous()


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def chi2_p(observed, expected):
    observed, expected = np.asarray(observed, float), np.asarray(expected, float)
    return stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue


def tv_to_ops(name, m, size=32):
    """torchvision's _apply_op arguments in ops.OPS units: enhance 1 + m, translate int(m) pixels."""
    if name in ENHANCE:
        return 1.0 + m
    if name in ("TranslateX", "TranslateY"):
        return int(m) / size
    return m


def record_ops(monkeypatch, names, effect):
    """Replace ops.OPS[name] by fakes: out = effect(k, x) for the k-th name; calls are logged.
    The faked ops leave the batched warp and lookup-table paths, which would bypass ops.OPS."""
    log = collections.defaultdict(list)
    for k, name in enumerate(names):
        monkeypatch.delitem(ops.MATRICES, name, raising=False)
        monkeypatch.delitem(ops.LUTS, name, raising=False)
        def fake(x, v, k=k, name=name):
            log[name] += v.tolist()
            return effect(k, x)
        monkeypatch.setitem(ops.OPS, name, fake)
    return log


# ------------------------------------------------------------------------------------------------
# apply_per_image
# ------------------------------------------------------------------------------------------------

def test_apply_per_image_equals_applying_each_op_image_by_image(cifar):
    names = list(ops.OPS)
    g = seeded(1)
    op_index = torch.randint(-1, len(names), (len(cifar),), generator=g)  # -1: leave unchanged
    magnitude = torch.zeros(len(cifar))
    for i, k in enumerate(op_index.tolist()):
        low, high = ops.RANGES.get(names[k], (0.0, 0.0)) if k >= 0 else (0.0, 0.0)
        magnitude[i] = low + (high - low) * torch.rand(1, generator=g).item()
    out = apply_per_image(cifar, op_index, magnitude, names)
    for i, k in enumerate(op_index.tolist()):
        expected = cifar[i] if k < 0 else ops.OPS[names[k]](cifar[i:i + 1], magnitude[i:i + 1])[0]
        assert torch.equal(out[i], expected), (i, names[k] if k >= 0 else "unchanged")
    assert len(set(op_index.tolist())) >= 12  # the batch really mixes many ops


# ------------------------------------------------------------------------------------------------
# AutoAugment
# ------------------------------------------------------------------------------------------------

def test_autoaugment_policy_names_are_torchvisions():
    assert policies.AUTOAUGMENT_POLICIES == tuple(p.value for p in AutoAugmentPolicy)


def autoaugment_outcomes(img, policy):
    """Every (sub-policy, fired ops, signs) combination of torchvision's published policy applied to
    one image: {output bytes: probability}."""
    reference = AutoAugment(AutoAugmentPolicy(policy))
    space = reference._augmentation_space(10, tuple(img.shape[1:]))
    outcomes = collections.defaultdict(float)
    for sub in reference.policies:
        branches = [(img[None], 1 / len(reference.policies))]
        for name, p, level in sub:
            magnitudes, signed = space[name]
            m = float(magnitudes[level]) if level is not None else 0.0
            grown = [(x, q * (1 - p)) for x, q in branches]  # the op does not fire
            for sign in ((1, -1) if signed else (1,)):
                share = p / (2 if signed else 1)
                v = torch.tensor([tv_to_ops(name, sign * m, img.shape[-1])])
                grown += [(ops.OPS[name](x, v), q * share) for x, q in branches]
            branches = [(x, q) for x, q in grown if q > 0]
        for x, q in branches:
            outcomes[x.numpy().tobytes()] += q
    return outcomes


def test_autoaugment_outcomes_follow_the_published_cifar10_probabilities(cifar):
    img = cifar[3]
    outcomes = autoaugment_outcomes(img, "cifar10")
    out = autoaugment(copies(img, 3000), seeded(0), policy="cifar10")
    counts = collections.Counter(x.numpy().tobytes() for x in out)
    assert set(counts) <= set(outcomes), "every output is one of the enumerated combinations"
    # Chi-square over the distinct outputs, pooling those expected fewer than 5 times.
    keys = sorted(outcomes, key=outcomes.get, reverse=True)
    frequent = [k for k in keys if outcomes[k] * len(out) >= 5]
    observed = [counts[k] for k in frequent] + [sum(counts[k] for k in keys if k not in frequent)]
    expected = [outcomes[k] for k in frequent] + [sum(outcomes[k] for k in keys if k not in frequent)]
    assert len(frequent) > 20
    assert chi2_p(observed, expected) > 1e-3
    # Unchanged images: 1/25 * sum over sub-policies of P(neither op fires), plus no-op outcomes.
    unchanged = counts[img[None].numpy().tobytes()] / len(out)
    assert abs(unchanged - outcomes[img[None].numpy().tobytes()]) < 4.5 * math.sqrt(0.25 / len(out))


@pytest.mark.parametrize("policy", ["cifar10", "svhn", "imagenet"])
def test_autoaugment_outputs_are_enumerated_combinations_per_image(cifar, policy):
    for img in cifar[10:12]:
        outcomes = autoaugment_outcomes(img, policy)
        out = autoaugment(copies(img, 200), seeded(1), policy=policy)
        assert out.dtype == torch.uint8 and out.shape == (200, 3, 32, 32)
        assert all(x.numpy().tobytes() in outcomes for x in out)
        assert len({x.numpy().tobytes() for x in out}) > 30  # identical inputs, many outcomes


def test_autoaugment_unknown_policy_names_the_valid_ones(cifar):
    message = "unknown AutoAugment policy 'cifar'; valid: imagenet, cifar10, svhn"
    with pytest.raises(ValueError, match=message):
        autoaugment(cifar, seeded(), policy="cifar")


# ------------------------------------------------------------------------------------------------
# RandAugment and TrivialAugment
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, m", [(2, 9), (3, 27)])
def test_randaugment_applies_n_ops_per_image_at_torchvisions_magnitude(monkeypatch, n, m):
    space = RandAugment()._augmentation_space(31, (32, 32))
    log = record_ops(monkeypatch, list(space), lambda k, x: x + 1)  # each op adds 1
    out = randaugment(torch.zeros(2800, 3, 32, 32, dtype=torch.uint8), seeded(2), n=n, m=m)
    assert (out == n).all(), "every image went through exactly n ops"
    calls = [len(log[name]) for name in space]
    assert sum(calls) == 2800 * n and chi2_p(calls, [1] * len(space)) > 1e-3  # ops uniform
    for name, (magnitudes, signed) in space.items():
        expected = tv_to_ops(name, float(magnitudes[m]) if magnitudes.ndim else 0.0)
        values = np.array(log[name])
        if signed:  # centred at the identity value, with a random sign
            centre = 1.0 if name in ENHANCE else 0.0
            np.testing.assert_allclose(np.abs(values - centre), abs(expected - centre), atol=1e-6)
            assert abs(np.mean(values > centre) - 0.5) < 4.5 * math.sqrt(0.25 / len(values))
        elif magnitudes.ndim:
            np.testing.assert_allclose(values, expected, atol=1e-6)
    # The paper-scale magnitude 9 of 31 bins (torchvision's default), in closed form.
    if m == 9:
        assert set(np.round(np.abs(log["ShearX"]), 6)) == {0.09}
        assert set(np.abs(log["Rotate"])) == {9.0}
        assert set(np.abs(log["TranslateX"])) == {4 / 32}  # int(150/331 * 32 * 9/30) = 4 pixels
        assert set(log["Posterize"]) == {7.0} and np.allclose(log["Solarize"], 178.5)


def test_randaugment_rejects_a_magnitude_outside_the_bins(cifar):
    with pytest.raises(ValueError, match=r"m must be in \[0, 30\]"):
        randaugment(cifar, seeded(), m=31)


def test_trivialaugment_draws_ops_and_magnitude_bins_uniformly(monkeypatch):
    space = TrivialAugmentWide()._augmentation_space(31)
    log = record_ops(monkeypatch, list(space), lambda k, x: torch.full_like(x, k + 1))
    out = trivialaugment(torch.zeros(14000, 3, 32, 32, dtype=torch.uint8), seeded(3))
    drawn = out[:, 0, 0, 0].long() - 1  # each fake op writes its own index
    assert (drawn >= 0).all()
    assert chi2_p(np.bincount(drawn.numpy(), minlength=len(space)), [1] * len(space)) > 1e-3
    # Rotate: |angle| in torchvision's 31 bins of [0, 135] degrees, each bin equally likely.
    angles = np.array(log["Rotate"])
    bins = np.linspace(0, 135, 31)
    which = np.abs(np.abs(angles)[:, None] - bins[None]).argmin(1)
    np.testing.assert_allclose(np.abs(angles), bins[which], atol=1e-4)
    assert chi2_p(np.bincount(which, minlength=31), [1] * 31) > 1e-3
    assert abs(np.mean(angles > 0) - 0.5) < 0.1
    # Enhance factors 1 +- m with m in [0, 0.99]; solarize thresholds on torchvision's bins.
    assert 0.01 - 1e-6 <= min(log["Brightness"]) and max(log["Brightness"]) <= 1.99 + 1e-6
    assert set(np.round(log["Solarize"], 3)) <= set(np.round(np.linspace(255.0, 0.0, 31), 3))
    assert max(np.abs(log["TranslateX"])) == 1.0  # torchvision translates up to 32 pixels


# ------------------------------------------------------------------------------------------------
# AugMix
# ------------------------------------------------------------------------------------------------

def test_augmix_with_identity_chains_returns_the_input_exactly(monkeypatch, cifar):
    record_ops(monkeypatch, policies.AUGMIX_ALL_OPS, lambda k, x: x.clone())
    out = augmix(cifar, seeded(4), all_ops=True)
    assert torch.equal(out, cifar)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_augmix_skip_weight_is_beta_distributed(monkeypatch, alpha):
    # Chains turn a black image white, so each output pixel is round(255 m) with m the skip weight.
    record_ops(monkeypatch, policies.AUGMIX_OPS, lambda k, x: torch.full_like(x, 255))
    out = augmix(torch.zeros(20000, 3, 4, 4, dtype=torch.uint8), seeded(5), alpha=alpha)
    assert (out == out[:, :1, :1, :1]).all(), "one mixing weight per image"
    m = out[:, 0, 0, 0].double().numpy() / 255
    assert abs(m.mean() - 0.5) < 0.01
    assert abs(m.var() - 1 / (4 * (2 * alpha + 1))) < 0.006  # Beta(a, a) variance (+ rounding)


def test_augmix_chain_weights_match_dirichlet_moments():
    width, alpha = 3, 1.0
    w, m = policies._augmix_weights(40000, width, alpha, seeded(6), torch.device("cpu"))
    np.testing.assert_allclose(w.sum(1), 1, atol=1e-5)
    a0 = width * alpha
    np.testing.assert_allclose(w.mean(0), 1 / width, atol=0.005)
    np.testing.assert_allclose(w.var(0), alpha * (a0 - alpha) / (a0**2 * (a0 + 1)), atol=0.003)
    # Off-diagonal covariance of a Dirichlet: -a_i a_j / (a0^2 (a0 + 1)).
    assert abs(np.cov(w[:, 0], w[:, 1])[0, 1] + alpha**2 / (a0**2 * (a0 + 1))) < 0.003
    assert abs(m.mean() - 0.5) < 0.005 and abs(m.var() - 1 / 12) < 0.003


def test_augmix_chain_depth_is_uniform_in_1_to_3(monkeypatch):
    log = record_ops(monkeypatch, policies.AUGMIX_OPS, lambda k, x: x + 1)
    zeros = torch.zeros(3000, 1, 2, 2, dtype=torch.uint8)
    depth = policies._augmix_chain(zeros, seeded(7), 3, -1, policies.AUGMIX_OPS)[:, 0, 0, 0]
    assert set(depth.tolist()) == {1, 2, 3}
    assert chi2_p(np.bincount(depth.numpy())[1:], [1, 1, 1]) > 1e-3
    fixed = policies._augmix_chain(zeros, seeded(7), 3, 2, policies.AUGMIX_OPS)
    assert (fixed == 2).all()
    assert chi2_p([len(log[name]) for name in policies.AUGMIX_OPS], [1] * 9) > 1e-3


def test_augmix_magnitudes_follow_the_reference_severity_mapping(monkeypatch):
    log = record_ops(monkeypatch, policies.AUGMIX_ALL_OPS, lambda k, x: x)
    # 32 x 32 images: translations are a fraction of the side, as in the reference's IMAGE_SIZE = 32.
    policies._augmix_chain(torch.zeros(20000, 1, 32, 32, dtype=torch.uint8), seeded(8), 3, 1,
                           policies.AUGMIX_ALL_OPS)
    # google-research/augmix: level ~ U(0.1, severity); int(level * max / 10) for integer ops.
    u = np.random.default_rng(0).uniform(0.1, 3, 200000)
    posterize = np.array(log["Posterize"])
    assert set(posterize) == {3.0, 4.0}
    assert abs(np.mean(posterize == 3) - np.mean(4 - (u * 4 / 10).astype(int) == 3)) < 0.03
    rotate = np.array(log["Rotate"])
    assert set(np.abs(rotate)) == set(range(9)) and abs(np.mean(rotate > 0) - np.mean(rotate < 0)) < 0.1
    assert set(log["Solarize"]) <= set(256 - (u * 25.6).astype(int)) and min(log["Solarize"]) >= 256 - 76
    shear = np.abs(log["ShearX"])
    assert 0.003 - 1e-6 <= shear.min() and shear.max() < 0.09
    assert set(np.round(np.abs(log["TranslateY"]) * 32, 6)) == {0, 1, 2, 3}  # int(u * 32/3 / 10) pixels
    assert 0.118 - 1e-6 <= min(log["Contrast"]) and max(log["Contrast"]) < 0.64  # 0.1 + u * 1.8 / 10
    assert abs(np.mean(log["Color"]) - np.mean(0.1 + u * 0.18)) < 0.01


def test_augmix_jsd_is_zero_for_identical_logits_and_matches_numpy():
    logits = torch.randn(16, 10, generator=seeded(9))
    assert augmix_jsd(logits, logits, logits).abs().item() < 1e-6
    three = [torch.randn(16, 10, generator=seeded(s)) * 3 for s in (10, 11, 12)]
    p = [np.exp(t.double().numpy()) / np.exp(t.double().numpy()).sum(1, keepdims=True) for t in three]
    mixture = sum(p) / 3
    js = np.mean(sum((q * np.log(q / mixture)).sum(1) for q in p) / 3)
    assert js > 0.1
    assert abs(augmix_jsd(*three).item() - js) < 1e-5


# ------------------------------------------------------------------------------------------------
# Deep AutoAugment
# ------------------------------------------------------------------------------------------------

TABLE = ops.deepaa_table()


def entry(name, magnitude=None):
    return next(k for k, e in enumerate(TABLE) if e[0] == name and (magnitude is None or
                                                                     math.isclose(e[1], magnitude)))


def one_hot(*entries):
    """A policy with one layer per entry, each always drawing that entry."""
    probs = np.zeros((len(entries), len(TABLE)))
    for layer, k in enumerate(entries):
        probs[layer, k] = 1
    return probs


@pytest.mark.parametrize("name, magnitude", [
    ("ShearX", -0.25), ("Rotate", 20.0), ("Solarize", 128.0), ("Posterize", 4 + 4 / 3), ("Sharpness", 1.9),
    ("Equalize", None),
])
def test_deepaa_one_hot_layer_applies_that_entry(cifar, name, magnitude):
    out = deepaa(cifar, seeded(), one_hot(entry(name, magnitude)), mirror=False)
    expected = ops.OPS[name](cifar, torch.full((len(cifar),), magnitude or 0.0))
    assert torch.equal(out, expected)


def test_deepaa_stochastic_entries(cifar):
    x = copies(cifar[0], 2000)
    flipped = deepaa(x, seeded(1), one_hot(entry("flip")))
    is_flip = (flipped == cifar[0].flip(2)).flatten(1).all(1)
    assert ((flipped == cifar[0]).flatten(1).all(1) | is_flip).all()
    assert abs(is_flip.float().mean().item() - 0.5) < 4.5 * math.sqrt(0.25 / len(x))
    # fill=0: black cutout and padding, the default of earlier versions
    cut = deepaa(cifar, seeded(2), one_hot(entry("cutout")), fill=0)
    changed = (cut != cifar).any(1)  # (N, H, W)
    assert (cut.permute(0, 2, 3, 1)[changed] == 0).all() and changed.flatten(1).sum(1).max() <= 256
    crops = deepaa(cifar, seeded(3), one_hot(entry("pad_crop")), fill=0)
    padded = torch.nn.functional.pad(cifar, (4,) * 4)
    for img, pad in zip(crops[:8], padded[:8]):
        assert any(torch.equal(img, pad[:, t:t + 32, l:l + 32]) for t in range(9) for l in range(9))


# The authors' RandCrop and RandCutout, written out with PIL from augmentation.py of their code
# (AIoT-MLSys-Lab/DeepAA: mean_pad_randcrop with v = 4, RandCutout with v = 16; the training code's
# DeepAA_evaluate/deep_autoaugment.py does the same). Each returns the set of every image the op can
# make of one image, as bytes (H, W, C).
AUTHORS_FILL = (125, 123, 114)


def authors_rand_crop_outcomes(img, colour):
    """mean_pad_randcrop: a new 40 x 40 RGB image of ``colour``, the image pasted at (4, 4), and a
    32 x 32 crop at top = random.randint(0, 8), left = random.randint(0, 8)."""
    canvas = Image.new("RGB", (40, 40), color=colour)
    canvas.paste(Image.fromarray(img.permute(1, 2, 0).numpy()), (4, 4))
    return {np.asarray(canvas.crop((left, top, left + 32, top + 32))).tobytes()
            for top in range(9) for left in range(9)}


def authors_rand_cutout_outcomes(img, colour):
    """RandCutout, with one deliberate difference: a 16 x 16 square where theirs is 17 x 17.

    They draw x, y = random.uniform(0, 32), take x0 = int(min(32, max(0, x - 8))), x1 = int(min(32,
    max(0, x + 8))) (y0, y1 alike) and fill ImageDraw.rectangle((x0, y0, x1, y1)), which includes
    both corners: 17 pixels a side. Here the rectangle ends at x1 - 1, y1 - 1: 16 pixels.
    """
    centres = np.arange(0, 32, 0.125)  # a grid over uniform(0, 32) that hits every int() value
    spans = {(int(min(32, max(0, c - 8))), int(min(32, max(0, c + 8)))) for c in centres}
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    outcomes = set()
    for y0, y1 in spans:
        for x0, x1 in spans:
            out = pil.copy()
            ImageDraw.Draw(out).rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
            outcomes.add(np.asarray(out).tobytes())
    return outcomes


AUTHORS_OUTCOMES = {"pad_crop": authors_rand_crop_outcomes, "cutout": authors_rand_cutout_outcomes}


@pytest.mark.parametrize("name, draws", [("pad_crop", 2000), ("cutout", 12000)])
def test_deepaa_crop_and_cutout_are_outcomes_of_the_authors_code(cifar, name, draws):
    img = cifar[3]
    theirs, black = (AUTHORS_OUTCOMES[name](img, colour) for colour in (AUTHORS_FILL, (0, 0, 0)))
    assert len(theirs) == {"pad_crop": 81, "cutout": 32 * 32}[name]
    out = deepaa(copies(img, draws), seeded(13), one_hot(entry(name)))
    seen = {o.permute(1, 2, 0).numpy().tobytes() for o in out}
    # Every draw is an outcome of the authors' code, and every outcome occurs: 81 crops in 2,000
    # draws, 1,024 cutout positions in 12,000 (P(one missing) < 1e-2 for a given seed).
    assert seen == theirs
    # Not the black fill of earlier versions: only the uncropped image (offset 4, 4) is shared.
    assert len(seen & black) == (1 if name == "pad_crop" else 0)
    # fill=0 gives the black outcomes.
    black_out = deepaa(copies(img, 500), seeded(13), one_hot(entry(name)), fill=0)
    assert {o.permute(1, 2, 0).numpy().tobytes() for o in black_out} <= black


def test_deepaa_fill_0_reproduces_earlier_versions(cifar):
    """Digests of outputs recorded before deepaa had a fill parameter (its crop and cutout were
    black then): a 3-layer policy, half of each layer's mass on flip, cutout and crop."""
    row = np.full(len(TABLE), 0.5 / (len(TABLE) - 3))
    row[[entry("flip"), entry("cutout"), entry("pad_crop")]] = 0.5 / 3
    x = cifar.repeat(4, 1, 1, 1)
    digests = {False: "6c96e1f207c766205c8c46678db9bb1b38ff37127dd21049bcc11f59839c8575",
               True: "2ad2f2ef57875f90fbef643d458f16cc1a69a3856b5d86cf369f5ccb4fa4109b"}
    for mirror, digest in digests.items():
        out = deepaa(x, seeded(12), np.stack([row] * 3), mirror=mirror, fill=0)
        assert hashlib.sha256(out.numpy().tobytes()).hexdigest() == digest
        assert not torch.equal(out, deepaa(x, seeded(12), np.stack([row] * 3), mirror=mirror))


def test_deepaa_rgb_fill_on_grey_images_is_a_clear_error(cifar):
    grey = cifar[:, :1]
    with pytest.raises(UserError, match=r"deepaa fill must be one value or 1 values .*\[125, 123, 114\]"):
        deepaa(grey, seeded(), one_hot(entry("Identity")))
    out = deepaa(grey, seeded(), one_hot(entry("cutout")), fill=128)
    changed = out != grey
    assert changed.any() and (out[changed] == 128).all()


def test_deepaa_two_entry_row_frequencies(cifar):
    probs = np.zeros((1, len(TABLE)))
    probs[0, entry("Invert")], probs[0, entry("Equalize")] = 0.3, 0.7
    out = deepaa(copies(cifar[5], 3000), seeded(4), probs)
    inverted = (out == 255 - cifar[5]).flatten(1).all(1)
    equalized = (out == ops.OPS["Equalize"](cifar[5:6], 0)[0]).flatten(1).all(1)
    assert (inverted ^ equalized).all()
    assert abs(inverted.float().mean().item() - 0.3) < 4.5 * math.sqrt(0.21 / len(out))


def test_deepaa_layers_compose_in_order(cifar):
    out = deepaa(cifar, seeded(), one_hot(entry("Invert"), entry("Solarize", 128.0)))
    expected = ops.OPS["Solarize"](255 - cifar, 128.0)
    assert torch.equal(out, expected) and not torch.equal(out, 255 - ops.OPS["Solarize"](cifar, 128.0))


def test_deepaa_mirror_flips_geometric_magnitudes_for_half_the_images(cifar):
    x = copies(cifar[1], 2000)
    plus, minus = (ops.OPS["ShearX"](cifar[1:2], v)[0] for v in (0.3, -0.3))
    out = deepaa(x, seeded(5), one_hot(entry("ShearX", 0.3)), mirror=True)
    is_plus = (out == plus).flatten(1).all(1)
    assert (is_plus | (out == minus).flatten(1).all(1)).all()
    assert abs(is_plus.float().mean().item() - 0.5) < 4.5 * math.sqrt(0.25 / len(x))
    assert (deepaa(x, seeded(5), one_hot(entry("ShearX", 0.3)), mirror=False) == plus).all()


def authors_arrays(large=False):
    """op_names, ops and mags as the authors' DA_Policy_logits._get_unique_policy builds them."""
    last = ["RandFlip", "RandCutout60", "RandResizeCrop_imagenet"] if large else \
        ["RandFlip", "RandCutout", "RandCrop"]
    ranges = {"ShearX": "-0.3,,0.3", "ShearY": "-0.3,,0.3", "TranslateX": "-0.45,,0.45",
              "TranslateY": "-0.45,,0.45", "Rotate": "-30.0,,30.0", "Solarize": "0.0,,256.0",
              "Posterize": "4.0,,8.0", "Contrast": "0.1,,1.9", "Color": "0.1,,1.9",
              "Brightness": "0.1,,1.9", "Sharpness": "0.1,,1.9"}
    names = ["Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "AutoContrast", "Invert",
             "Equalize", "Solarize", "Posterize", "Contrast", "Color", "Brightness", "Sharpness"] + last
    mid = {"Solarize": 12, "Posterize": 12}  # the level that changes nothing; 6 for the others
    ops_, mags = [], []
    for k, name in enumerate(names):
        levels = [l for l in range(13) if l != mid.get(name, 6)] if name in ranges else [6]
        ops_ += [k] * len(levels)
        mags += levels
    op_names = [f"{n}:({ranges.get(n, '0.0,,1.0')}" for n in names]  # their names carry the range
    return np.array(op_names), np.array(ops_, np.int32)[:, None], np.array(mags, np.int32)[:, None]


def write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def authors_file(path, probs, large=False):
    op_names, ops_, mags = authors_arrays(large)
    write_npz(path, policy_probs=probs.astype(np.float32), l_ops=18, l_mags=13, ops=ops_, mags=mags,
              op_names=op_names)


def test_policy_file_round_trip_in_the_authors_layout(tmp_path, cifar):
    probs = np.random.default_rng(0).dirichlet(np.ones(len(TABLE)), size=3)
    save_policy(tmp_path / "p.npz", probs)
    with np.load(tmp_path / "p.npz") as data:
        assert set(data.files) == {"policy_probs", "l_ops", "l_mags", "ops", "mags", "op_names"}
        op_names, ops_, mags = authors_arrays()
        assert data["policy_probs"].shape == (3, 139) and data["l_ops"] == 18 and data["l_mags"] == 13
        np.testing.assert_array_equal(data["ops"], ops_)
        np.testing.assert_array_equal(data["mags"], mags)
        assert [n.split(":")[0] for n in op_names] == list(data["op_names"])
    loaded = load_policy(tmp_path / "p.npz")
    np.testing.assert_allclose(loaded["policy_probs"], probs, atol=1e-6)
    assert loaded["table"] == TABLE
    # deepaa(policy=path) is the same policy as the probabilities themselves.
    path = str(tmp_path / "p.npz")
    from_file = deepaa(cifar, seeded(6), policy=path)
    assert torch.equal(from_file, deepaa(cifar, seeded(6), loaded["policy_probs"]))


def test_a_policy_file_rewritten_at_the_same_path_is_read_again(tmp_path, cifar):
    # A worker that Tune reuses for the next trial may find a new policy at the same path.
    path = str(tmp_path / "p.npz")
    save_policy(path, one_hot(entry("Identity")))
    assert torch.equal(deepaa(cifar, seeded(), policy=path), cifar)
    before = os.stat(path)
    save_policy(path, one_hot(entry("Invert")))
    # Same size and modification time as before: only the content tells the two files apart.
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size and os.stat(path).st_mtime_ns == before.st_mtime_ns
    assert torch.equal(deepaa(cifar, seeded(), policy=path), 255 - cifar)


@pytest.mark.parametrize("large", [False, True])
def test_a_file_written_by_the_authors_code_loads_with_its_table(tmp_path, large):
    probs = np.random.default_rng(1).dirichlet(np.ones(139), size=2)
    authors_file(tmp_path / "a.npz", probs, large)
    loaded = load_policy(tmp_path / "a.npz")
    assert loaded["table"] == ops.deepaa_table(large_images=large)
    np.testing.assert_allclose(loaded["policy_probs"], probs, atol=1e-6)


@pytest.mark.parametrize("change, message", [
    (dict(policy_probs=np.full((2, 138), 1 / 138)),
     r"policy_probs must have shape \[K, 139\].*got \[2, 138\]"),
    (dict(policy_probs=np.full(139, 1 / 139)), r"policy_probs must have shape \[K, 139\].*got \[139\]"),
    (dict(policy_probs=np.full((2, 139), 1 / 150)), r"row 0 of policy_probs sums to 0.9267, not 1"),
    (dict(mags="shift"), r"different transformation table \(entry 1 is \('ShearX', -0.25\) in the file but "
                         r"\('ShearX', -0.3\).*only meaningful with the table it was searched on"),
    (dict(ops="short"),
     r"different transformation table \(it has 138 transformations, the current table 139\)"),
    (dict(op_names="renamed"), r"entry 138 is \('RandomCrop', None\) in the file"),
    (dict(ops="out of range"), r"op index 18 is out of range for the 18 op_names"),
    (dict(policy_probs=None), r"missing key\(s\) policy_probs"),
])
def test_bad_policy_files_raise_a_clear_value_error(tmp_path, change, message):
    op_names, ops_, mags = authors_arrays()
    arrays = dict(policy_probs=np.full((2, 139), 1 / 139), l_ops=18, l_mags=13, ops=ops_, mags=mags,
                  op_names=op_names)
    if change.get("mags") == "shift":
        arrays["mags"] = mags + (np.arange(139) == 1)[:, None]
    elif change.get("ops") == "short":
        arrays["ops"], arrays["mags"] = ops_[:-1], mags[:-1]
    elif change.get("ops") == "out of range":
        arrays["ops"] = ops_ + (np.arange(139) == 138)[:, None]
    elif change.get("op_names") == "renamed":
        arrays["op_names"] = np.array(list(op_names[:-1]) + ["RandomCrop"])
    elif "policy_probs" in change:
        if change["policy_probs"] is None:
            del arrays["policy_probs"]
        else:
            arrays["policy_probs"] = change["policy_probs"]
    write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load_policy(tmp_path / "bad.npz")


def test_deepaa_needs_exactly_one_policy_source(cifar, tmp_path):
    with pytest.raises(ValueError, match="exactly one of policy_probs"):
        deepaa(cifar, seeded())
    with pytest.raises(ValueError, match=r"policy_probs must have shape \[K, 139\], got \(1, 10\)"):
        deepaa(cifar, seeded(), np.ones((1, 10)) / 10)


# ------------------------------------------------------------------------------------------------
# Every policy
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(POLICIES))
def test_policies_replay_under_a_seed_and_differ_per_image(cifar, name):
    params = {"policy_probs": np.full((2, len(TABLE)), 1 / len(TABLE))} if name == "deepaa" else {}
    policy = POLICIES[name]
    a = policy(cifar, seeded(7), **params)
    assert a.dtype == torch.uint8 and a.shape == cifar.shape
    assert torch.equal(a, policy(cifar, seeded(7), **params))
    assert not torch.equal(a, policy(cifar, seeded(8), **params))
    # channels-last batches (the pipeline's layout) give the same images
    cl = policy(cifar.contiguous(memory_format=torch.channels_last), seeded(7), **params)
    assert torch.equal(cl, a)
    same = policy(copies(cifar[2], 64), seeded(9), **params)
    assert len({x.numpy().tobytes() for x in same}) > 16  # identical inputs, per-image choices
