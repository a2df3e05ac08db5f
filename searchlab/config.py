"""The trial config: a plain nested dict with these groups and defaults (DESIGN.md section 4).

A trial's config is merged over ``DEFAULTS``; an unknown group or key is an error that names the
valid ones, so a typo never silently trains the default. A top-level ``variant`` (a partial config)
is merged over the rest, so that one grid axis can set several groups at once, e.g. a CKA study's
runs, each with its own augmentation, seed and label.
"""
import copy

from searchlab.errors import UserError

DEFAULTS = {
    "data": {
        "dataset": "digits",    # digits | cifar10 | cifar100
        "val_size": 0.1,        # count or fraction of the training set, seeded split
        "train_size": None,     # optional subset sizes (count or fraction)
        "test_size": None,
        "split_seed": 0,        # the validation split stays fixed across trial seeds
        "root": None,           # default: $SEARCHLAB_DATA
    },
    "model": {
        "name": "small_cnn",
        "weights": None,        # path to a local state_dict (e.g. ImageNet weights)
    },
    "optim": {
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 5e-4,
        "batch_size": 128,
        "epochs": 10,
        "schedule": "cosine",   # cosine | step | constant
        "milestones": [0.5, 0.75],  # step schedule: fractions of the epochs (or epoch numbers)
        "gamma": 0.1,
        "warmup_epochs": 0,     # linear warmup from 0 to lr, per step
    },
    "augment": {
        # a preset name (augment.PRESETS) or a list of op specs {"op": NAME, "p": P, **PARAMS}
        "pipeline": [{"op": "flip", "p": 0.5}, {"op": "pad_crop", "padding": 4}],
        "mix": None,            # None or {"name": "mixup" | "cutmix" | "manifold_mixup", **PARAMS}
    },
    "cka": {                    # this trial's part in a CKA study (searchlab/analysis)
        "label": None,          # its name in the study, e.g. "none1", "cutout"; None: not in one
        "group": None,          # trials compared with each other share a group (e.g. the model)
        "references": ["none1", "none2"],  # labels of the group's two unaugmented runs
        "images": 2048,         # validation images the comparisons use
        "batch_size": 256,
    },
    "seed": 0,
    "device": "auto",           # auto | cpu | cuda
    "threads": None,            # torch intra-op threads; default: the trial's CPU count
}

SCHEDULES = ("cosine", "step", "constant")


def resolve(config):
    """Return DEFAULTS updated with ``config``; raise UserError on unknown keys or names."""
    from searchlab import augment, data, models

    config = dict(config or {})
    variant = config.pop("variant", None) or {}
    cfg = _merge(_merge(DEFAULTS, config, "config"), variant, "config")
    _one_of("data.dataset", cfg["data"]["dataset"], data.DATASETS)
    _one_of("model.name", cfg["model"]["name"], models.MODELS)
    _one_of("optim.schedule", cfg["optim"]["schedule"], SCHEDULES)
    _one_of("device", cfg["device"], ("auto", "cpu", "cuda"))
    augment.validate(cfg["augment"]["pipeline"], cfg["augment"]["mix"])
    return cfg


def _one_of(key, value, valid):
    if value not in valid:
        raise UserError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")


def _merge(defaults, given, where):
    unknown = set(given) - set(defaults)
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))} in {where}; "
                        f"valid: {', '.join(defaults)}")
    merged = copy.deepcopy(defaults)
    for key, value in given.items():
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"{where}.{key} must be a dict of {', '.join(defaults[key])}")
            merged[key] = _merge(defaults[key], value, key if where == "config" else f"{where}.{key}")
        else:
            merged[key] = copy.deepcopy(value)
    return merged
