"""The Tune trainable: one trial, top to bottom.

set up -> resume -> epoch loop (train, evaluate, keep the best-validation state, report with a
checkpoint). Regimes (augmentations now; split BatchNorm, refinement later) change what a batch
becomes and what the loss is; they plug in at the marked places, not by subclassing.
"""
import copy
import glob
import json
import os
import random
import tempfile
import time

import numpy as np
import torch
from ray import tune

from searchlab.augment import Pipeline
from searchlab.config import resolve
from searchlab.data import load_dataset
from searchlab.models import build_model
from searchlab.train import evaluate, lr_at, make_optimizer, train_epoch
from searchlab.version import code_version

STATE_FILE = "state.pt"


def train(config, experiment_dir=None):
    cfg = resolve(config)
    optim = cfg["optim"]

    # ---- set up ---------------------------------------------------------------------------
    device = pick_device(cfg["device"])
    torch.set_num_threads(cfg["threads"] or trial_cpus())
    seed_everything(cfg["seed"])
    d = cfg["data"]
    data = load_dataset(d["dataset"], val_size=d["val_size"], train_size=d["train_size"],
                        test_size=d["test_size"], split_seed=d["split_seed"], root=d["root"]).to(device)
    model = build_model(cfg["model"]["name"], data.num_classes, in_channels=data.train.x.shape[1],
                        weights=cfg["model"]["weights"]).to(device)
    optimizer = make_optimizer(model, optim)
    # Regime hook: what a training batch becomes, and how the model sees it.
    augment = Pipeline(cfg["augment"]["pipeline"], cfg["augment"]["mix"], data.num_classes)
    record_trial(cfg)

    # ---- resume ---------------------------------------------------------------------------
    best = {"epoch": 0, "val_acc": -1.0, "test_acc": 0.0, "model": copy.deepcopy(model.state_dict())}
    history = []  # every epoch's metrics, kept in the checkpoint
    trial_dir = storage_trial_dir(experiment_dir)
    state = latest_state(tune.get_checkpoint(), trial_dir)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        best, history = state["best"], state["history"]
        # An epoch whose checkpoint was saved but whose report never reached the results (the
        # driver stopped in between) is reported now, so that its curves have no hole.
        logged = logged_epochs(trial_dir)
        for metrics in history:
            if metrics["epoch"] not in logged:
                tune.report(metrics)
    else:
        log_augment_preview(augment, data, cfg["seed"])

    # ---- epoch loop -----------------------------------------------------------------------
    for epoch in range(len(history), optim["epochs"]):
        began = time.perf_counter()
        # One generator per (seed, epoch): shuffling and augmentation replay exactly on resume.
        generator = torch.Generator(device).manual_seed(cfg["seed"] * 100_003 + epoch)
        train_loss, train_acc = train_epoch(model, data, optimizer, optim, epoch, augment, generator)
        val_loss, val_acc = evaluate(model, data.val, data.mean, data.std)
        test_loss, test_acc = evaluate(model, data.test, data.mean, data.std)
        if val_acc > best["val_acc"]:
            best = {"epoch": epoch + 1, "val_acc": val_acc, "test_acc": test_acc,
                    "model": copy.deepcopy(model.state_dict())}
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": lr_at(optim, epoch + 1),
            "epoch_time": time.perf_counter() - began,
            "best_epoch": best["epoch"],
            "best_val_acc": best["val_acc"],
            "test_acc_at_best": best["test_acc"],
        }
        history.append(metrics)
        with tempfile.TemporaryDirectory() as folder:
            torch.save({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "best": best, "history": history, "config": cfg},
                       os.path.join(folder, STATE_FILE))
            # The same config and metrics in plain JSON, for analysis that should not unpickle.
            with open(os.path.join(folder, "trial.json"), "w") as f:
                json.dump({"config": cfg, "metrics": metrics}, f, indent=1)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def storage_trial_dir(experiment_dir):
    """This trial's folder on the experiment storage (Tune's trial dir is a local staging copy)."""
    if not experiment_dir:
        return None
    found = glob.glob(os.path.join(experiment_dir, f"*_{tune.get_context().get_trial_id()}_*"))
    return found[0] if found else None


def latest_state(checkpoint, trial_dir):
    """The newest loadable training state of this trial, or None for a fresh start.

    Tune hands back the checkpoint named in its last experiment snapshot, which can be older than
    the newest one on storage when the driver was killed; so the trial's own checkpoint folders are
    searched as well. Checkpoints that exist but cannot be loaded are an error, never a silent
    fresh start; a newest one cut short by a kill is skipped for the one before it.
    """
    paths = glob.glob(os.path.join(trial_dir, "checkpoint_*", STATE_FILE)) if trial_dir else []
    if checkpoint is None:
        return _newest(paths)
    with checkpoint.as_directory() as folder:
        return _newest(paths + [os.path.join(folder, STATE_FILE)])


def _newest(paths):
    states, errors = [], []
    for path in set(paths):
        try:
            states.append(torch.load(path, map_location="cpu", weights_only=False))
        except Exception as e:
            errors.append(f"{path}: {type(e).__name__}: {e}")
    if errors and not states:
        raise RuntimeError(f"cannot resume: every checkpoint is unreadable ({'; '.join(errors)})")
    return max(states, key=lambda s: s["epoch"], default=None)


def logged_epochs(trial_dir):
    """Epochs already in the trial's result.json on storage."""
    path = os.path.join(trial_dir or "", "result.json")
    if not os.path.isfile(path):
        return set()
    epochs = set()
    with open(path) as f:
        for line in f:
            try:
                epochs.add(json.loads(line).get("epoch"))
            except json.JSONDecodeError:  # a last line cut short by a kill
                pass
    return epochs


def pick_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def trial_cpus():
    """CPUs Tune reserved for this trial (torch would otherwise use every core of the node)."""
    try:
        bundles = tune.get_context().get_trial_resources().bundles
        return max(1, int(sum(b.get("CPU", 0) for b in bundles)))
    except Exception:  # called outside a Tune session, e.g. from a test
        return max(1, torch.get_num_threads())


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def log_augment_preview(augment, data, seed):
    """A grid of augmented training images in the trial's TensorBoard events, at its start."""
    from torch.utils.tensorboard import SummaryWriter

    from searchlab.augment import preview_grid

    folder = tune.get_context().get_trial_dir()
    if folder:
        generator = torch.Generator(data.train.x.device).manual_seed(seed)
        grid = preview_grid(augment, data.train.x[:8], data.train.y[:8], generator)
        with SummaryWriter(folder) as writer:
            writer.add_image("augment/preview", grid, 0)


def record_trial(cfg):
    """Write the resolved config, seed and code version into the trial directory."""
    folder = tune.get_context().get_trial_dir()
    if folder:
        with open(os.path.join(folder, "searchlab_trial.json"), "w") as f:
            json.dump({"config": cfg, "seed": cfg["seed"], "code_version": code_version()}, f,
                      indent=2, default=str)
