"""Training augmentations as batched ops on uint8 images (N, C, H, W) on the training device.

Each op draws its random parameters per image from a ``torch.Generator``, so a batch of identical
images comes out different and a seeded run replays exactly. torchvision's v2 transforms draw one
parameter set per batch, which is why these ops are written here. This module knows nothing of Ray.

A pipeline is an ordered list of op specs, ``{"op": name, "p": probability, **params}``.
"""
import inspect

import torch

from searchlab.errors import UserError


def _uniform(n, generator, device):
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def flip(x, generator):
    """Horizontal flip of every image (the pipeline's ``p`` makes it random per image)."""
    return x.flip(3)


def pad_crop(x, generator, padding=4):
    """Zero-pad by ``padding`` and crop back to the original size at a per-image random offset."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator,
                            device=generator.device).to(x.device)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indexing puts the indexed dims first: (N, H, W, C) -> back to (N, C, H, W).
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


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
                chosen = _uniform(len(x), generator, x.device) < p
                x = torch.where(chosen[:, None, None, None], OPS[spec["op"]](x, generator, **params), x)
        return x, y

    def __repr__(self):
        return f"Pipeline({self.specs!r})"


STANDARD = [{"op": "flip", "p": 0.5}, {"op": "pad_crop", "padding": 4}]
