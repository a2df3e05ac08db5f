"""The checkpoint contract: file names, schema, weights_only loading, the newest epoch, bad files."""
import json
import os

import pytest
import torch

from searchlab import checkpoint
from searchlab.checkpoint import CheckpointError
from searchlab.config import resolve
from searchlab.models import build_model
from searchlab.train import make_optimizer
from searchlab.trainable import epochs_to_report


def write(trial_dir, epoch):
    """A checkpoint as the trainable writes it: a real model, SGD state with momentum, history."""
    cfg = resolve({})
    model = build_model("small_cnn", 10, in_channels=1)
    optimizer = make_optimizer(model, cfg["optim"])
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    optimizer.step()  # creates the momentum buffers
    metrics = {"epoch": epoch, "val_acc": 0.5 + epoch / 100, "lr": 0.1}
    folder = os.path.join(trial_dir, f"{checkpoint.PREFIX}{epoch:06d}")
    os.makedirs(folder)
    best = {"epoch": epoch, "val_acc": metrics["val_acc"], "model": model.state_dict()}
    checkpoint.save(folder, epoch, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "best": best, "history": [metrics]}, cfg, metrics)
    return folder, model, optimizer


def test_round_trip_loads_with_weights_only(tmp_path):
    folder, model, optimizer = write(tmp_path, 3)
    assert sorted(os.listdir(folder)) == [checkpoint.STATE, checkpoint.RECORD]  # no temporary files left
    # weights_only=True, as torch itself would load it: no code runs from the file.
    raw = torch.load(os.path.join(folder, checkpoint.STATE), weights_only=True)
    assert raw["schema"] == checkpoint.SCHEMA and raw["epoch"] == 3
    state = checkpoint.load_state(folder)
    for name, tensor in model.state_dict().items():
        assert torch.equal(state["model"][name], tensor)
    restored = make_optimizer(build_model("small_cnn", 10, in_channels=1), resolve({})["optim"])
    restored.load_state_dict(state["optimizer"])
    buffers = [s["momentum_buffer"] for s in optimizer.state_dict()["state"].values()]
    assert all(torch.equal(a["momentum_buffer"], b) for a, b in zip(restored.state_dict()["state"].values(), buffers))
    record = checkpoint.read_record(folder)
    assert record["epoch"] == 3 and record["config"] == json.loads(json.dumps(resolve({})))
    assert record["metrics"]["val_acc"] == 0.53


def test_newest_is_found_from_trial_json_alone(tmp_path):
    for epoch in (2, 10, 9):  # 10 sorts before 9 as text; the epoch in trial.json decides
        write(tmp_path, epoch)
    for state in tmp_path.glob("*/" + checkpoint.STATE):
        state.write_bytes(b"not a torch file")  # newest() must not need to unpickle any state
    assert checkpoint.newest(tmp_path).endswith("checkpoint_000010")
    assert [os.path.basename(f) for f in checkpoint.folders(tmp_path)] == [
        "checkpoint_000010", "checkpoint_000009", "checkpoint_000002"]
    assert checkpoint.newest(tmp_path / "empty") is None


def test_a_newest_checkpoint_cut_short_falls_back_but_nothing_loadable_is_an_error(tmp_path):
    old, _, _ = write(tmp_path, 3)
    new, _, _ = write(tmp_path, 4)
    state = os.path.join(new, checkpoint.STATE)
    with open(state, "rb") as f:
        head = f.read(100)
    with open(state, "wb") as f:
        f.write(head)  # killed while writing
    assert checkpoint.newest_state([old, new])["epoch"] == 3
    with pytest.raises(CheckpointError, match=r"cannot resume: every checkpoint is unreadable"):
        checkpoint.newest_state([new])
    assert checkpoint.newest_state([]) is None


def test_old_and_foreign_checkpoints_get_a_clear_error(tmp_path):
    # Written by the previous searchlab: no schema, the config pickled inside.
    old = tmp_path / "old"
    old.mkdir()
    torch.save({"epoch": 3, "model": {}, "config": {"optim": {"lr": 0.1}}}, old / checkpoint.STATE)
    (old / checkpoint.RECORD).write_text(json.dumps({"config": {}, "metrics": {"epoch": 3}}))
    with pytest.raises(CheckpointError, match=r"state.pt has no schema version, this searchlab reads schema 1"):
        checkpoint.load_state(old)
    with pytest.raises(CheckpointError, match=r"trial.json has no schema version"):
        checkpoint.read_record(old)
    # Another program's pickle: weights_only refuses to run its code, and the message says what it is.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    torch.save({"schema": checkpoint.SCHEMA, "epoch": 1, "on_load": os.getcwd}, foreign / checkpoint.STATE)
    with pytest.raises(CheckpointError, match=r"holds objects other than tensors, dicts, lists and numbers"):
        checkpoint.load_state(foreign)
    torch.save({"schema": 99, "epoch": 1}, foreign / checkpoint.STATE)
    with pytest.raises(CheckpointError, match=r"has schema 99, this searchlab reads schema 1"):
        checkpoint.load_state(foreign)


def test_resume_never_reports_an_epoch_twice():
    # Epochs up to the checkpoint Tune handed back were logged; later ones unless result.json has them.
    assert epochs_to_report([1, 2, 3, 4], known=2, logged={1, 2, 3}) == {4}
    assert epochs_to_report([1, 2, 3, 4], known=2, logged=set()) == {3, 4}  # result.json lost lines
    # The trial's folder on storage was not found: nothing is reported again.
    assert epochs_to_report([1, 2, 3, 4], known=0, logged=None) == set()
