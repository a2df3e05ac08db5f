"""The trial config: a plain nested dict with these groups and defaults (DESIGN.md section 4).

A trial's config is merged over ``DEFAULTS``; an unknown group or key is an error that names the
valid ones, so a typo never silently trains the default, and a value whose default is a boolean or
a number must be one (a string "false" never becomes true). A top-level ``variant`` (a partial
config) is merged over the rest, so that one grid axis can set several groups at once, e.g. a CKA
study's runs, each with its own augmentation, seed and label.
"""
import copy
import numbers

import numpy as np

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
        "dropout": 0.0,         # between a block's convs, for the models that have it (wide ResNets)
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
    "regime": "standard",       # what a batch becomes and what the loss is: regimes.REGIMES
    "augmix_jsd": {             # regime augmix_jsd: AugMix views and the Jensen-Shannon loss
        "weight": 12.0,         # of the consistency term, as Hendrycks et al.
        "severity": 3, "width": 3, "depth": -1, "alpha": 1.0, "all_ops": False,  # the AugMix op's
    },
    "splitbn": {                # regime splitbn: split BatchNorm (Merchant et al.), DESIGN.md study 2
        "main": "standard",     # the weak view's pipeline (main BatchNorm): a preset or op specs
        "aux": "randaugment",   # the strong view's (aux BatchNorm): a preset, op specs, or "pgd"
        "split": True,          # False: both views through one BatchNorm (the paper's ablations)
        "shared_affine": False,  # True: one weight and bias, two sets of running statistics
        "aux_loss_weight": 0.5,  # loss = (1 - w) CE(main view) + w CE(aux view); 0.5 the mean
        "pgd": {"steps": 4, "epsilon": 4 / 255, "step_size": 1 / 255, "random_start": True},
        "lambdas": [0.0, 0.25, 0.5, 0.75, 1.0],  # weights on aux evaluated: metric@lam<L>
        "lambda": 0.0,          # this trial's own: its val_acc, test_acc, best epoch (0: main branch)
        "interpolate": "probs",  # probs | logits: what the two branches' predictions mix
    },
    "batch_augment": {          # regime batch_augment: every image several times per batch, each augmented anew
        "copies": 8,            # copies per image (8 in DeepAA's Table 3); the batch grows by this factor
    },
    "refine": {                 # refinement (He et al.), DESIGN.md study 3: the last phase, without intensive augmentation
        "epochs": 0,            # T2: epochs appended after the optim.epochs (T1) ...
        "start_epoch": None,    # ... or the epoch it starts at within optim.epochs (a fixed budget)
        "pipeline": "standard",  # its augmentation (a preset or op specs); "none": no augmentation at all
        "lr": "final",          # "final": the schedule's last rate (a step schedule's last stage) | a number
        "gradual": False,       # True: the intensity decays linearly to 0 over the refinement epochs instead
    },
    # Later phases of training: each {"start_epoch": E, "augment": {...}, "regime": NAME} takes over
    # once E epochs have been trained (train.phase_at); what it leaves out stays as before.
    "phases": [],
    "eval": {
        "every_epoch": ["clean"],   # evaluations after every epoch (evals.EVALS)
        "at_end": [],           # evaluations after the last epoch, of each model in at_end_models ...
        "at_end_models": ["best"],  # ... best (the epoch select picked): <metric>_at_best | last: <metric>_at_last
        "select": "val_acc",    # the every-epoch metric that picks the best epoch ...
        "mode": "max",          # ... and whether higher (max) or lower (min) is better
    },
    "corruptions": {            # eval corruptions: CIFAR-10-C-style data in $SEARCHLAB_DATA/<dataset>-c/
        "images": None,         # per severity (the first ones); None: all of them (10,000)
        "batch_size": 1000,
    },
    "fourier": {                # eval fourier: Yin et al.'s Fourier heatmap
        "images": 1000,         # test images (the first ones)
        "eps": 8.0,             # L2 norm of the perturbation on [0, 1] pixels, per channel
        "batch_size": 1000,
        "seed": 0,              # of the random signs
    },
    "lowpass": {                # eval lowpass: accuracy under low-pass filters of width 1..size
        "images": 500,          # test images (the first ones)
    },
    "train_clean": {            # eval train_clean: loss and accuracy on training images, unaugmented, eval mode
        "images": 5000,         # the first ones of the training split (fixed by data.split_seed)
    },
    "spectrum": {               # eval spectrum: singular values of the penultimate features' covariance
        "images": 5000,         # the first training images (unaugmented), all classes ...
        "class": 0,             # ... and of them the ones of this class: spectrum_all, spectrum_class<C>
    },
    "cka": {                    # this trial's part in a CKA study (searchlab/analysis)
        "label": None,          # its name in the study, e.g. "none1", "cutout"; None: not in one
        "augmentation": None,   # the row and curve it belongs to; runs sharing it are seeds; None: the label
        "group": None,          # trials compared with each other share a group (e.g. the model)
        "references": ["none1", "none2"],  # labels of the group's unaugmented runs, two or more
        "images": 2048,         # validation images the comparisons use
        "batch_size": 256,
    },
    # A searcher's raw suggestions that the config uses elsewhere, e.g. a RandAugment magnitude that
    # a define-by-run space puts into an op spec: any keys, kept for the record, read by nothing.
    "search": {},
    "label": None,              # the run's name in a study's tables and figures; seeds of a label pool
    "seed": 0,
    "device": "auto",           # auto | cpu | cuda
    "threads": None,            # torch intra-op threads; default: the trial's CPU count
    "speed": {                  # GPU efficiency options; results change only within float tolerance
        "amp": "none",          # none | bf16 | fp16: autocast of training and evaluation forward passes
                                # (fp16 with a GradScaler); augmentation stays uint8, spectrum and CKA float
        "channels_last": False,  # the model's weights in channels-last memory format (batches always are)
        "compile": False,       # torch.compile the model (in place: checkpoints keep the plain module's keys)
        "compile_backend": "inductor",  # torch.compile's backend, e.g. aot_eager to check a model quickly
        "non_blocking": False,  # host-to-GPU copies from pinned memory without waiting (per-chunk evaluation data)
    },
}

PHASE_KEYS = ("start_epoch", "augment", "regime")


def resolve(config):
    """Return DEFAULTS updated with ``config``; raise UserError on unknown keys or names."""
    from searchlab import augment, data, models, regimes
    from searchlab.evals import EVALS, metric_names
    from searchlab.train import AMP, SCHEDULES, phases

    config = dict(config or {})
    variant = config.pop("variant", None) or {}
    cfg = _merge(_merge(DEFAULTS, config, "config"), variant, "config")
    _check_types(DEFAULTS, cfg)
    _one_of("data.dataset", cfg["data"]["dataset"], data.DATASETS)
    _one_of("model.name", cfg["model"]["name"], models.MODELS)
    _one_of("optim.schedule", cfg["optim"]["schedule"], SCHEDULES)
    _one_of("device", cfg["device"], ("auto", "cpu", "cuda"))
    _speed(cfg["speed"], AMP)
    if cfg["model"]["dropout"] and cfg["model"]["name"] not in models.DROPOUT_MODELS:
        raise UserError(f"model {cfg['model']['name']!r} has no dropout; models with model.dropout: "
                        f"{', '.join(models.DROPOUT_MODELS)}")
    cfg["phases"] = _phases(cfg["phases"], cfg["optim"]["epochs"])
    _refine(cfg["refine"], cfg["optim"])
    classes = data.DATASETS[cfg["data"]["dataset"]]
    if cfg["spectrum"]["class"] not in range(classes):
        raise UserError(f"spectrum.class must be a class of {cfg['data']['dataset']}: 0..{classes - 1}, "
                        f"got {cfg['spectrum']['class']!r}")
    for phase in phases(cfg):
        augment.validate(phase.pipeline, phase.mix)
        regimes.check(phase.regime, cfg.get(phase.regime, {}), phase.pipeline, phase.mix)
    references = cfg["cka"]["references"]
    if not isinstance(references, (list, tuple)) or len(references) < 2 or len(set(references)) < len(references):
        raise UserError(f"cka.references must be a list of two or more distinct labels, got {references!r}")
    ev = cfg["eval"]
    for key in ("every_epoch", "at_end"):
        if not isinstance(ev[key], (list, tuple)):
            raise UserError(f"eval.{key} must be a list of evaluation names, got {ev[key]!r}")
        for name in ev[key]:
            _one_of(f"eval.{key} entry", name, EVALS)
    if not isinstance(ev["at_end_models"], (list, tuple)) or not set(ev["at_end_models"]) <= {"best", "last"}:
        raise UserError(f"eval.at_end_models must be a list of best, last; got {ev['at_end_models']!r}")
    _one_of("eval.select", ev["select"], metric_names(ev["every_epoch"], cfg))
    _one_of("eval.mode", ev["mode"], ("max", "min"))
    return cfg


def merge(defaults, config, where="config"):
    """``defaults`` updated with ``config`` and checked as ``resolve`` checks the trial config: an
    unknown key names the valid ones, a bool or number default takes only a bool or number. For
    the config groups of other trials (deepaa_trials.DEFAULTS)."""
    merged = _merge(defaults, dict(config or {}), where)
    _check_types(defaults, merged)
    return merged


def _phases(phases, epochs):
    """Check the phases and return them in order of their start."""
    if not isinstance(phases, (list, tuple)):
        raise UserError(f"phases must be a list of {{{', '.join(PHASE_KEYS)}}} dicts, got {phases!r}")
    for i, phase in enumerate(phases):
        if not isinstance(phase, dict) or not set(phase) <= set(PHASE_KEYS) or "start_epoch" not in phase:
            raise UserError(f"phases[{i}] must be a dict with start_epoch and any of augment, regime; "
                            f"got {phase!r}")
        unknown = set(phase.get("augment", {})) - set(DEFAULTS["augment"])
        if unknown:
            raise UserError(f"unknown key(s) {', '.join(sorted(unknown))} in phases[{i}].augment; "
                            f"valid: {', '.join(DEFAULTS['augment'])}")
        start = phase["start_epoch"]
        if not isinstance(start, numbers.Integral) or isinstance(start, bool) or not 0 <= start <= epochs:
            raise UserError(f"phases[{i}].start_epoch must be a whole number of epochs in 0..{epochs}, "
                            f"got {start!r}")
    return sorted((dict(p) for p in phases), key=lambda p: p["start_epoch"])


def _speed(speed, amp):
    _one_of("speed.amp", speed["amp"], amp)
    if speed["compile"]:  # dynamo is imported only then: it takes seconds
        import torch

        _one_of("speed.compile_backend", speed["compile_backend"], torch.compiler.list_backends(exclude_tags=()))


def _refine(refine, optim):
    """Check the refine group against the training length and schedule."""
    epochs, start, lr = refine["epochs"], refine["start_epoch"], refine["lr"]
    if not isinstance(epochs, numbers.Integral) or epochs < 0:
        raise UserError(f"refine.epochs must be a whole number of epochs >= 0, got {epochs!r}")
    if start is not None:
        if not isinstance(start, numbers.Integral) or isinstance(start, bool) or not 0 <= start <= optim["epochs"]:
            raise UserError(f"refine.start_epoch must be None or a whole number of epochs in "
                            f"0..{optim['epochs']} (optim.epochs), got {start!r}")
        if epochs:
            raise UserError(f"give refine.epochs ({epochs}, appended after optim.epochs) or "
                            f"refine.start_epoch ({start}, within optim.epochs), not both")
    if lr != "final" and (not isinstance(lr, numbers.Real) or isinstance(lr, bool) or lr < 0):
        raise UserError(f"refine.lr must be 'final' or a learning rate >= 0, got {lr!r}")
    if lr == "final" and optim["schedule"] == "cosine" and (epochs or start is not None):
        raise UserError("refine.lr 'final' with optim.schedule cosine would refine at learning rate 0 "
                        "(the cosine's end); give refine.lr a number, e.g. 0.001")
    if refine["gradual"] and not (epochs or start is not None):
        raise UserError("refine.gradual needs refinement epochs: set refine.epochs or refine.start_epoch")


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
        name = key if where == "config" else f"{where}.{key}"
        if key == "search" and where == "config":
            if not isinstance(value, dict):
                raise UserError(f"search must be a dict of a searcher's raw suggestions, got {value!r}")
            merged[key] = copy.deepcopy(value)
        elif isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"{name} must be a dict of {', '.join(defaults[key])}")
            merged[key] = _merge(defaults[key], value, name)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _check_types(defaults, cfg, where=""):
    """Where a default is a boolean the value must be one, and likewise for numbers (numpy's
    count), so that a string "false" or "0.1" never passes for one."""
    for key, default in defaults.items():
        value, name = cfg[key], f"{where}{key}"
        if isinstance(default, dict):
            _check_types(default, value, f"{name}.")
        elif isinstance(default, bool):
            if not isinstance(value, (bool, np.bool_)):
                raise UserError(f"{name} must be true or false (a bool), got {value!r}")
        elif isinstance(default, numbers.Real):
            if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
                raise UserError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
