"""Image classification models for augmentation experiments.

Every model maps (N, C, H, W) float images to (N, num_classes) logits.
The models written here share one layout so that feature-level methods
(e.g. manifold mixup) can later walk them uniformly:

    stem   -> first convolution(s) at full resolution
    stages -> nn.Sequential of stages, each an nn.Sequential of blocks
    head   -> (final norm/activation), global average pool, flatten, linear

The torchvision ResNets keep torchvision's own attribute names
(conv1/bn1/relu/maxpool, layer1..layer4, avgpool/fc) so that torchvision
state dicts load into them by name.
"""

from __future__ import annotations

import inspect
import warnings
from collections import OrderedDict
from functools import partial
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def _init_weights(model: nn.Module) -> None:
    # He et al. initialisation for convs; BN starts as identity.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def _pool_head(in_features: int, num_classes: int, pre: OrderedDict | None = None) -> nn.Sequential:
    # Adaptive pooling keeps the head valid for any input size (8x8 digits, 32x32 CIFAR).
    layers = OrderedDict(pre or {})
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(in_features, num_classes)
    return nn.Sequential(layers)


def _conv_stem(in_channels: int, out_ch: int, norm: bool = True) -> nn.Sequential:
    layers = OrderedDict(conv=_conv3x3(in_channels, out_ch))
    if norm:
        layers["bn"] = nn.BatchNorm2d(out_ch)
        layers["relu"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


class _StemStagesHead(nn.Module):
    """Common forward for the models defined in this file."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


# --- CIFAR ResNets (He et al. 2016, Sec. 4.2) --------------------------------


class PadShortcut(nn.Module):
    """Option A shortcut: stride-2 subsampling plus zero-padded channels.

    Parameter-free, which is why the paper's CIFAR parameter counts hold.
    A class (not a lambda) so that models stay picklable.
    """

    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra_channels = extra_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class BasicBlock(nn.Module):
    """Post-activation basic block: conv-bn-relu-conv-bn, add, relu."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        if stride != 1 or in_ch != out_ch:
            self.shortcut = PadShortcut(out_ch - in_ch, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(_StemStagesHead):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths = (16, 32, 64)
        self.stem = _conv_stem(in_channels, widths[0])
        stages, in_ch = [], widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_ch, width, stride))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = _pool_head(in_ch, num_classes)
        _init_weights(self)


def cifar_resnet(depth: int, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(depth, num_classes, in_channels)


# --- PreActResNet-18 (He et al. 2016b; CIFAR variant as in mixup code) -------


class PreActBlock(nn.Module):
    """bn-relu-conv x2; a 1x1 conv shortcut (no BN) when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.shortcut = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # The projection sees the pre-activated input, as in the reference code.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(_StemStagesHead):
    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        widths = (64, 128, 256, 512)
        # Reference code: bare 3x3 conv stem and no final BN/ReLU before pooling.
        self.stem = _conv_stem(in_channels, widths[0], norm=False)
        stages, in_ch = [], widths[0]
        for i, (width, n) in enumerate(zip(widths, num_blocks)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(PreActBlock(in_ch, width, stride))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = _pool_head(in_ch, num_classes)
        _init_weights(self)


def preact_resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels)


# --- Wide ResNets (Zagoruyko & Komodakis 2016) --------------------------------


class WideBlock(nn.Module):
    """Pre-activation basic block with optional dropout between the convs."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.shortcut = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(_StemStagesHead):
    def __init__(
        self,
        depth: int,
        widen: int,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
    ):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.stem = _conv_stem(in_channels, 16, norm=False)
        stages, in_ch = [], 16
        for i, width in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(WideBlock(in_ch, width, stride, dropout))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        # Pre-activation nets need a final BN/ReLU before pooling.
        pre = OrderedDict(bn=nn.BatchNorm2d(in_ch), relu=nn.ReLU(inplace=True))
        self.head = _pool_head(in_ch, num_classes, pre)
        _init_weights(self)


def wide_resnet(
    depth: int, widen: int, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0
) -> nn.Module:
    return WideResNet(depth, widen, num_classes, in_channels, dropout)


# --- torchvision ResNets adapted to 32x32 inputs ------------------------------


def _torchvision_cifar(arch: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    # Imported here: torchvision takes seconds to import, which every trial worker would pay.
    import torchvision

    # num_classes sizes the fc head; only the stem needs changing.
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    # A 7x7/2 stem plus max-pool would shrink 32x32 inputs to 8x8 immediately.
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


# --- small CNN for quick starts ------------------------------------------------


class SmallCNN(_StemStagesHead):
    """Three conv-BN-ReLU layers; trains in seconds on CPU (8x8 digits or 32x32)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = _conv_stem(in_channels, 16)

        def conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                OrderedDict(
                    conv=_conv3x3(in_ch, out_ch, stride),
                    bn=nn.BatchNorm2d(out_ch),
                    relu=nn.ReLU(inplace=True),
                )
            )

        self.stages = nn.Sequential(conv_bn_relu(16, 32, 2), conv_bn_relu(32, 32, 1))
        self.head = _pool_head(32, num_classes)
        _init_weights(self)


# --- registry ------------------------------------------------------------------

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": partial(cifar_resnet, 20),
    "resnet32": partial(cifar_resnet, 32),
    "resnet44": partial(cifar_resnet, 44),
    "resnet56": partial(cifar_resnet, 56),
    "resnet110": partial(cifar_resnet, 110),
    "preactresnet18": preact_resnet18,
    "wrn28_2": partial(wide_resnet, 28, 2),
    "wrn28_10": partial(wide_resnet, 28, 10),
    "wrn40_2": partial(wide_resnet, 40, 2),
    "resnet18": partial(_torchvision_cifar, "resnet18"),
    "resnet50": partial(_torchvision_cifar, "resnet50"),
    "small_cnn": SmallCNN,
}


# The models that take a dropout rate (model.dropout), read off their signatures.
DROPOUT_MODELS = tuple(name for name, make in MODELS.items() if "dropout" in inspect.signature(make).parameters)


def build_model(name: str, num_classes: int, in_channels: int = 3, weights: str | None = None,
                dropout: float = 0.0) -> nn.Module:
    """Construct a registered model, optionally loading a local state dict."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}")
    if dropout and name not in DROPOUT_MODELS:
        raise ValueError(f"model {name!r} has no dropout; models with dropout: {', '.join(DROPOUT_MODELS)}")
    model = MODELS[name](num_classes, in_channels, **({"dropout": dropout} if dropout else {}))
    # Default dummy-input shape for conv_layers(); callers may overwrite it.
    model.input_size = (in_channels, 32, 32)
    if weights is not None:
        _load_weights(model, weights)
    return model


def _preview(keys: list[str], limit: int = 5) -> str:
    # Keeps error messages short when a whole architecture mismatches.
    shown = ", ".join(keys[:limit])
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"[{shown}{more}]"


def _load_weights(model: nn.Module, path: str) -> None:
    """Strict by name; tensors whose shape differs (e.g. a new head) are skipped."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # missing file, corrupt file, pickled non-tensor objects...
        reason = " ".join(str(exc).split())
        raise ValueError(f"cannot read weights file {str(path)!r}: {type(exc).__name__}: {reason}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {str(path)!r} does not contain a state dict of tensors")

    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    # Checkpoints older than PyTorch 0.4.1 lack BN counters; BatchNorm fills those in itself.
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    if unexpected or missing:
        raise ValueError(
            f"weights file {str(path)!r} does not match the model: "
            f"missing keys {_preview(missing)}, unexpected keys {_preview(unexpected)}"
        )
    skipped = sorted(k for k in state if state[k].shape != own[k].shape)
    matched = {k: v for k, v in state.items() if k not in skipped}
    if not matched:
        raise ValueError(f"no tensor in weights file {str(path)!r} matches the model's shapes")
    model.load_state_dict(matched, strict=False)
    if skipped:
        warnings.warn(f"skipped weights with mismatched shapes (left at initialisation): {skipped}", stacklevel=3)


def forward_with_hooks(model: nn.Module, x: torch.Tensor, hooks: list[tuple[nn.Module, Callable]]) -> None:
    """One forward pass in eval mode without autograd, with forward ``hooks`` (module, fn) in place.

    The hooks are removed and every module's own training mode restored afterwards, also on error
    (some modules may be deliberately in eval, e.g. frozen BN). What the hooks measure (CKA's grams,
    the spectrum's features) comes from the plain model: autocast is off, so it stays in the
    model's own precision under a trial's ``speed.amp``, and a compiled model (``speed.compile``)
    runs eagerly, where hooks see each layer as written and cost no recompilation.
    """
    modes = {m: m.training for m in model.modules()}
    handles = [module.register_forward_hook(fn) for module, fn in hooks]
    try:
        model.eval()
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False), torch.compiler.set_stance("force_eager"):
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """All Conv2d modules with qualified names, in the order a forward pass first calls them.

    Registration order is not always execution order (torchvision registers
    ``downsample`` after ``conv2``), so one dummy forward pass is traced.
    Convs that the forward pass never calls are appended in registration order.
    """
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return []
    names = {id(m): name for name, m in convs}

    input_size = getattr(model, "input_size", None)
    if input_size is None:
        input_size = (convs[0][1].in_channels, 32, 32)
    param = next(model.parameters())
    dummy = torch.zeros(1, *input_size, dtype=param.dtype, device=param.device)

    order: list[tuple[str, nn.Conv2d]] = []
    seen: set[int] = set()

    def record(module: nn.Module, args, output) -> None:
        if id(module) not in seen:
            seen.add(id(module))
            order.append((names[id(module)], module))

    forward_with_hooks(model, dummy, [(m, record) for _, m in convs])
    order.extend((name, m) for name, m in convs if id(m) not in seen)
    return order


def penultimate_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The penultimate features of a batch (the input of the model's last Linear layer), in eval
    mode without autograd; the model's modes are left as they were."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no Linear layer to take penultimate features from")
    found = []
    forward_with_hooks(model, x, [(linears[-1], lambda module, args, out: found.append(args[0].flatten(1)))])
    return found[0]


def mix_points(model: nn.Module) -> list[nn.Module]:
    """The modules after which manifold mixup may mix hidden states, in depth order.

    The outputs of the stages (groups of blocks at one resolution), as Verma et al. (2019) mix after
    residual stages; the input itself is layer 0 and needs no module.
    """
    if isinstance(model, _StemStagesHead):
        return list(model.stages)
    import torchvision  # already imported if the model is one of torchvision's (see _torchvision_cifar)

    if isinstance(model, torchvision.models.ResNet):
        return [model.layer1, model.layer2, model.layer3, model.layer4]
    raise ValueError(f"{type(model).__name__} has no mix points for manifold mixup")
