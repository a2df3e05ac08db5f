"""Training augmentations: batched ops on uint8 images (N, C, H, W) on the training device.

Every op draws its random parameters per image from a ``torch.Generator``, so a batch of identical
images comes out different and a seeded run replays exactly. torchvision's v2 transforms draw one
parameter set per batch, which is why the ops are written here. This package knows nothing of Ray.

The ``augment`` group of a trial config:

    {"pipeline": [{"op": NAME, "p": PROBABILITY, **PARAMS}, ...] or a preset name,
     "mix": None or {"name": "mixup" | "cutmix" | "manifold_mixup", **PARAMS}}

Ops (``SPEC_OPS``): the stochastic ops (flip, pad_crop, cutout, random_resized_crop, color_jitter,
gaussian_noise), the policies (autoaugment, randaugment, trivialaugment, augmix, deepaa), and each
magnitude op of AutoAugment (ShearX, ..., Sharpness) at a fixed ``magnitude``.
"""
import inspect
from functools import partial

import torch

from searchlab.augment import mix as mixes
from searchlab.augment.ops import OPS
from searchlab.augment.policies import POLICIES
from searchlab.augment.stochastic import STOCHASTIC, uniform
from searchlab.errors import UserError


def fixed_magnitude(name, x, generator, magnitude=None):
    """A magnitude op at one magnitude for every image (e.g. Solarize at threshold 127)."""
    return OPS[name](x, torch.full((len(x),), float(magnitude or 0), device=x.device))


# name -> op(x, generator, **params)
SPEC_OPS = {**STOCHASTIC, **POLICIES, **{name: partial(fixed_magnitude, name) for name in OPS}}

STANDARD = [{"op": "flip", "p": 0.5}, {"op": "pad_crop", "padding": 4}]
# Named pipelines, e.g. the augmentations of the CKA study (DESIGN.md section 2, study 1).
PRESETS = {
    "none": [],
    "flip": [{"op": "flip", "p": 0.5}],
    "crop": [{"op": "pad_crop", "padding": 4}],
    "standard": STANDARD,
    "cutout": [*STANDARD, {"op": "cutout", "size": 16}],
    "brightness": [{"op": "color_jitter", "brightness": 0.5}],
    "hue": [{"op": "color_jitter", "hue": 0.15}],
    "solarize": [{"op": "Solarize", "magnitude": 127, "p": 0.5}],
    "gaussian_noise": [{"op": "gaussian_noise", "sigma": 0.2}],
    "autoaugment": [*STANDARD, {"op": "autoaugment", "policy": "cifar10"}],
    "autoaugment_cutout": [*STANDARD, {"op": "autoaugment", "policy": "cifar10"}, {"op": "cutout", "size": 16}],
    "randaugment": [*STANDARD, {"op": "randaugment", "n": 2, "m": 9}],
    "trivialaugment": [*STANDARD, {"op": "trivialaugment"}],
    "augmix": [*STANDARD, {"op": "augmix"}],
}


def _params(function):
    return [p for p in inspect.signature(function).parameters if p not in ("x", "generator")]


def pipeline_specs(pipeline):
    """A pipeline as a list of op specs (a preset name is looked up)."""
    if isinstance(pipeline, str):
        if pipeline not in PRESETS:
            raise UserError(f"unknown augment preset {pipeline!r}; valid presets: {', '.join(PRESETS)}")
        return PRESETS[pipeline]
    if not isinstance(pipeline, (list, tuple)):
        raise UserError(f"augment.pipeline must be a preset name or a list of op specs, got {pipeline!r}")
    return list(pipeline)


def validate(pipeline, mix=None):
    """Check a pipeline and mix; raise a one-line UserError naming what is valid."""
    specs = pipeline_specs(pipeline)
    for spec in specs:
        if not isinstance(spec, dict) or "op" not in spec:
            raise UserError(f"an op spec is a dict with an 'op' key, got {spec!r}")
        _check_params("op", spec["op"], spec, SPEC_OPS, {"op", "p"})
        if not 0 <= spec.get("p", 1.0) <= 1:
            raise UserError(f"op {spec['op']!r}: p must be in [0, 1], got {spec['p']!r}")
    if mix is not None:
        if not isinstance(mix, dict) or "name" not in mix:
            raise UserError(f"augment.mix is None or a dict with a 'name' key, got {mix!r}")
        _check_params("mix", mix["name"], mix, {k: f for k, (_, f) in mixes.MIXES.items()}, {"name"})
    # A dry run on two small images catches bad parameter values (a missing policy file, a
    # negative size) before any trial starts. Mixes inside a model are checked by the trial.
    mix = _input_mix(mix)
    try:
        Pipeline(specs, mix, num_classes=2)(torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
                                            torch.tensor([0, 1]), torch.Generator().manual_seed(0))
    except UserError:
        raise
    except Exception as e:
        with_mix = f" with mix {mix!r}" if mix else ""
        raise UserError(f"augmentation {specs!r}{with_mix} fails: {type(e).__name__}: {e}") from e
    return specs


def mix_defaults(name):
    """{parameter: default value} of mix ``name`` (e.g. mixup's alpha)."""
    params = inspect.signature(mixes.MIXES[name][1]).parameters
    return {k: p.default for k, p in params.items() if p.default is not p.empty}


def _input_mix(mix):
    """``mix`` if it acts on the input batch (mixup, cutmix), None if none or inside a model."""
    return mix if mix is not None and mixes.MIXES[mix["name"]][0] == "input" else None


def _check_params(kind, name, spec, table, reserved):
    if name not in table:
        plural = {"op": "ops", "mix": "mixes"}[kind]
        raise UserError(f"unknown {kind} {name!r}; valid {plural}: {', '.join(table)}")
    valid = [p for p in _params(table[name]) if p not in ("model", "y")]
    unknown = set(spec) - reserved - set(valid)
    if unknown:
        raise UserError(f"unknown parameter(s) {', '.join(sorted(unknown))} for {kind} {name!r}; "
                        f"valid: {', '.join([*sorted(reserved - {'op', 'name'}), *valid]) or '-'}")


class Pipeline:
    """The training augmentation of a trial.

    ``images(x, generator)`` applies the ops to uint8 images; ``mixer()`` says how the mix acts (a
    regime applies it: ``regimes.mixed_forward``). Calling it, ``pipeline(x, y, generator)``, does
    the parts that need no model, for use on its own: it returns images (float in 0..255 when a mix
    blended them) and labels (soft when mixed).
    """

    def __init__(self, pipeline, mix=None, num_classes=None):
        self.specs = pipeline_specs(pipeline)
        self.mix = dict(mix) if mix else None
        self.num_classes = num_classes

    def images(self, x, generator):
        # Exact on uint8 whatever the caller's precision: a training step runs under autocast
        # (speed.amp), which would round any float convolution or matmul of an op to bf16 or fp16.
        with torch.autocast(x.device.type, enabled=False):
            return self._images(x, generator)

    def _images(self, x, generator):
        for spec in self.specs:
            op = partial(SPEC_OPS[spec["op"]], **{k: v for k, v in spec.items() if k not in ("op", "p")})
            p = spec.get("p", 1.0)
            if p >= 1:
                x = op(x, generator)
            elif p > 0:
                chosen = uniform(len(x), generator, x.device) < p
                # Rows picked from [unchanged; changed] by one index_select: torch.where over
                # whole uint8 images costs about ten times more.
                rows = torch.arange(len(x), device=x.device) + len(x) * chosen
                x = torch.cat([x, op(x, generator)]).index_select(0, rows)
        return x

    def mixer(self):
        """(kind, function, params) of the mix: "input" mixes act on the batch, "model" mixes
        inside the forward pass."""
        kind, function = mixes.MIXES[self.mix["name"]]
        return kind, function, {k: v for k, v in self.mix.items() if k != "name"}

    def __call__(self, x, y, generator):
        x = self.images(x, generator)
        if self.mix is None:
            return x, y
        kind, function, params = self.mixer()
        if kind == "model":
            raise ValueError(f"{self.mix['name']} mixes inside a model: use regimes.mixed_forward")
        return function(x.float(), mixes.soft(y, self.num_classes), generator, **params)

    def __repr__(self):
        return f"Pipeline({self.specs!r}, mix={self.mix!r})"


def preview_grid(augment, x, y, generator, draws=8):
    """A uint8 image grid (3, H', W'): each row one image, first unchanged, then ``draws`` draws."""
    shown = Pipeline(augment.specs, _input_mix(augment.mix), augment.num_classes)
    rows = [x] + [shown(x, y, generator)[0] for _ in range(draws)]
    grid = torch.stack(rows, dim=1).float().clamp(0, 255).round().to(torch.uint8)  # [N, draws + 1, C, H, W]
    if grid.shape[2] == 1:
        grid = grid.expand(-1, -1, 3, -1, -1)
    return image_grid(grid)


def image_grid(images, padding=2):
    """[rows, columns, 3, H, W] uint8 -> (3, H', W'): torchvision's make_grid layout (``padding``
    white pixels around and between the images), without importing torchvision, which would add
    seconds to every trial's start."""
    rows, columns, _, h, w = images.shape
    cells = torch.nn.functional.pad(images, (padding, 0, padding, 0), value=255)  # white above and left
    grid = cells.permute(2, 0, 3, 1, 4).reshape(3, rows * (h + padding), columns * (w + padding))
    return torch.nn.functional.pad(grid, (0, padding, 0, padding), value=255)  # and the last border
