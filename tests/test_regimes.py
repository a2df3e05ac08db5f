"""Regimes: what a training batch becomes and what the loss is."""
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from searchlab.augment import Pipeline
from searchlab.augment.mix import MIXES, soft
from searchlab.augment.policies import augmix
from searchlab.config import resolve
from searchlab.data import load_dataset, normalize
from searchlab.errors import UserError
from searchlab.models import build_model
from searchlab.regimes import REGIMES, check, standard
from searchlab.train import make_optimizer, regime_of


@pytest.fixture(scope="module")
def batch():
    data = load_dataset("digits", train_size=64)
    # Digits are 8x8 greyscale: the regimes run on them as on any image batch.
    return data, data.train.x[:16], data.train.y[:16], partial(normalize, mean=data.mean, std=data.std)


def model_for(data, seed=0):
    torch.manual_seed(seed)
    return build_model("small_cnn", 10, in_channels=1)


def old_training_loss(model, x, y, augment, generator, norm):
    """The training step as it was before regimes: the pipeline's ops, then the mix as
    ``Pipeline.forward`` applied it (manifold mixup as ``manifold_mixup_forward`` did)."""
    x = norm(augment.images(x, generator))
    if augment.mix is None:
        return F.cross_entropy(model(x), y)
    name, params = augment.mix["name"], {k: v for k, v in augment.mix.items() if k != "name"}
    y = soft(y, 10)
    if name != "manifold_mixup":
        x, y = MIXES[name][1](x, y, generator, **params)
        return F.cross_entropy(model(x), y)
    points = list(model.stages)
    layers = params["layers"]
    layer = layers[torch.randint(len(layers), (1,), generator=generator).item()]
    seed = torch.randint(2**62, (1,), generator=generator).item()
    lam = float(np.random.default_rng(seed).beta(params["alpha"], params["alpha"]))
    perm = torch.randperm(len(x), generator=generator)
    if layer == 0:
        return F.cross_entropy(model(lam * x + (1 - lam) * x[perm]), lam * y + (1 - lam) * y[perm])
    handle = points[layer - 1].register_forward_hook(lambda m, i, out: lam * out + (1 - lam) * out[perm])
    try:
        return F.cross_entropy(model(x), lam * y + (1 - lam) * y[perm])
    finally:
        handle.remove()


@pytest.mark.parametrize("mix", [
    None,
    {"name": "mixup", "alpha": 1.0},
    {"name": "cutmix", "alpha": 1.0, "p": 1.0},
    {"name": "manifold_mixup", "alpha": 2.0, "layers": [0, 1, 2]},
])
def test_standard_is_the_old_training_loss_bit_for_bit(batch, mix):
    data, x, y, norm = batch
    augment = Pipeline([{"op": "pad_crop", "padding": 1}, {"op": "cutout", "size": 3}], mix, 10)
    model = model_for(data).train()
    for seed in range(4):  # manifold mixup draws a different layer for some of the seeds
        loss, logits = standard(model, x, y, augment, torch.Generator().manual_seed(seed), norm)
        expected = old_training_loss(model, x, y, augment, torch.Generator().manual_seed(seed), norm)
        assert torch.equal(loss, expected), (mix, seed)
        assert logits.shape == (16, 10)


def test_augmix_jsd_is_the_reference_loss(batch):
    """Cross-entropy of the clean view + 12 x the Jensen-Shannon divergence of the three views'
    predictions, computed here in float64 numpy from the three views run one at a time."""
    data, x, y, norm = batch
    x = x.expand(-1, 3, -1, -1).contiguous()  # AugMix's colour ops want RGB
    norm = partial(normalize, mean=data.mean.repeat(3), std=data.std.repeat(3))
    torch.manual_seed(0)
    model = build_model("small_cnn", 10).eval()  # eval: each view's logits do not depend on the others
    augment = Pipeline([{"op": "flip", "p": 0.5}], None, 10)
    loss, logits = REGIMES["augmix_jsd"](model, x, y, augment, torch.Generator().manual_seed(5), norm)

    g = torch.Generator().manual_seed(5)
    clean = augment.images(x, g)
    views = [clean, augmix(clean, g), augmix(clean, g)]
    assert not torch.equal(views[1], clean) and not torch.equal(views[1], views[2])
    with torch.no_grad():
        out = [model(norm(v)).double().numpy() for v in views]
    probs = [np.exp(o - o.max(1, keepdims=True)) for o in out]
    probs = [p / p.sum(1, keepdims=True) for p in probs]
    mixture = np.clip(sum(probs) / 3, 1e-7, 1)
    js = np.mean([np.sum(p * (np.log(p) - np.log(mixture)), axis=1).mean() for p in probs])
    cross_entropy = -np.log(probs[0][np.arange(16), y.numpy()]).mean()
    assert loss.item() == pytest.approx(cross_entropy + 12 * js, rel=1e-5)
    torch.testing.assert_close(logits, torch.as_tensor(out[0], dtype=torch.float32), rtol=1e-4, atol=1e-5)
    # The weight is the config group's: 0 leaves the clean view's cross-entropy alone.
    cfg = resolve({"regime": "augmix_jsd", "augmix_jsd": {"weight": 0.0}})
    plain, _ = regime_of(cfg, "augmix_jsd")(model, x, y, augment, torch.Generator().manual_seed(5), norm)
    assert plain.item() == pytest.approx(cross_entropy, rel=1e-5)


def test_batch_augment_is_the_mean_loss_over_independently_augmented_copies(batch):
    """Hoffer et al.'s Batch Augmentation: with an augmentation that draws nothing it is the plain
    loss; with a random one, the copies differ and the loss is the mean cross-entropy over all."""
    data, x, y, norm = batch
    model = model_for(data)
    regime = regime_of(resolve({"regime": "batch_augment", "batch_augment": {"copies": 3}}), "batch_augment")
    plain = Pipeline("none", None, 10)
    loss, logits = regime(model, x, y, plain, torch.Generator().manual_seed(0), norm)
    torch.testing.assert_close(loss, F.cross_entropy(model(norm(x)), y))
    torch.testing.assert_close(logits, model(norm(x)))

    flip = Pipeline([{"op": "flip", "p": 0.5}], None, 10)
    model.eval()  # BatchNorm on its running statistics: the copies' losses can be taken one by one
    loss, _ = regime(model, x, y, flip, torch.Generator().manual_seed(1), norm)
    generator = torch.Generator().manual_seed(1)
    views = [flip.images(x, generator) for _ in range(3)]
    assert not torch.equal(views[0], views[1])
    per_image = [F.cross_entropy(model(norm(v)), y, reduction="none") for v in views]
    torch.testing.assert_close(loss, torch.cat(per_image).mean())


@pytest.mark.parametrize("name", REGIMES)
def test_every_regime_trains_and_replays(batch, name):
    """One optimiser step per regime: a finite loss with gradients, N rows of logits, and the same
    loss again from the same seed."""
    data, x, y, norm = batch
    x = x.expand(-1, 3, -1, -1).contiguous()
    norm = partial(normalize, mean=data.mean.repeat(3), std=data.std.repeat(3))
    torch.manual_seed(0)
    model = build_model("small_cnn", 10)
    regime = regime_of(resolve({"regime": name}), name)
    augment = Pipeline("standard", None, 10)
    loss, logits = regime(model, x, y, augment, torch.Generator().manual_seed(1), norm)
    assert torch.isfinite(loss) and logits.shape == (16, 10)
    again, _ = regime(model, x, y, augment, torch.Generator().manual_seed(1), norm)
    assert torch.equal(loss, again)
    optimizer = make_optimizer(model, resolve({})["optim"])
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    optimizer.step()


@pytest.mark.parametrize("config, message", [
    ({"regime": "jsd"}, r"unknown regime 'jsd'; valid regimes: standard, augmix_jsd"),
    ({"regime": "augmix_jsd", "augment": {"mix": {"name": "mixup"}}}, r"augment.mix must be None"),
    ({"regime": "augmix_jsd", "augmix_jsd": {"severity": 11}}, r"severity must be in \[1, 10\]"),
    ({"augmix_jsd": {"weight": "12"}}, r"augmix_jsd.weight must be a number, got '12'"),
    ({"augmix_jsd": {"lambda": 1}}, r"unknown key\(s\) lambda in augmix_jsd; valid: weight, severity"),
    ({"phases": [{"start_epoch": 1, "regime": "mixmatch"}]}, r"unknown regime 'mixmatch'"),
])
def test_bad_regime_configs_name_the_valid_choices(config, message):
    with pytest.raises(UserError, match=message):
        resolve(config)
    assert check("standard", {}, "standard", None) is None
