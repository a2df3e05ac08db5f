"""Tests for searchlab.models against published sizes and hand-derived architecture facts."""

import functools

import pytest
import torch
import torch.nn as nn
import torchvision

from searchlab.models import MODELS, build_model, conv_layers

ALL_NAMES = [
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "preactresnet18", "wrn28_2", "wrn28_10", "wrn40_2",
    "resnet18", "resnet50", "small_cnn",
]
# Models that must also run on 8x8 inputs (the digits quick start).
SMALL_INPUT_NAMES = [n for n in ALL_NAMES if n not in ("resnet18", "resnet50")]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=None)
def cached(name: str) -> nn.Module:
    # Built once per session with 10 classes / 3 channels; tests must not mutate it.
    return build_model(name, num_classes=10)


# --- closed-form parameter counts, derived from the papers' architecture descriptions ---


def cifar_resnet_params(depth, num_classes=10, in_channels=3):
    """He et al. 2016 CIFAR ResNet with option A (parameter-free) shortcuts."""
    n = (depth - 2) // 6
    total = 9 * in_channels * 16 + 2 * 16  # stem conv + BN
    c_in = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += 9 * c_in * width + 9 * width * width + 2 * (2 * width)
            c_in = width
    return total + 64 * num_classes + num_classes


def wrn_params(depth, widen, num_classes=10, in_channels=3):
    """Zagoruyko & Komodakis WRN-d-k: pre-activation blocks, 1x1 conv shortcut on width change."""
    n = (depth - 4) // 6
    total = 9 * in_channels * 16  # stem conv, no BN (the first block pre-activates)
    c_in = 16
    for width in (16 * widen, 32 * widen, 64 * widen):
        for _ in range(n):
            total += 2 * c_in + 9 * c_in * width + 2 * width + 9 * width * width
            if c_in != width:
                total += c_in * width
            c_in = width
    return total + 2 * c_in + c_in * num_classes + num_classes  # final BN + fc


def test_registry_has_exactly_the_documented_models():
    assert sorted(MODELS) == sorted(ALL_NAMES)


# He et al. 2016, Table 6 (millions). Option A counts, also reported by independent
# implementations; option B projections would add exactly 2,752 parameters.
CIFAR_RESNETS = {
    "resnet20": (20, 0.27e6, 269_722),
    "resnet32": (32, 0.46e6, 464_154),
    "resnet44": (44, 0.66e6, 658_586),
    "resnet56": (56, 0.85e6, 853_018),
    "resnet110": (110, 1.7e6, 1_727_962),
}


@pytest.mark.parametrize("name", sorted(CIFAR_RESNETS))
def test_cifar_resnet_parameter_counts(name):
    depth, paper, exact = CIFAR_RESNETS[name]
    count = n_params(cached(name))
    assert count == exact == cifar_resnet_params(depth)
    assert abs(count - paper) / paper < 0.02


def test_option_a_shortcut_is_parameter_free_and_pads_channels():
    model = cached("resnet20")
    block = model.stages[1][0]  # first block of stage 2: 16 -> 32 channels, stride 2
    assert n_params(block.shortcut) == 0
    x = torch.randn(2, 16, 8, 8)
    y = block.shortcut(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 16:]) == 0


# Zagoruyko & Komodakis 2016 (Tables 1/4): WRN-28-10 36.5M, WRN-40-2 2.2M; WRN-28-2 1.5M.
WIDE_RESNETS = {
    "wrn28_2": (28, 2, 1.47e6),
    "wrn28_10": (28, 10, 36.5e6),
    "wrn40_2": (40, 2, 2.2e6),
}


@pytest.mark.parametrize("name", sorted(WIDE_RESNETS))
def test_wide_resnet_parameter_counts(name):
    depth, widen, paper = WIDE_RESNETS[name]
    count = n_params(cached(name))
    assert count == wrn_params(depth, widen)
    assert abs(count - paper) / paper < 0.02


def test_wide_resnet_exact_counts():
    assert n_params(cached("wrn28_10")) == 36_479_194
    assert n_params(cached("wrn40_2")) == 2_243_546
    assert n_params(cached("wrn28_2")) == 1_467_610


def test_preactresnet18_parameter_count():
    assert n_params(cached("preactresnet18")) == 11_171_146


@pytest.mark.parametrize("name, arch", [("resnet18", torchvision.models.resnet18), ("resnet50", torchvision.models.resnet50)])
def test_torchvision_resnet_count_differs_only_by_stem(name, arch):
    reference = n_params(arch(weights=None, num_classes=10))
    stem_difference = 64 * 3 * 7 * 7 - 64 * 3 * 3 * 3  # 7x7 stem replaced by 3x3
    assert n_params(cached(name)) == reference - stem_difference


def test_torchvision_resnet_stem_is_adapted():
    model = cached("resnet18")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.padding == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 10


# Convolutions per model, counted from the architectures:
#   CIFAR ResNet-d: 1 stem + 2 per block = d - 1 (option A adds none).
#   WRN-d-k (k > 1): 1 stem + (d - 4) block convs + 3 shortcut convs.
#   PreActResNet-18 / ResNet-18: 1 + 16 + 3 shortcut convs.  ResNet-50: 1 + 48 + 4 downsample convs.
CONV_COUNTS = {
    "resnet20": 19, "resnet32": 31, "resnet44": 43, "resnet56": 55, "resnet110": 109,
    "wrn28_2": 28, "wrn28_10": 28, "wrn40_2": 40,
    "preactresnet18": 20, "resnet18": 20, "resnet50": 53, "small_cnn": 3,
}


# stage index . block index (n - 1) . last conv of the block
LAST_CONV = {
    "resnet20": "stages.2.2.conv2", "resnet32": "stages.2.4.conv2", "resnet44": "stages.2.6.conv2",
    "resnet56": "stages.2.8.conv2", "resnet110": "stages.2.17.conv2",
    "wrn28_2": "stages.2.3.conv2", "wrn28_10": "stages.2.3.conv2", "wrn40_2": "stages.2.5.conv2",
    "preactresnet18": "stages.3.1.conv2", "resnet18": "layer4.1.conv2", "resnet50": "layer4.2.conv3",
    "small_cnn": "stages.1.conv",
}


@pytest.mark.parametrize("name", ALL_NAMES)
def test_conv_layers_count_first_and_last(name):
    model = cached(name)
    layers = conv_layers(model)
    assert len(layers) == CONV_COUNTS[name]
    # Every Conv2d appears exactly once, with its qualified name.
    registered = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert {n for n, _ in layers} == set(registered)
    assert all(registered[n] is m for n, m in layers)
    # First layer sees the image; last layer is the last conv of the deepest block.
    first_name, first = layers[0]
    assert first.in_channels == 3
    assert first_name == ("conv1" if name in ("resnet18", "resnet50") else "stem.conv")
    assert layers[-1][0] == LAST_CONV[name]


def test_conv_layers_cifar_resnet_exact_order():
    expected = ["stem.conv"] + [
        f"stages.{s}.{b}.conv{i}" for s in range(3) for b in range(3) for i in (1, 2)
    ]
    assert [n for n, _ in conv_layers(cached("resnet20"))] == expected


def test_conv_layers_torchvision_resnet18_order():
    expected = ["conv1"]
    for layer in range(1, 5):
        for block in range(2):
            expected += [f"layer{layer}.{block}.conv1", f"layer{layer}.{block}.conv2"]
            if layer > 1 and block == 0:
                # BasicBlock.forward applies downsample(x) after conv2.
                expected.append(f"layer{layer}.{block}.downsample.0")
    assert [n for n, _ in conv_layers(cached("resnet18"))] == expected


def test_conv_layers_follow_execution_not_registration_order():
    # Pre-activation blocks register the shortcut last but call it before conv1.
    model = cached("preactresnet18")
    names = [n for n, _ in conv_layers(model)]
    registration = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    i = names.index("stages.1.0.shortcut")
    assert names[i : i + 3] == ["stages.1.0.shortcut", "stages.1.0.conv1", "stages.1.0.conv2"]
    assert names != registration


class _Shuffled(nn.Module):
    """Convs registered a, unused, b; called a, b, a (a is also reachable as a_again)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.unused = nn.Conv2d(4, 4, 1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.a_again = self.a

    def forward(self, x):
        x = self.b(self.bn(self.a(x)))
        return self.a_again(x[:, :2])


def test_conv_layers_on_plain_module_dedups_and_keeps_unused():
    # No input_size attribute: the dummy input gets the first conv's 2 channels at 32x32.
    layers = conv_layers(_Shuffled())
    assert [n for n, _ in layers] == ["a", "b", "unused"]


def test_conv_layers_restores_modes_and_removes_hooks():
    model = build_model("small_cnn", num_classes=3)
    model.train()
    model.stem.bn.eval()  # e.g. a frozen BN layer must stay frozen
    running_mean = model.stem.bn.running_mean.clone()
    conv_layers(model)
    assert model.training and model.stages[0].bn.training
    assert not model.stem.bn.training
    assert all(not m._forward_hooks for m in model.modules())
    # Dummy pass ran in eval mode, so BN statistics are untouched.
    assert torch.equal(model.stages[0].bn.running_mean, torch.zeros(32))
    assert torch.equal(model.stem.bn.running_mean, running_mean)


def test_conv_layers_uses_input_size_for_small_images():
    model = build_model("small_cnn", num_classes=10, in_channels=1)
    assert model.input_size == (1, 32, 32)
    model.input_size = (1, 8, 8)
    assert [n for n, _ in conv_layers(model)] == ["stem.conv", "stages.0.conv", "stages.1.conv"]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_output_shape_32x32_single_channel(name):
    # Odd class/channel counts catch hard-coded 10 classes or RGB input.
    model = build_model(name, num_classes=7, in_channels=1)
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 7)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", SMALL_INPUT_NAMES)
def test_output_shape_8x8_digits(name):
    model = build_model(name, num_classes=10, in_channels=1)
    with torch.no_grad():
        out = model(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10)


def test_models_have_stem_stages_head_layout():
    x = torch.randn(1, 3, 32, 32)
    for name in SMALL_INPUT_NAMES:
        model = cached(name)
        assert isinstance(model.stages, nn.Sequential), name
        model.eval()
        try:
            with torch.no_grad():
                assert torch.equal(model.head(model.stages(model.stem(x))), model(x)), name
        finally:
            model.train()


def test_small_cnn_is_small_and_learns_quickly():
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1)
    assert n_params(model) < 50_000
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_wide_resnet_is_extensible_with_dropout():
    from searchlab.models import wide_resnet

    model = wide_resnet(16, 4, num_classes=10, in_channels=3, dropout=0.3)
    assert n_params(model) == wrn_params(16, 4)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())
    assert not any(isinstance(m, nn.Dropout) for m in cached("wrn28_2").modules())


# --- build_model errors and weight loading ---


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError) as info:
        build_model("resnet19", num_classes=10)
    assert str(info.value) == "unknown model 'resnet19'; valid models: " + ", ".join(sorted(ALL_NAMES))


def test_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    source = build_model("resnet20", num_classes=10)
    source.train()
    with torch.no_grad():
        source(torch.randn(8, 3, 32, 32))  # move BN running stats away from their defaults
    path = tmp_path / "resnet20.pt"
    torch.save(source.state_dict(), path)

    loaded = build_model("resnet20", num_classes=10, weights=str(path))
    x = torch.randn(2, 3, 32, 32)
    source.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(source(x), loaded(x))


def test_weights_skip_mismatched_head_and_load_the_rest(tmp_path):
    source = build_model("wrn28_2", num_classes=100)
    path = tmp_path / "wrn.pt"
    torch.save(source.state_dict(), path)

    with pytest.warns(UserWarning, match=r"head\.fc\.bias.*head\.fc\.weight"):
        model = build_model("wrn28_2", num_classes=10, weights=str(path))
    assert model.head.fc.out_features == 10
    assert torch.equal(model.stem.conv.weight, source.stem.conv.weight)
    assert torch.equal(model.stages[2][3].conv2.weight, source.stages[2][3].conv2.weight)


def test_weights_from_imagenet_torchvision_checkpoint(tmp_path):
    # Same layout as a torchvision ImageNet checkpoint: 7x7 stem and 1000-way fc do not fit.
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(source.state_dict(), path)

    with pytest.warns(UserWarning) as record:
        model = build_model("resnet18", num_classes=10, weights=str(path))
    message = str(record[0].message)
    assert "['conv1.weight', 'fc.bias', 'fc.weight']" in message
    assert model.conv1.weight.shape == (64, 3, 3, 3)
    assert torch.equal(model.layer3[0].downsample[0].weight, source.layer3[0].downsample[0].weight)
    assert torch.equal(model.bn1.running_var, source.bn1.running_var)


def test_weights_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(ValueError) as info:
        build_model("small_cnn", num_classes=10, weights=str(path))
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_weights_unreadable_file(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        build_model("small_cnn", num_classes=10, weights=str(path))


def test_weights_with_no_matching_shapes(tmp_path):
    keys = build_model("small_cnn", num_classes=10).state_dict()
    path = tmp_path / "bad_shapes.pt"
    torch.save({k: torch.zeros(7, 7, 7) for k in keys}, path)
    with pytest.raises(ValueError, match="bad_shapes.pt"):
        build_model("small_cnn", num_classes=10, weights=str(path))


def test_weights_from_another_architecture_are_rejected(tmp_path):
    # Names must match (strict); only shape mismatches are tolerated.
    path = tmp_path / "resnet20.pt"
    torch.save(build_model("resnet20", num_classes=10).state_dict(), path)
    with pytest.raises(ValueError, match=r"missing keys \[stages\.0\.3\.bn1\.bias, .*more\)\]") as info:
        build_model("resnet32", num_classes=10, weights=str(path))
    assert len(str(info.value)) < 400


@pytest.mark.parametrize("name", ["resnet20", "preactresnet18", "wrn28_2", "resnet18", "small_cnn"])
def test_models_pickle_round_trip(name):
    # Ray ships models between processes by pickling them.
    import pickle

    model = cached(name)
    clone = pickle.loads(pickle.dumps(model))
    x = torch.randn(1, 3, 32, 32)
    model.eval()
    clone.eval()
    try:
        with torch.no_grad():
            assert torch.equal(model(x), clone(x))
    finally:
        model.train()
