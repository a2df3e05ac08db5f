"""Deep AutoAugment's search math (searchlab.deepaa) against independent references: per-image
backward passes, finite differences, autograd through the cosine, exact enumeration of small
policies, and a hand-written pretraining loop. Tiny models, float64 where exactness is checked."""
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from searchlab import deepaa
from searchlab.augment import ops, policies
from searchlab.data import Dataset, Split

# Deterministic entries (no per-image randomness), so that small policies can be enumerated.
SMALL_TABLE = (("Identity", None), ("Invert", None), ("Rotate", 30.0), ("Solarize", 128.0), ("ShearX", -0.25))


class Tiny(nn.Module):
    """conv (with bias) -> BN -> ReLU -> pool -> linear: every kind of parameter the proxy has."""

    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(self.pool(F.relu(self.bn(self.conv(x)))).flatten(1))


def tiny_proxy(seed=0, classes=3):
    torch.manual_seed(seed)
    model = Tiny(classes).double()
    with torch.no_grad():  # BN statistics and affine far from their defaults, so eval mode matters
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.3, 0.3)
    mean, std = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])
    return deepaa.freeze(model, mean, std)


def images(n, seed, size=8):
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ---- the independent reference: one backward pass per image, plain autograd on the module ------

def per_image_gradients(proxy, x, label):
    """[N, P] gradients of the cross-entropy of each image alone, through model(...) itself."""
    model = proxy.model
    params = [p for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters(recurse=False)]
    for p in params:
        p.requires_grad_(True)
    try:
        rows = []
        for img in x:
            inputs = (img[None].double() / 255 - proxy.mean.double()[:, None, None]) / proxy.std.double()[:, None, None]
            loss = F.cross_entropy(model(inputs), torch.tensor([label]))
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        return torch.stack(rows)
    finally:
        for p in params:
            p.requires_grad_(False)


def cos(a, b):
    return (a @ b) / (a.norm() * b.norm())


def softmax_probs(entries, seed):
    return torch.softmax(torch.randn(entries, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), 0)


# ---- layer 1: JVP rewards ---------------------------------------------------------------------

def layer1_point(proxy, seed=1):
    space = deepaa.Space()  # the real 139 transformations, on 8x8 images
    x, val = images(1, seed), images(7, seed + 100)
    point = deepaa.point_images(x, None, softmax_probs(len(space), seed), torch.Generator().manual_seed(seed),
                                space, deepaa.Settings())[0]
    return space, val, point


def test_layer1_jvp_rewards_equal_per_image_backward_passes_and_finite_differences():
    proxy = tiny_proxy()
    space, val, point = layer1_point(proxy)
    p = softmax_probs(len(space), 1)
    result = deepaa.point_rewards(proxy, 2, val, point, p, chunk=50)  # chunks: 50 + 50 + 39

    grads = per_image_gradients(proxy, point.jvp[0], 2)  # [139, P]
    g_v = per_image_gradients(proxy, val, 2).mean(0)
    g_t = p @ grads
    t = g_v - g_t * (g_v @ g_t) / (g_t @ g_t)
    expected = grads @ t / (g_t.norm() * g_v.norm())
    assert result.rewards.shape == (139,)
    assert (result.rewards - expected).abs().max() < 1e-8
    assert abs(result.cos - float(cos(g_v, g_t))) < 1e-12
    assert expected.std() > 1e-3  # the rewards do differ between transformations

    # d cos(g_V, g_T) / d p_i by central differences, g_T from the weighted backward pass
    h = 1e-6
    for i in (0, 5, 60, 100, 136, 138):
        cosines = []
        for sign in (1, -1):
            q = p.clone()
            q[i] += sign * h
            g = deepaa.gradient(proxy, point.gt, torch.full((139,), 2), q, chunk=64)
            cosines.append(float(cos(g_v, g)))
        assert abs((cosines[0] - cosines[1]) / (2 * h) - float(result.rewards[i])) < 1e-6


def test_surrogate_logit_gradient_equals_autograd_through_the_cosine():
    proxy = tiny_proxy()
    space, val, point = layer1_point(proxy, seed=3)
    grads = per_image_gradients(proxy, point.jvp[0], 1)
    g_v = per_image_gradients(proxy, val, 1).mean(0)
    theta = torch.randn(len(space), dtype=torch.float64, generator=torch.Generator().manual_seed(4)).requires_grad_()

    (through_cosine,) = torch.autograd.grad(cos(g_v, torch.softmax(theta, 0) @ grads), theta)
    rewards = deepaa.point_rewards(proxy, 1, val, point, torch.softmax(theta, 0).detach()).rewards
    (surrogate,) = torch.autograd.grad(deepaa.surrogate_loss(theta, rewards, scale=1.0), theta)
    assert (surrogate + through_cosine).abs().max() < 1e-12
    assert through_cosine.abs().max() > 1e-4


# ---- layers k >= 2: Monte Carlo against exact enumeration -------------------------------------

def exact_rewards(proxy, x, val, label, frozen, probs, space):
    """d cos / d p_k by autograd, g_T enumerated over every sequence of entries of layers 1..k."""
    e = len(space)
    sequences = torch.cartesian_prod(*[torch.arange(e)] * (len(frozen) + 1)).reshape(-1, len(frozen) + 1)
    out = x.expand(len(sequences), -1, -1, -1)
    for layer in range(sequences.shape[1]):
        out = space(out, sequences[:, layer], None)
    grads = per_image_gradients(proxy, out, label)
    prefix_prob = torch.ones(len(sequences), dtype=torch.float64)
    for layer in range(len(frozen)):
        prefix_prob = prefix_prob * frozen[layer][sequences[:, layer]]
    g_v = per_image_gradients(proxy, val, label).mean(0)
    p = probs.clone().requires_grad_()
    g_t = (prefix_prob * p[sequences[:, -1]]) @ grads
    (reward,) = torch.autograd.grad(cos(g_v, g_t), p)
    return reward


@pytest.mark.parametrize("layer", [2, 3])
def test_layer_k_monte_carlo_rewards_approach_the_exact_enumeration(layer):
    proxy = tiny_proxy(seed=10)
    space = deepaa.Space(SMALL_TABLE)
    x, val = images(1, 20), images(6, 21)
    frozen = torch.stack([softmax_probs(len(space), 20 + k) for k in range(layer - 1)])
    probs = softmax_probs(len(space), 30)
    exact = exact_rewards(proxy, x, val, 0, frozen, probs, space)

    def rms_error(samples):
        """RMS over 6 seeds and the entries of (Monte Carlo - exact), g_T from samples * E copies and
        the rewards from ``samples`` prefixes."""
        settings = deepaa.Settings(exp_gt_factor=samples, exp_g=samples)
        errors = []
        for seed in range(6):
            point = deepaa.point_images(x, frozen, probs, torch.Generator().manual_seed(seed), space, settings)[0]
            assert point.gt.shape[0] == samples * len(space) and point.jvp.shape[:2] == (samples, len(space))
            errors.append(deepaa.point_rewards(proxy, 0, val, point, probs, chunk=4096).rewards - exact)
        return float(torch.stack(errors).square().mean().sqrt())

    few, many = rms_error(8), rms_error(512)
    size = float(exact.square().mean().sqrt())
    assert few > 0.3 * size  # a few samples are far off, so the comparison means something
    assert many < 0.3 * few  # 1 / sqrt(64) = 0.125 for a plain mean
    assert many < 0.25 * size


def test_aggregate_mean_at_layer_1_and_mean_minus_population_std_above():
    rewards = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 6.0]], dtype=torch.float64)
    assert deepaa.aggregate(rewards, 1).tolist() == [2.0, 2.0]
    assert torch.allclose(deepaa.aggregate(rewards, 2), torch.tensor([2 - math.sqrt(2 / 3), 2 - math.sqrt(8)],
                                                                     dtype=torch.float64))


# ---- the proxy is frozen ----------------------------------------------------------------------

def toy_data(n_train=120, n_val=90, classes=3, size=8):
    """A dataset whose image k (train) or 10000 + k (val) carries its number in its first pixels."""
    def split(n, offset):
        x = images(n, offset, size)
        number = torch.arange(n) + offset
        x[:, 0, 0, 0], x[:, 0, 0, 1] = (number // 256).to(torch.uint8), (number % 256).to(torch.uint8)
        return Split(x, torch.arange(n) % classes)
    train, val = split(n_train, 0), split(n_val, 10000)
    return Dataset("toy", classes, train, val, Split(train.x[:0], train.y[:0]),
                   torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26]))


def number(x):
    return (x[..., 0, 0, 0].long() * 256 + x[..., 0, 0, 1].long())


SMALL = deepaa.Settings(points=2, val_images=5, exp_gt_factor=2, exp_g=3, steps=4)


def test_bn_is_frozen_and_excluded_from_the_parameter_vector():
    torch.manual_seed(0)
    model = Tiny().double().train()
    proxy = deepaa.freeze(model, torch.tensor([0.5] * 3), torch.tensor([0.25] * 3))
    assert not model.training and not model.bn.training
    assert sorted(proxy.params) == ["conv.bias", "conv.weight", "fc.bias", "fc.weight"]
    assert proxy.size == 4 * 3 * 9 + 4 + 16 * 3 + 3
    x = images(5, 0)
    g = deepaa.gradient(proxy, x, torch.zeros(5, dtype=torch.long), torch.full((5,), 0.2, dtype=torch.float64))
    assert g.shape == (proxy.size,)

    with torch.no_grad():  # running statistics unlike the batch's, so eval and train mode differ
        model.bn.running_mean.fill_(0.3)
        model.bn.running_var.fill_(2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pools = deepaa.search_pools(toy_data(), pretrain_size=20)
    layer = deepaa.LayerSearch(len(SMALL_TABLE), SMALL, seed=0)
    for frozen in (None, softmax_probs(len(SMALL_TABLE), 1)[None]):
        deepaa.search_step(proxy, pools, frozen, layer, deepaa.Space(SMALL_TABLE), SMALL)
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed during the search"
    assert all(not p.requires_grad for p in model.parameters())
    # The search's losses are those of the model in eval mode (running statistics), not train mode.
    inputs = proxy.inputs(x)
    eval_loss = F.cross_entropy(model.eval()(inputs), torch.zeros(5, dtype=torch.long), reduction="none")
    assert torch.allclose(deepaa._losses(proxy, proxy.params, inputs, torch.zeros(5, dtype=torch.long)), eval_loss)
    train_loss = F.cross_entropy(model.train()(inputs), torch.zeros(5, dtype=torch.long), reduction="none")
    assert not torch.allclose(train_loss, eval_loss)


# ---- search points ----------------------------------------------------------------------------

def test_search_points_respect_class_and_the_disjoint_pools():
    data = toy_data(n_train=300, n_val=150, classes=3)
    pools = deepaa.search_pools(data, pretrain_size=100)
    pretrain, train, val = (set(number(s.x).tolist()) for s in (pools.pretrain, pools.train, pools.val))
    assert pretrain == set(range(100))  # the first non-validation images, not a sample
    assert train == set(range(100, 300)) and val == set(range(10000, 10150))
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(30):
        points = deepaa.sample_points(pools, generator, points=4, val_images=20)
        assert points.train_x.shape == (4, 3, 8, 8) and points.val_x.shape == (4, 20, 3, 8, 8)
        for label, t, v in zip(points.labels.tolist(), number(points.train_x).tolist(), number(points.val_x).tolist()):
            assert t in train and set(v) <= val and len(set(v)) == 20
            assert t % 3 == label and {(k - 10000) % 3 for k in v} == {label}  # image k has class k % 3
            seen.add(label)
    assert seen == {0, 1, 2}
    with pytest.raises(ValueError, match="no class has 60 validation images"):
        deepaa.sample_points(pools, generator, points=1, val_images=60)


# ---- the step's log -----------------------------------------------------------------------------

@pytest.mark.parametrize("layer", [1, 2])
def test_step_log_matches_a_brute_force_recomputation(layer):
    proxy = tiny_proxy(seed=5)
    space = deepaa.Space(SMALL_TABLE)
    pools = deepaa.search_pools(toy_data(), pretrain_size=20)
    frozen = softmax_probs(len(space), 2)[None] if layer == 2 else None
    # From a uniform policy: the g_T samples then hold several entries, whose weights the update moves.
    settings = dataclasses.replace(SMALL, init="uniform", exp_gt_factor=4)
    search = deepaa.LayerSearch(len(space), settings, seed=3)
    before_probs, state = search.probs, search.generator.get_state()
    log = deepaa.search_step(proxy, pools, frozen, search, space, settings)

    # The same draws again, then cos from per-image gradients.
    replay = torch.Generator().manual_seed(0)
    replay.set_state(state)
    points = deepaa.sample_points(pools, replay, settings.points, settings.val_images)
    step_images = deepaa.point_images(points.train_x, frozen if frozen is not None else torch.zeros(0, 5),
                                      before_probs, replay, space, settings)
    cos_before, cos_after = [], []
    for j, label in enumerate(points.labels.tolist()):
        g_v = per_image_gradients(proxy, points.val_x[j], label).mean(0)
        grads = per_image_gradients(proxy, step_images.gt[j], label)
        for probs, out in ((before_probs, cos_before), (search.probs, cos_after)):
            if layer == 1:
                weights = probs
            else:  # importance weights of the same samples for the updated policy
                entries = step_images.gt_entries[j]
                weights = probs[entries] / (before_probs[entries] * len(entries))
            out.append(float(cos(g_v, weights @ grads)))
    assert log["layer"] == layer and log["step"] == 1
    assert abs(log["cos_before"] - np.mean(cos_before)) < 1e-10
    assert abs(log["cos_after"] - np.mean(cos_after)) < 1e-10
    assert abs(log["cos_after"] - log["cos_before"]) > 1e-6
    assert abs(log["cos_before_std"] - np.std(cos_before)) < 1e-10
    p = search.probs
    assert abs(log["entropy"] + float((p * p.log()).sum())) < 1e-12
    order = torch.argsort(p, descending=True)[:5].tolist()
    assert log["top5"] == [(space.names[i], float(p[i])) for i in order]
    assert log["reward_std"] >= 0 and math.isfinite(log["reward_mean"])


def test_initial_logits_are_identity_heavy_or_uniform():
    identity = deepaa.LayerSearch(139, deepaa.Settings()).probs
    assert abs(float(identity[0]) - math.exp(8) / (math.exp(8) + 138)) < 1e-12
    assert abs(float(deepaa.LayerSearch(139, deepaa.Settings()).logits.detach().sum())) < 1e-12
    assert torch.allclose(deepaa.LayerSearch(139, deepaa.Settings(init="uniform")).probs,
                          torch.full((139,), 1 / 139, dtype=torch.float64))
    with pytest.raises(ValueError, match="init must be one of identity, uniform"):
        deepaa.Settings(init="random")
    with pytest.raises(ValueError, match="exp_g must be a positive integer"):
        deepaa.Settings(exp_g=0)


# ---- resuming a layer -------------------------------------------------------------------------

def test_a_layer_resumed_mid_way_from_its_state_ends_where_an_uninterrupted_run_ends(tmp_path):
    proxy = tiny_proxy(seed=7)
    space = deepaa.Space(SMALL_TABLE)
    pools = deepaa.search_pools(toy_data(), pretrain_size=20)
    frozen = softmax_probs(len(space), 8)[None]

    straight = deepaa.LayerSearch(len(space), SMALL, seed=11)
    logs = deepaa.search_layer(proxy, pools, frozen, straight, space, SMALL)
    assert [log["step"] for log in logs] == [1, 2, 3, 4]

    first = deepaa.LayerSearch(len(space), SMALL, seed=11)
    deepaa.search_layer(proxy, pools, frozen, first, space, SMALL, until=2)
    torch.save(first.state_dict(), tmp_path / "layer.pt")
    del first
    resumed = deepaa.LayerSearch(len(space), SMALL, seed=12345)  # a different seed: the state overrides it
    resumed.load_state_dict(torch.load(tmp_path / "layer.pt"))
    rest = deepaa.search_layer(proxy, pools, frozen, resumed, space, SMALL)
    assert [log["step"] for log in rest] == [3, 4]
    assert torch.equal(resumed.logits, straight.logits)
    assert rest == logs[2:]
    assert not torch.equal(straight.logits, deepaa.LayerSearch(len(space), SMALL).logits)  # it moved

    # Without the generator's state the same two steps go elsewhere.
    partial = deepaa.LayerSearch(len(space), SMALL, seed=11)
    deepaa.search_layer(proxy, pools, frozen, partial, space, SMALL, until=2)
    state = partial.state_dict()
    state["generator"] = torch.Generator().manual_seed(99).get_state()
    wrong = deepaa.LayerSearch(len(space), SMALL)
    wrong.load_state_dict(state)
    deepaa.search_layer(proxy, pools, frozen, wrong, space, SMALL)
    assert not torch.equal(wrong.logits, straight.logits)


# ---- export -----------------------------------------------------------------------------------

def test_an_exported_policy_reloads_bit_identically_through_the_deepaa_policy(tmp_path):
    logits = [torch.randn(139, dtype=torch.float64, generator=torch.Generator().manual_seed(k)) * 2 for k in range(3)]
    path = tmp_path / "policy.npz"
    written = deepaa.export_policy(path, logits)
    loaded = policies.load_policy(path)
    assert written.dtype == np.float32 and written.shape == (3, 139)
    assert np.array_equal(loaded["policy_probs"], written.astype(np.float64))
    assert np.allclose(written, torch.softmax(torch.stack(logits), 1).numpy(), atol=1e-7)
    assert loaded["table"] == ops.deepaa_table()

    x = images(64, 5, size=32)
    from_file = policies.deepaa(x, torch.Generator().manual_seed(9), policy=path, mirror=False)
    assert torch.equal(from_file, policies.deepaa(x, torch.Generator().manual_seed(9), written, mirror=False))
    # The search's own policy sampling draws the same, draw for draw.
    sampled, entries = deepaa.sample_layers(x, written, torch.Generator().manual_seed(9), deepaa.Space())
    assert torch.equal(sampled, from_file) and entries.shape == (3, 64)
    assert not torch.equal(from_file, policies.deepaa(x, torch.Generator().manual_seed(10), policy=path, mirror=False))


def test_apply_entries_applies_entry_i_to_image_i():
    x = images(1, 3, size=32).expand(139, -1, -1, -1)
    table = ops.deepaa_table()
    out = policies.apply_entries(x, torch.arange(139), torch.Generator().manual_seed(0))
    for k in (0, 7, 30, 62, 70, 90, 130):
        name, magnitude = table[k]
        assert torch.equal(out[k:k + 1], ops.OPS[name](x[:1], torch.tensor([magnitude or 0.0])))
    with pytest.raises(ValueError, match="one entry in 0..138 per image"):
        policies.apply_entries(x[:2], torch.tensor([0, 139]), torch.Generator())


# ---- pretraining ------------------------------------------------------------------------------

def test_pretrain_epoch_follows_the_recipe():
    """Against a hand-written loop: same shuffling and augmentation draws, then SGD with Nesterov
    momentum written out, the l2 gradient added before the global norm is clipped, no decay on BN,
    the cosine rate at each step's start, and the last partial batch dropped."""
    data = toy_data(n_train=70, classes=3)
    optim = {**deepaa.PRETRAIN, "batch_size": 32, "epochs": 3, "lr": 0.5}

    def net():  # no BN right after the conv, where its bias would have no gradient but float noise
        return nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                             nn.Flatten(), nn.Linear(16, 3))
    torch.manual_seed(1)
    model, reference = net(), net()
    reference.load_state_dict(model.state_dict())
    mean, std = data.mean, data.std
    optimizer = deepaa.pretrain_optimizer(model, optim)
    generator = torch.Generator().manual_seed(4)
    losses = [deepaa.pretrain_epoch(model, data.train, optimizer, epoch, generator, mean, std, optim, clip=0.5)
              for epoch in range(2)]

    replay = torch.Generator().manual_seed(4)
    momentum = {p: torch.zeros_like(p) for p in reference.parameters()}
    decayed = {id(reference[1].weight), id(reference[1].bias), id(reference[5].weight)}  # not the dense bias
    expected = []
    for epoch in range(2):
        order = torch.randperm(70, generator=replay)
        total = 0.0
        for step in range(2):  # 70 images: two full batches of 32
            idx = order[step * 32:(step + 1) * 32]
            x = data.train.x[idx]
            x = policies.apply_entries(x, torch.full((32,), 0), replay, [("pad_crop", 4)])
            x = policies.apply_entries(x, torch.full((32,), 0), replay, [("flip", None)])
            x = policies.apply_entries(x, torch.full((32,), 0), replay, [("cutout", 16)])
            inputs = (x.float() / 255 - mean[:, None, None]) / std[:, None, None]
            loss = F.cross_entropy(reference(inputs), data.train.y[idx])
            total += loss.item()
            params = list(reference.parameters())
            grads = torch.autograd.grad(loss, params)
            grads = [g + 5e-4 * p.detach() if id(p) in decayed else g for g, p in zip(grads, params)]
            norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
            grads = [g * min(1.0, 0.5 / (float(norm) + 1e-6)) for g in grads]
            lr = 0.5 * 0.5 * (1 + math.cos(math.pi * (epoch + step / 2) / 3))
            with torch.no_grad():
                for p, g in zip(params, grads):
                    momentum[p] = 0.9 * momentum[p] + g
                    p -= lr * (g + 0.9 * momentum[p])
        expected.append(total / 2)
    assert np.allclose(losses, expected, rtol=1e-5)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    torch.manual_seed(1)
    assert not torch.allclose(model[1].weight, net()[1].weight)
