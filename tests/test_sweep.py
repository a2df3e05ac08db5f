"""Sweeps through Ray Tune end to end, on one shared Ray instance."""
import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from searchlab import sweep

TINY = str(Path(__file__).parent / "spaces" / "tiny_cifar.py")
METRICS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr",
           "epoch_time", "best_epoch", "best_val_acc", "test_acc_at_best"}


def results(trial_dir):
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]


def trial_dirs(experiment):
    return sorted(p for p in Path(experiment).iterdir() if p.is_dir() and p.name.startswith("train_"))


def test_cifar10_sweep_end_to_end(ray_session, cifar_data, tmp_path):
    experiment = sweep.run(TINY, {"epochs": 3}, name="e2e", storage=tmp_path)
    dirs = trial_dirs(experiment)
    assert len(dirs) == 2
    for trial_dir in dirs:
        rows = results(trial_dir)
        assert [r["epoch"] for r in rows] == [1, 2, 3]
        assert METRICS <= set(rows[-1])
        # The best-validation bookkeeping agrees with the per-epoch reports.
        best = max(rows, key=lambda r: r["val_acc"])
        assert rows[-1]["best_val_acc"] == best["val_acc"]
        assert rows[-1]["test_acc_at_best"] == best["test_acc"]
        assert rows[-1]["best_epoch"] == best["epoch"]
        # Cosine schedule: lr after epoch e of 3 at base 0.05.
        assert rows[0]["lr"] == pytest.approx(0.05 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 3)).item()))
        record = json.loads((trial_dir / "searchlab_trial.json").read_text())
        assert record["config"]["data"]["train_size"] == 512 and record["code_version"]["version"]
        assert record["seed"] == record["config"]["seed"]
        # The last checkpoint holds the best-validation model for rollback.
        [last] = sorted(trial_dir.glob("checkpoint_*"))[-1:]
        state = torch.load(last / "state.pt", weights_only=False)
        assert state["epoch"] == 3 and state["best"]["epoch"] == best["epoch"]
        assert set(state["best"]["model"]) == set(state["model"])
        # Every reported scalar is in TensorBoard.
        events = EventAccumulator(str(trial_dir)).Reload()
        tags = set(events.Tags()["scalars"])
        assert {f"ray/tune/{m}" for m in ("train_loss", "val_acc", "val_loss", "test_acc", "lr")} <= tags
        assert "augment/preview" in events.Tags()["images"]
        assert [e.value for e in events.Scalars("ray/tune/val_acc")] == pytest.approx(
            [r["val_acc"] for r in rows])
    # Two seeds, two different trials.
    assert results(dirs[0])[0]["train_loss"] != results(dirs[1])[0]["train_loss"]
    table = sweep.trial_table(experiment)
    assert [r["status"] for r in table] == ["TERMINATED"] * 2 and {r["seed"] for r in table} == {0, 1}
    assert "val_acc" in sweep.format_table(table)


def test_optuna_sweep_with_asha(ray_session, tmp_path):
    experiment = sweep.run("optuna_lr_wd", {"trials": 3, "epochs": 2}, name="optuna", storage=tmp_path)
    table = sweep.trial_table(experiment)
    assert len(table) == 3 and all(r["status"] == "TERMINATED" for r in table)
    lrs = {r["optim/lr"] for r in table}
    assert len(lrs) == 3 and all(1e-3 <= lr <= 0.5 for lr in lrs)


def test_dead_worker_is_retried_from_its_checkpoint(ray_session, cifar_data, tmp_path, kill_worker_at):
    """Kill a trial's worker process (by the PID it reported) after epoch 2 of 4."""
    killed = kill_worker_at(tmp_path / "faults", epoch=2)
    experiment = sweep.run(TINY, {"epochs": 4, "seeds": 1}, name="faults", storage=tmp_path)
    assert killed
    [trial_dir] = trial_dirs(experiment)
    rows = results(trial_dir)
    # Finished epochs are not redone: each epoch reported once, by two different processes.
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["pid"] == killed[0][2] != rows[-1]["pid"]
    assert sweep.trial_table(experiment)[0]["status"] == "TERMINATED"


def test_status_shows_the_recorded_status_of_a_running_trial(tmp_path):
    """ExperimentAnalysis loads RUNNING trials as PENDING; the table takes the status Tune recorded
    in its newest experiment state (a resume's, not the older session's it leaves beside it)."""
    old = tmp_path / "experiment_state-2026-01-01_10-00-00.json"
    new = tmp_path / "experiment_state-2026-01-02_09-00-00.json"
    for path, status in ((new, "TERMINATED"), (old, "RUNNING")):  # the older session's file written last
        path.write_text(json.dumps({"trial_data": [[json.dumps({"trial_id": "a1", "status": status}), "{}"]]}))
    assert sweep.recorded_statuses(tmp_path) == {"a1": "TERMINATED"}
