"""Split BatchNorm: a main and an auxiliary branch in every BatchNorm layer. No Ray.

Merchant et al. train every batch twice: a weak view through the main BatchNorm and a strong view
through an auxiliary one. ``convert`` turns every ``BatchNorm2d`` of a model into a
``SplitBatchNorm2d``; the main branch is the layer itself, so its state-dict keys stay those of the
plain model, and the aux branch is a child ``aux`` (keys ``<layer>.aux.*``).

The branch is set for the whole model, like AdvProp's ``MixBatchNorm2d`` status:

    main   every image through the main statistics (and affine parameters)
    aux    every image through the aux ones
    split  the first half of the batch main, the second half aux: one forward over both views

``with branch(model, "aux"): ...`` switches and restores the previous branch, also on error.
Evaluation interpolates the two branches' predictions with weight ``lambda`` on aux
(``interpolate``): lambda 0 is the main branch, 1 the aux branch.
"""
from contextlib import contextmanager
from itertools import chain

import torch
import torch.nn as nn
import torch.nn.functional as F

BRANCHES = ("main", "aux", "split")
INTERPOLATIONS = ("probs", "logits")


class SplitBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d (the main branch) with an auxiliary BatchNorm2d ``aux``.

    With ``shared_affine`` the aux branch keeps its own running statistics but normalises with the
    main branch's weight and bias (the paper's ablation): ``aux`` then has no affine parameters.
    """

    def __init__(self, bn, shared_affine=False):
        device = next(chain(bn.parameters(), bn.buffers()), torch.empty(0)).device
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                         device=device)
        self.load_state_dict(bn.state_dict())
        self.shared_affine = shared_affine
        self.aux = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine and not shared_affine,
                                  bn.track_running_stats, device=device)
        # Both branches start from the plain layer: its statistics (and its affine parameters, when
        # they are not shared), as timm's convert_splitbn_model does.
        self.aux.load_state_dict({k: v for k, v in bn.state_dict().items()
                                  if k in self.aux.state_dict()})
        self.branch = "main"

    def forward(self, x):
        if self.branch == "main":
            return super().forward(x)
        if self.branch == "aux":
            return self._aux(x)
        if len(x) % 2:
            raise ValueError(f"split BatchNorm needs an even batch (main half, aux half), got {len(x)}")
        main, aux = x.chunk(2)
        return torch.cat([super().forward(main), self._aux(aux)])

    def _aux(self, x):
        if not (self.shared_affine and self.affine):
            return self.aux(x)
        return self.aux(x) * self.weight[:, None, None] + self.bias[:, None, None]

    def extra_repr(self):
        return f"{super().extra_repr()}, shared_affine={self.shared_affine}"


def convert(model, shared_affine=False):
    """Replace every BatchNorm2d of ``model`` (in place) by a SplitBatchNorm2d; return the model."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(model, name, SplitBatchNorm2d(child, shared_affine))
        else:
            convert(child, shared_affine)
    return model


def split_layers(model):
    return [m for m in model.modules() if isinstance(m, SplitBatchNorm2d)]


def is_split(model):
    return bool(split_layers(model))


@contextmanager
def branch(model, name):
    """Run ``model`` with every split BatchNorm on branch ``name``; the previous branches come back
    afterwards, also on error. A model without split BatchNorm runs unchanged."""
    if name not in BRANCHES:
        raise ValueError(f"unknown split BatchNorm branch {name!r}; valid: {', '.join(BRANCHES)}")
    layers = split_layers(model)
    before = [layer.branch for layer in layers]
    try:
        for layer in layers:
            layer.branch = name
        yield model
    finally:
        for layer, previous in zip(layers, before):
            layer.branch = previous


def branch_state_dict(model, name="main"):
    """The state dict of a plain (unconverted) model that computes what branch ``name`` computes:
    the main branch is the converted model's own keys without ``aux``; the aux branch puts its
    statistics (and affine parameters, unless shared) under the main keys."""
    state = model.state_dict()
    plain = {k: v for k, v in state.items() if ".aux." not in k}
    if name == "aux":
        for layer_name, layer in model.named_modules():
            if isinstance(layer, SplitBatchNorm2d):
                prefix = f"{layer_name}." if layer_name else ""
                plain.update({prefix + k: v for k, v in layer.aux.state_dict().items()})
    elif name != "main":
        raise ValueError(f"a plain model computes one branch: main or aux, not {name!r}")
    return plain


def interpolate(main, aux, lam, space="probs"):
    """Predictions weighted ``lam`` on aux and ``1 - lam`` on main, as logits for cross-entropy.

    ``probs`` mixes the softmax probabilities and returns their logarithm; ``logits`` mixes the
    logits. Lambda 0 and 1 return the branch's own logits, so they equal the pure branches exactly.
    """
    if space not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {space!r}; valid: {', '.join(INTERPOLATIONS)}")
    if lam == 0:
        return main
    if lam == 1:
        return aux
    if space == "logits":
        return torch.lerp(main, aux, lam)
    return torch.lerp(F.softmax(main, 1), F.softmax(aux, 1), lam).log()


@contextmanager
def frozen_statistics(model):
    """BatchNorm in training mode normalises with batch statistics but leaves its running ones
    alone (momentum 0), e.g. while an attack probes the model."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    before = [m.momentum for m in layers]
    try:
        for m in layers:
            m.momentum = 0.0
        yield model
    finally:
        for m, momentum in zip(layers, before):
            m.momentum = momentum
