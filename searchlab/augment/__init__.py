"""Training augmentations as batched ops on uint8 images (N, C, H, W) on the training device.

Each op draws its random parameters per image from a ``torch.Generator``, so a batch of identical
images comes out different and a seeded run replays exactly. torchvision's v2 transforms draw one
parameter set per batch, which is why these ops are written here. This module knows nothing of Ray.

A pipeline is an ordered list of op specs, ``{"op": name, "p": probability, **params}``.
"""
import inspect

import torch

from searchlab.augment.stochastic import flip, pad_crop, uniform
from searchlab.errors import UserError


# name -> op(x, generator, **params). The augmentation library grows here.
OPS = {
    "flip": flip,
    "pad_crop": pad_crop,
}


def _params(op):
    return [p for p in inspect.signature(OPS[op]).parameters if p not in ("x", "generator")]


def validate(specs):
    """Check a pipeline spec; raise a one-line UserError naming what is valid."""
    if not isinstance(specs, (list, tuple)):
        raise UserError(f"augment.pipeline must be a list of op specs, got {specs!r}")
    for spec in specs:
        if not isinstance(spec, dict) or "op" not in spec:
            raise UserError(f"an op spec is a dict with an 'op' key, got {spec!r}")
        if spec["op"] not in OPS:
            raise UserError(f"unknown op {spec['op']!r}; valid ops: {', '.join(OPS)}")
        unknown = set(spec) - {"op", "p", *_params(spec["op"])}
        if unknown:
            raise UserError(f"unknown parameter(s) {', '.join(sorted(unknown))} for op "
                            f"{spec['op']!r}; valid: p, {', '.join(_params(spec['op'])) or '-'}")
        if not 0 <= spec.get("p", 1.0) <= 1:
            raise UserError(f"op {spec['op']!r}: p must be in [0, 1], got {spec['p']!r}")
    return list(specs)


class Pipeline:
    """Callable on (images, labels) -> (images, labels); applies each op to a random subset."""

    def __init__(self, specs):
        self.specs = validate(specs)

    def __call__(self, x, y, generator):
        for spec in self.specs:
            params = {k: v for k, v in spec.items() if k not in ("op", "p")}
            p = spec.get("p", 1.0)
            if p >= 1:
                x = OPS[spec["op"]](x, generator, **params)
            elif p > 0:
                chosen = uniform(len(x), generator, x.device) < p
                x = torch.where(chosen[:, None, None, None], OPS[spec["op"]](x, generator, **params), x)
        return x, y

    def __repr__(self):
        return f"Pipeline({self.specs!r})"


STANDARD = [{"op": "flip", "p": 0.5}, {"op": "pad_crop", "padding": 4}]
