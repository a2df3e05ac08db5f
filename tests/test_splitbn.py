"""Split BatchNorm: the converted model against the plain one, the branches, the splitbn regime,
PGD, and the lambda evaluation against the pure branches."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from searchlab import splitbn
from searchlab.augment import Pipeline
from searchlab.config import resolve
from searchlab.models import build_model
from searchlab.regimes import pgd_attack
from searchlab.regimes import splitbn as splitbn_regime
from searchlab.splitbn import SplitBatchNorm2d, branch, branch_state_dict, convert

MODELS = ["small_cnn", "resnet20", "wrn28_2", "preactresnet18"]


def trained_split(name="small_cnn", shared_affine=False, steps=3):
    """A split model whose main and aux statistics and weights have moved apart."""
    torch.manual_seed(0)
    model = convert(build_model(name, 10), shared_affine)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(steps):
        x = torch.randn(8, 3, 32, 32)
        with branch(model, "split"):
            loss = model(torch.cat([x, 3 * x + 1])).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("name", MODELS)
def test_main_branch_equals_the_unconverted_model(name):
    torch.manual_seed(0)
    plain = build_model(name, 10)
    converted = convert(copy.deepcopy(plain))
    assert sum(isinstance(m, SplitBatchNorm2d) for m in converted.modules()) == \
        sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules()) > 0
    x = torch.randn(6, 3, 32, 32)
    for mode in ("train", "eval"):
        getattr(plain, mode)(), getattr(converted, mode)()
        assert torch.equal(converted(x), plain(x))
    # The main branch keeps the plain keys: its state loads into the plain model unchanged.
    assert set(branch_state_dict(converted)) == set(plain.state_dict())
    assert all(k in converted.state_dict() for k in plain.state_dict())


def test_a_trained_main_branch_loads_into_the_plain_model():
    model = trained_split()
    x = torch.randn(5, 3, 32, 32)
    for name in ("main", "aux"):
        plain = build_model("small_cnn", 10)
        plain.load_state_dict(branch_state_dict(model, name))  # strict
        plain.eval(), model.eval()
        with branch(model, name):
            assert torch.allclose(model(x), plain(x), atol=1e-6)
    outputs = {}
    for name in ("main", "aux"):
        with branch(model, name), torch.no_grad():
            outputs[name] = model(x)
    assert not torch.allclose(outputs["main"], outputs["aux"], atol=1e-3)  # the branches differ


def test_split_equals_the_halves_through_main_and_aux():
    model = trained_split()
    main, aux = copy.deepcopy(model), copy.deepcopy(model)
    a, b = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32) * 2
    for m in (model, main, aux):
        m.train()
    with branch(model, "split"):
        both = model(torch.cat([a, b]))
    with branch(main, "main"):
        out_a = main(a)
    with branch(aux, "aux"):
        out_b = aux(b)
    assert torch.allclose(both, torch.cat([out_a, out_b]), atol=1e-5)
    # Each half updated its own branch's running statistics, and only those.
    for layer, layer_main, layer_aux in zip(*(splitbn.split_layers(m) for m in (model, main, aux))):
        assert torch.allclose(layer.running_mean, layer_main.running_mean)
        assert torch.allclose(layer.aux.running_var, layer_aux.aux.running_var)
    with pytest.raises(ValueError, match="even batch"):
        with branch(model, "split"):
            model(torch.randn(3, 3, 32, 32))


def test_shared_affine_shares_one_parameter_and_keeps_two_statistics():
    plain = build_model("small_cnn", 10)
    model = trained_split(shared_affine=True)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())
    layer = splitbn.split_layers(model)[0]
    assert layer.aux.weight is None and layer.aux.bias is None
    assert not torch.allclose(layer.running_mean, layer.aux.running_mean)
    # The aux branch normalises with its own statistics and the main weight and bias.
    x = torch.randn(4, layer.num_features, 8, 8)
    layer.eval()
    with branch(layer, "aux"):
        out = layer(x)
    expected = F.batch_norm(x, layer.aux.running_mean, layer.aux.running_var, layer.weight, layer.bias,
                            eps=layer.eps)
    assert torch.allclose(out, expected, atol=1e-5)
    # A gradient through the aux branch reaches the one shared weight.
    layer.train()
    layer.weight.grad = None
    with branch(layer, "aux"):
        layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_separate_affine_has_its_own_parameters():
    model = convert(build_model("small_cnn", 10))
    layer = splitbn.split_layers(model)[0]
    assert layer.aux.weight is not layer.weight and torch.equal(layer.aux.weight, layer.weight)


def test_branch_restores_the_previous_branch_also_on_error():
    model = convert(build_model("small_cnn", 10))
    with branch(model, "aux"):
        with pytest.raises(RuntimeError):
            with branch(model, "split"):
                assert {m.branch for m in splitbn.split_layers(model)} == {"split"}
                raise RuntimeError("inside")
        assert {m.branch for m in splitbn.split_layers(model)} == {"aux"}
    assert {m.branch for m in splitbn.split_layers(model)} == {"main"}
    with pytest.raises(ValueError, match="valid: main, aux, split"):
        with branch(model, "both"):
            pass


def test_interpolation_ends_are_the_branches_and_the_middle_is_the_formula():
    main, aux = torch.randn(7, 10), torch.randn(7, 10)
    for space in ("probs", "logits"):
        assert torch.equal(splitbn.interpolate(main, aux, 0, space), main)
        assert torch.equal(splitbn.interpolate(main, aux, 1.0, space), aux)
    mixed = 0.75 * main.softmax(1) + 0.25 * aux.softmax(1)
    assert torch.allclose(splitbn.interpolate(main, aux, 0.25, "probs").exp(), mixed, atol=1e-6)
    assert torch.allclose(splitbn.interpolate(main, aux, 0.25, "logits"), 0.75 * main + 0.25 * aux, atol=1e-6)


# ---- the regime --------------------------------------------------------------------------------

def views(x, main, aux, seed):
    generator = torch.Generator().manual_seed(seed)
    return Pipeline(main).images(x, generator), Pipeline(aux).images(x, generator)


@pytest.mark.parametrize("weight", [0.5, 0.2])
def test_splitbn_loss_is_the_weighted_cross_entropy_of_the_two_branches(weight):
    model = trained_split()
    reference = copy.deepcopy(model)
    x, y = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (6,))
    norm = lambda images: images.float() / 255  # noqa: E731
    model.train(), reference.train()
    loss, logits = splitbn_regime(model, x, y, Pipeline("none"), torch.Generator().manual_seed(3), norm,
                                  main="standard", aux="randaugment", aux_loss_weight=weight)
    weak, strong = views(x, "standard", "randaugment", 3)
    with branch(reference, "main"):
        main_logits = reference(norm(weak))
    with branch(reference, "aux"):
        aux_logits = reference(norm(strong))
    expected = (1 - weight) * F.cross_entropy(main_logits, y) + weight * F.cross_entropy(aux_logits, y)
    assert torch.allclose(loss, expected, atol=1e-5)
    assert torch.allclose(logits, main_logits, atol=1e-5)


def test_splitbn_without_split_is_one_batchnorm_over_both_views():
    torch.manual_seed(0)
    model = build_model("small_cnn", 10).train()
    reference = copy.deepcopy(model)
    x, y = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (4,))
    norm = lambda images: images.float() / 255  # noqa: E731
    loss, _ = splitbn_regime(model, x, y, Pipeline("none"), torch.Generator().manual_seed(1), norm,
                             main="randaugment", aux="randaugment", split=False)
    weak, strong = views(x, "randaugment", "randaugment", 1)
    expected = F.cross_entropy(reference(norm(torch.cat([weak, strong]))), torch.cat([y, y]))
    assert torch.allclose(loss, expected, atol=1e-5)


def test_pgd_increases_the_loss_and_stays_within_epsilon():
    model = trained_split().eval()
    x, y = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (16,))
    norm = lambda images: images.float() / 255  # noqa: E731
    eps = 4 / 255
    with branch(model, "aux"):
        adversarial = pgd_attack(model, x, y, norm, torch.Generator().manual_seed(0), steps=4, epsilon=eps,
                                 step_size=1 / 255)
        with torch.no_grad():
            before = F.cross_entropy(model(norm(x)), y)
            after = F.cross_entropy(model(norm(adversarial)), y)
    assert after > before
    assert (adversarial / 255 - x.float() / 255).abs().max() <= eps + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 255
    # The attack leaves BatchNorm's running statistics alone, also in training mode.
    model.train()
    stats = copy.deepcopy([layer.aux.running_mean for layer in splitbn.split_layers(model)])
    with branch(model, "aux"):
        pgd_attack(model, x, y, norm, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, layer.aux.running_mean) for a, layer in zip(stats, splitbn.split_layers(model)))


def test_splitbn_config_errors_name_the_problem():
    with pytest.raises(Exception, match="unknown augment preset 'strong'"):
        resolve({"regime": "splitbn", "splitbn": {"aux": "strong"}})
    with pytest.raises(Exception, match=r"lambda and lambdas must be numbers in \[0, 1\]"):
        resolve({"regime": "splitbn", "splitbn": {"lambdas": [0, 2]}})
    with pytest.raises(Exception, match="valid: probs, logits"):
        resolve({"regime": "splitbn", "splitbn": {"interpolate": "mean"}})
    with pytest.raises(Exception, match="splitbn mixes no batches"):
        resolve({"regime": "splitbn", "augment": {"mix": {"name": "mixup"}}})


# ---- the lambda evaluation -------------------------------------------------------------------------

def fake_data(n=64, seed=0):
    from searchlab.data import Dataset, Split

    g = torch.Generator().manual_seed(seed)
    split = lambda: Split(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),  # noqa: E731
                          torch.randint(0, 10, (n,), generator=g))
    return Dataset("fake", 10, split(), split(), split(), torch.full((3,), 0.5), torch.full((3,), 0.25))


def branch_models(model):
    """Plain models that compute the split model's main and aux branch."""
    plain = {}
    for name in ("main", "aux"):
        plain[name] = build_model("small_cnn", 10).eval()
        plain[name].load_state_dict(branch_state_dict(model, name))
    return plain


def test_every_lambda_from_two_forward_passes_and_the_ends_equal_the_branches():
    from searchlab.data import normalize
    from searchlab.evals import clean

    model, data = trained_split(), fake_data()
    cfg = resolve({"regime": "splitbn", "splitbn": {"lambda": 0.25}})
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    metrics = clean(model, data, cfg)
    assert len(calls) == 2 * 2  # val and test, one batch each: main and aux, whatever the lambdas
    plain = branch_models(model)
    x = normalize(data.test.x, data.mean, data.std)
    with torch.no_grad():
        logits = {name: m(x) for name, m in plain.items()}
    accuracy = lambda z: (z.argmax(1) == data.test.y).float().mean().item()  # noqa: E731
    assert metrics["test_acc@lam0"] == accuracy(logits["main"])
    assert metrics["test_acc@lam1"] == accuracy(logits["aux"])
    assert metrics["test_loss@lam1"] == pytest.approx(F.cross_entropy(logits["aux"], data.test.y).item(), rel=1e-5)
    for lam in (0.25, 0.5, 0.75):
        mixed = (1 - lam) * logits["main"].softmax(1) + lam * logits["aux"].softmax(1)
        assert metrics[f"test_acc@lam{lam:g}"] == accuracy(mixed)
        assert metrics[f"test_loss@lam{lam:g}"] == pytest.approx(
            F.nll_loss(mixed.log(), data.test.y).item(), rel=1e-4)
    # The trial's own lambda gives the plain names.
    assert metrics["test_acc"] == metrics["test_acc@lam0.25"] and metrics["val_loss"] == metrics["val_loss@lam0.25"]


def write_fake_c(root, data, per_severity):
    """A CIFAR-10-C layout of the fake test images, each corruption a different brightness shift."""
    from searchlab import corruptions

    folder = root / "fake-c"
    folder.mkdir(parents=True)
    x = data.test.x[:per_severity].permute(0, 2, 3, 1).numpy()
    for i, name in enumerate(corruptions.CORRUPTIONS):
        shifted = [(x.astype(int) + 7 * i * s).clip(0, 255).astype("uint8") for s in range(1, 6)]
        np.save(folder / f"{name}.npy", np.concatenate(shifted))
    np.save(folder / "labels.npy", np.tile(data.test.y[:per_severity].numpy(), 5))
    return folder


def test_corruption_error_per_corruption_and_lambda_against_the_plain_branches(tmp_path):
    from searchlab import corruptions
    from searchlab.data import normalize
    from searchlab.evals import corruption_errors

    model, data = trained_split(), fake_data()
    write_fake_c(tmp_path, data, per_severity=16)
    cfg = resolve({"regime": "splitbn", "data": {"root": str(tmp_path)},
                   "corruptions": {"images": 10}})
    cfg["data"]["dataset"] = "fake"  # resolve knows only real dataset names
    metrics = corruption_errors(model, data, cfg)
    plain = branch_models(model)
    images, labels = corruptions.load("fake", str(tmp_path))
    for lam, branch_name in ((0, "main"), (1, "aux")):
        errors = []
        for name in corruptions.CORRUPTIONS:
            wrong = 0
            for severity in range(5):
                rows = slice(16 * severity, 16 * severity + 10)
                x = torch.from_numpy(np.array(images[name][rows])).permute(0, 3, 1, 2)
                with torch.no_grad():
                    pred = plain[branch_name](normalize(x, data.mean, data.std)).argmax(1)
                wrong += (pred != torch.from_numpy(labels[rows]).long()).sum().item()
            errors.append(wrong / 50)
            assert metrics[f"uce_{name}@lam{lam}"] == pytest.approx(errors[-1], abs=1e-12)
        assert metrics[f"uce@lam{lam}"] == pytest.approx(np.mean(errors), abs=1e-12)
    assert metrics["uce"] == metrics["uce@lam0"]
