"""The Tune trainable: one trial, top to bottom.

set up -> resume -> epoch loop (phase, train, evaluate, keep the best state, report with a
checkpoint). The epoch's augmentation and regime come from ``train.phase_at`` and
``regimes.REGIMES``, what is measured from the ``eval`` group and ``evals.EVALS``, and what goes to
disk from ``checkpoint``: a new study plugs in there, not into this loop.
"""
import copy
import json
import os
import random
import tempfile
import time
from functools import partial

import numpy as np
import torch
from ray import tune

from searchlab import checkpoint
from searchlab.augment import Pipeline
from searchlab.config import resolve
from searchlab.data import load_dataset
from searchlab.evals import at_best, at_end, metric_names, numbers_and_arrays, run_evals, trends
from searchlab.models import build_model
from searchlab.train import (learning_rate, make_optimizer, make_scaler, phase_at, prepare_model, regime_of,
                             total_epochs, train_epoch)
from searchlab.version import code_version


def train(config):
    cfg = resolve(config)
    optim, ev = cfg["optim"], cfg["eval"]

    # ---- set up ---------------------------------------------------------------------------
    device = pick_device(cfg["device"])
    torch.set_num_threads(cfg["threads"] or trial_cpus())
    seed_everything(cfg["seed"])
    d = cfg["data"]
    data = load_dataset(d["dataset"], val_size=d["val_size"], train_size=d["train_size"],
                        test_size=d["test_size"], split_seed=d["split_seed"], root=d["root"]).to(device)
    model = build_model(cfg["model"]["name"], data.num_classes, in_channels=data.train.x.shape[1],
                        weights=cfg["model"]["weights"], dropout=cfg["model"]["dropout"])
    model = prepare_model(model, cfg).to(device)
    optimizer = make_optimizer(model, optim)
    scaler = make_scaler(cfg["speed"]["amp"], data.train.x.device.type)
    schedule = partial(learning_rate, cfg)
    record_trial(cfg, total_epochs(cfg))

    # ---- resume ---------------------------------------------------------------------------
    best = {"epoch": 0, "model": copy.deepcopy(model.state_dict())}  # and the metrics of that epoch
    history = []  # every epoch's metrics, kept in the checkpoint
    state, unlogged = latest_state()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):  # fp16's loss scale ({} for other precisions)
            scaler.load_state_dict(state["scaler"])
        best, history = state["best"], state["history"]
        # An epoch whose checkpoint was saved but whose report never reached the results (the
        # driver stopped in between) is reported now, so that its curves have no hole.
        for metrics in history:
            if metrics["epoch"] in unlogged:
                tune.report(metrics)
    else:
        log_augment_preview(phase_at(cfg, 0), data, cfg["seed"])

    # ---- epoch loop -----------------------------------------------------------------------
    epochs = total_epochs(cfg)
    for epoch in range(len(history), epochs):
        began = time.perf_counter()
        # One generator per (seed, epoch): shuffling and augmentation replay exactly on resume.
        generator = torch.Generator(device).manual_seed(cfg["seed"] * 100_003 + epoch)
        phase = phase_at(cfg, epoch)
        augment = Pipeline(phase.pipeline, phase.mix, data.num_classes)
        train_loss, train_acc = train_epoch(model, data, optimizer, optim, epoch, augment, generator,
                                            regime_of(cfg, phase.regime), schedule, cfg["speed"]["amp"], scaler)
        measured = run_evals(ev["every_epoch"], model, data, cfg)
        if is_better(measured[ev["select"]], best.get(ev["select"]), ev["mode"]):
            best = {"epoch": epoch + 1, **measured, "model": copy.deepcopy(model.state_dict())}
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            **measured,
            **trends([*history, measured]),
            "lr": schedule(epoch + 1),
            "epoch_time": time.perf_counter() - began,
            **best_metrics(best, ev),
        }
        arrays = {}
        if epoch + 1 == epochs:
            at_end, arrays = numbers_and_arrays(evaluate_at_end(model, best, data, cfg))
            metrics.update(at_end)
        history.append(metrics)
        with tempfile.TemporaryDirectory() as folder:
            checkpoint.save(folder, epoch + 1, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                                "scaler": scaler.state_dict(), "best": best, "history": history},
                            cfg, metrics, arrays)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


# ---- the best epoch ---------------------------------------------------------------------------

def is_better(value, best, mode):
    # Strictly better: on a tie the earlier epoch stays the best.
    return best is None or (value > best if mode == "max" else value < best)


def best_metrics(best, ev):
    """The best epoch, its value of ``eval.select``, and its test metrics (``test_acc_at_best``...)."""
    return {"best_epoch": best["epoch"], f"best_{ev['select']}": best[ev["select"]],
            **{at_best(k): v for k, v in best.items() if k.startswith("test_")}}


def evaluate_at_end(model, best, data, cfg):
    """The ``eval.at_end`` evaluations of the last model and of the best one, as
    ``<metric>_at_last`` and ``<metric>_at_best`` (those of ``eval.at_end_models``)."""
    ev, measured = cfg["eval"], {}
    if not ev["at_end"]:
        return measured
    for which in ev["at_end_models"]:
        evaluated = model
        if which == "best":
            evaluated = copy.deepcopy(model)
            evaluated.load_state_dict(best["model"])
        measured.update({at_end(k, which): v for k, v in run_evals(ev["at_end"], evaluated, data, cfg).items()})
    return measured


def reported_metrics(cfg):
    """The metrics every report of a trial with resolved config ``cfg`` carries, and those reported
    only with its last epoch: (every epoch, at the end)."""
    ev = cfg["eval"]
    measured = metric_names(ev["every_epoch"], cfg)
    trend = ["test_acc_max", "test_acc_median10"] if "test_acc" in measured else []
    every = ["epoch", "train_loss", "train_acc", *measured, *trend, "lr", "epoch_time", "best_epoch",
             f"best_{ev['select']}", *(at_best(m) for m in measured if m.startswith("test_"))]
    return every, [at_end(m, which) for which in ev["at_end_models"] for m in metric_names(ev["at_end"], cfg)]


# ---- resume -----------------------------------------------------------------------------------

def latest_state():
    """(the newest loadable training state of this trial or None, the epochs to report again).

    Tune hands back the checkpoint named in its last experiment snapshot, which can be older than
    the newest one on storage when the driver was killed; so the trial's folder on storage is
    searched as well, and epochs of a newer checkpoint that are missing from its result.json are
    reported again. Checkpoints that exist but cannot be loaded are an error, never a silent fresh
    start (``checkpoint.newest_state``).
    """
    given = tune.get_checkpoint()
    stored, logged = storage_checkpoints()
    candidates = ([given] if given else []) + stored
    with tempfile.TemporaryDirectory() as scratch:
        folders = [local_folder(c, os.path.join(scratch, str(i))) for i, c in enumerate(candidates)]
        state = checkpoint.newest_state(folders)
        known = given_epoch(folders[0]) if given else 0
    if state is None:
        return None, set()
    # With no checkpoint of its own Tune starts the trial's result.json afresh (its loggers restore
    # results only with a checkpoint), and that file replaces the one on storage: every epoch of
    # the history must be reported again. This happens when resume had to fall back to an older
    # copy of Tune's state (sweep.repair_state).
    return state, epochs_to_report([m["epoch"] for m in state["history"]], known, logged if given else set())


def given_epoch(folder):
    """The epoch of the checkpoint Tune handed back; 0 when its trial.json is unreadable (a corrupted
    checkpoint, which ``newest_state`` skipped): then epochs already in result.json are not reported again."""
    try:
        return checkpoint.read_record(folder)["epoch"]
    except checkpoint.CheckpointError:
        return 0


def epochs_to_report(epochs, known, logged):
    """Epochs of a resumed history that never reached the results.

    Epochs up to ``known`` (that of the checkpoint Tune handed back) were logged before Tune
    recorded that checkpoint. Later ones are reported unless ``logged`` (the epochs in the trial's
    result.json on storage) holds them; when the storage folder was not found (``logged`` None)
    nothing is reported again: a hole in a curve is better than an epoch logged twice.
    """
    if logged is None:
        return set()
    return {e for e in epochs if e > known and e not in logged}


def storage_checkpoints():
    """(this trial's checkpoints on the experiment storage, the epochs in its result.json there).

    Tune's trial directory is a local staging copy; the storage context knows the trial's folder on
    the storage, local or remote. ``([], None)`` when it cannot be found.
    """
    try:
        from pyarrow.fs import FileSelector, FileType
        from ray.train._internal.session import get_storage  # Tune's own view of the storage

        storage = get_storage()
        fs, folder = storage.storage_filesystem, storage.trial_fs_path
        entries = fs.get_file_info(FileSelector(folder, allow_not_found=True))
    except Exception:  # outside a Tune session, or a Ray version without this context
        return [], None
    stored = [tune.Checkpoint(e.path, filesystem=fs) for e in entries
              if e.type == FileType.Directory and e.base_name.startswith(checkpoint.PREFIX)]
    logged = set()
    if any(e.base_name == "result.json" for e in entries):
        with fs.open_input_stream(f"{folder}/result.json") as f:
            for line in f.read().decode().splitlines():
                try:
                    logged.add(json.loads(line).get("epoch"))
                except json.JSONDecodeError:  # a last line cut short by a kill
                    pass
    return stored, logged


def local_folder(ckpt, scratch):
    """A local folder holding ``ckpt``: its own path on local storage, else a download."""
    from pyarrow.fs import LocalFileSystem

    if isinstance(ckpt.filesystem, LocalFileSystem):
        return ckpt.path
    return ckpt.to_directory(scratch)


# ---- the trial's surroundings -----------------------------------------------------------------

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


def log_augment_preview(phase, data, seed):
    """A grid of augmented training images in the trial's TensorBoard events, at its start."""
    from torch.utils.tensorboard import SummaryWriter

    from searchlab.augment import preview_grid

    folder = tune.get_context().get_trial_dir()
    if folder:
        generator = torch.Generator(data.train.x.device).manual_seed(seed)
        augment = Pipeline(phase.pipeline, phase.mix, data.num_classes)
        grid = preview_grid(augment, data.train.x[:8], data.train.y[:8], generator)
        with SummaryWriter(folder) as writer:
            writer.add_image("augment/preview", grid, 0)


def record_trial(cfg, reports):
    """Write the resolved config, seed and code version into the trial directory; the ``reports``
    the trial will make and the resources it holds (for ``searchlab report``'s progress and cost);
    and where the trial runs: its Ray node, the GPUs Ray assigned it and the device it trains on
    (rewritten when a retried trial starts again elsewhere)."""
    context = tune.get_context()
    folder = context.get_trial_dir()
    if folder:
        held = context.get_trial_resources().required_resources  # {"CPU": 1.0, "GPU": 0.25, ...}
        # Whole or not at all: a retried trial rewrites it while Tune may be copying it to storage.
        record = {"config": cfg, "seed": cfg["seed"], "code_version": code_version(), "reports": reports,
                  "resources": {"cpu": held.get("CPU", 0.0), "gpu": held.get("GPU", 0.0)},
                  "placement": placement(cfg["device"])}
        checkpoint.write_whole(folder, "searchlab_trial.json",
                               lambda f: f.write(json.dumps(record, indent=2, default=str).encode()))


def placement(device):
    """Where and when this trial runs: {"node_id", "gpu_ids" (Ray's), "cuda_visible_devices",
    "device", "started" (Unix time)}.

    Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned the trial, so "cuda" (device 0 of those)
    is the trial's own GPU and never another trial's.
    """
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": ray.get_gpu_ids(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": pick_device(device),
            "started": time.time()}
