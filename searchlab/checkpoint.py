"""A trial's checkpoint on disk: this module alone knows its file names and schema. No Ray.

A checkpoint is a folder ``checkpoint_NNNNNN`` in the trial's folder, holding

    state.pt    {"schema", "epoch", "model", "optimizer", "scaler", "best", "history"}: tensors, dicts, lists,
                strings and numbers only, so it loads with ``torch.load(weights_only=True)``, which
                runs no code from the file. "best" is the epoch that ``eval.select`` picked:
                {"epoch", "model", and that epoch's metrics}; "history" every epoch's metrics; "scaler"
                the fp16 GradScaler's state ({} without fp16; absent in older checkpoints).
    trial.json  {"schema", "epoch", "config", "metrics"}: the resolved trial config and the metrics
                of the epoch, for readers that need no weights (and need not unpickle anything).
    arrays.npz  the arrays the evaluations returned (a Fourier heatmap, a low-pass curve), by metric
                name, when there are any; numpy's format, read without pickle.

Both files are written to a temporary name and renamed, so a reader never sees half a file.
"""
import glob
import json
import os
import pickle
import tempfile
import warnings

import numpy as np
import torch

SCHEMA = 1
STATE = "state.pt"
RECORD = "trial.json"
ARRAYS = "arrays.npz"
PREFIX = "checkpoint_"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: cut short, foreign, or of another schema."""


def save(folder, epoch, state, config, metrics, arrays=None):
    """Write a checkpoint of ``epoch`` into ``folder``: ``state`` (model, optimizer, best, history)
    into state.pt, the config and this epoch's metrics into trial.json, ``arrays`` into arrays.npz."""
    write_whole(folder, STATE, lambda f: torch.save({"schema": SCHEMA, "epoch": epoch, **state}, f))
    if arrays:
        write_whole(folder, ARRAYS, lambda f: np.savez(f, **arrays))
    record = {"schema": SCHEMA, "epoch": epoch, "config": config, "metrics": metrics}
    write_whole(folder, RECORD, lambda f: f.write(json.dumps(record, indent=1, default=str).encode()))


def write_whole(folder, name, write):
    """Write the file ``name`` in ``folder`` through ``write(binary file)`` under a temporary name,
    then rename it: a reader sees the old file or the new one, never half of one, and a write that
    fails (a full disk) leaves the old file and no temporary beside it."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{name}.", delete=False) as f:
        try:
            write(f)
        except BaseException:
            f.close()
            os.unlink(f.name)
            raise
    os.replace(f.name, os.path.join(folder, name))


def load_state(folder, map_location="cpu"):
    """The training state in ``folder``; CheckpointError if it is not a readable one of this schema."""
    path = os.path.join(folder, STATE)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} holds objects other than tensors, dicts, lists and numbers: "
                              f"not a searchlab checkpoint of schema {SCHEMA} ({str(e).splitlines()[0]})") from e
    except Exception as e:  # a file cut short by a kill, or missing
        raise CheckpointError(f"{path} is unreadable ({type(e).__name__}: {e})") from e
    _check_schema(path, state)
    return state


def read_record(folder):
    """The config and metrics stored with the checkpoint in ``folder``."""
    path = os.path.join(folder, RECORD)
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is unreadable ({type(e).__name__}: {e})") from e
    _check_schema(path, record)
    return record


def read_history(folder):
    """Every epoch's metrics up to the checkpoint in ``folder``, in order (from state.pt)."""
    return load_state(folder)["history"]


def read_arrays(folder):
    """{name: array} of the checkpoint in ``folder``; empty when it holds none."""
    path = os.path.join(folder, ARRAYS)
    if not os.path.exists(path):
        return {}
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return dict(arrays)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable ({type(e).__name__}: {e})") from e


def _check_schema(path, content):
    found = content.get("schema") if isinstance(content, dict) else None
    if found != SCHEMA:
        what = "no schema version" if found is None else f"schema {found!r}"
        raise CheckpointError(f"{path} has {what}, this searchlab reads schema {SCHEMA}: it was written "
                              "by another program or another version of searchlab")


def folders(trial_dir):
    """The checkpoint folders of a trial, newest epoch first (by trial.json; unreadable ones left out)."""
    found = []
    for folder in glob.glob(os.path.join(trial_dir, f"{PREFIX}*", "")):
        try:
            found.append((read_record(folder)["epoch"], folder.rstrip(os.sep)))
        except CheckpointError:
            continue
    return [folder for _, folder in sorted(found, reverse=True)]


def newest(trial_dir):
    """The trial's newest checkpoint folder, or None."""
    found = folders(trial_dir)
    return found[0] if found else None


def newest_state(candidates):
    """The newest loadable state among checkpoint folders ``candidates``, or None if there are none.

    A newest checkpoint cut short by a kill is skipped for the one before it; when none loads, that
    is an error, never a silent fresh start.
    """
    epochs, errors = {}, []
    for folder in set(candidates):
        try:
            epochs[folder] = read_record(folder)["epoch"]
        except CheckpointError as e:
            errors.append(str(e))
    for folder in sorted(epochs, key=epochs.get, reverse=True):
        try:
            state = load_state(folder)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        # A warning, so that it shows in the trial's output (Ray forwards a worker's stderr), naming
        # the files skipped: the epochs after the checkpoint used are trained again.
        for error in errors:
            warnings.warn(f"skipped an unreadable checkpoint, resuming from {folder} (epoch {state['epoch']}): "
                          f"{error}", stacklevel=2)
        return state
    if errors:
        raise CheckpointError(f"cannot resume: every checkpoint is unreadable ({'; '.join(errors)})")
    return None
