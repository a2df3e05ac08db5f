"""Phases: the augmentation and regime as a pure function of the epoch, through a real sweep."""
import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from searchlab import checkpoint, sweep
from searchlab.augment import Pipeline
from searchlab.config import resolve
from searchlab.data import load_dataset
from searchlab.errors import UserError
from searchlab.models import build_model
from searchlab.train import make_optimizer, phase_at, train_epoch
from searchlab.trainable import seed_everything

SPACE = Path(__file__).parent / "spaces" / "two_phase.py"


def test_phase_at_switches_at_start_epoch_and_keeps_what_a_phase_leaves_out():
    cfg = resolve({"optim": {"epochs": 10},
                   "augment": {"pipeline": "standard", "mix": {"name": "mixup", "alpha": 1.0}},
                   "phases": [{"start_epoch": 8, "regime": "augmix_jsd", "augment": {"mix": None}},
                              {"start_epoch": 5, "augment": {"pipeline": "none"}}]})
    seen = [phase_at(cfg, epoch) for epoch in range(10)]
    assert seen[:5] == [("standard", {"name": "mixup", "alpha": 1.0}, "standard")] * 5
    # From 5 epochs trained: no ops, the mix kept; from 8: no mix either, and another regime.
    assert seen[5:8] == [("none", {"name": "mixup", "alpha": 1.0}, "standard")] * 3
    assert seen[8:] == [("none", None, "augmix_jsd")] * 2
    assert phase_at(resolve({}), 0) == (resolve({})["augment"]["pipeline"], None, "standard")


@pytest.mark.parametrize("phases, message", [
    ({"start_epoch": 1}, r"phases must be a list"),
    ([{"augment": {"pipeline": "none"}}], r"phases\[0\] must be a dict with start_epoch"),
    ([{"start_epoch": 11}], r"phases\[0\].start_epoch must be a whole number of epochs in 0..10, got 11"),
    ([{"start_epoch": "3"}], r"got '3'"),
    ([{"start_epoch": 3, "augment": {"pipline": "none"}}], r"unknown key\(s\) pipline in phases\[0\].augment"),
    ([{"start_epoch": 3, "augment": {"pipeline": "blur"}}], r"unknown augment preset 'blur'"),
])
def test_bad_phases(phases, message):
    with pytest.raises(UserError, match=message):
        resolve({"optim": {"epochs": 10}, "phases": phases})


def results(trial_dir):
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]


def trial_dirs(experiment):
    return sorted(p for p in Path(experiment).glob("train_*") if p.is_dir())


def reference_train_losses(cfg, epochs, switch):
    """The trial's training losses recomputed in this process: flip + crop with mixup for ``switch``
    epochs, then no augmentation, with the trainable's seeding and one thread as the trial has."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seed_everything(cfg["seed"])
        d = cfg["data"]
        data = load_dataset("cifar10", val_size=d["val_size"], train_size=d["train_size"],
                            test_size=d["test_size"], root=d["root"])
        model = build_model("small_cnn", 10)
        optimizer = make_optimizer(model, cfg["optim"])
        losses = []
        for epoch in range(epochs):
            augment = (Pipeline("standard", {"name": "mixup", "alpha": 1.0}, 10) if epoch < switch
                       else Pipeline([], None, 10))
            generator = torch.Generator().manual_seed(cfg["seed"] * 100_003 + epoch)
            losses.append(train_epoch(model, data, optimizer, cfg["optim"], epoch, augment, generator)[0])
        return losses
    finally:
        torch.set_num_threads(threads)


def test_two_phases_switch_at_their_epoch_and_resume_exactly_across_the_switch(ray_session, cifar_data, tmp_path,
                                                                              kill_worker_at):
    """Two identical trials; one loses its worker before the switch and resumes from its checkpoint.
    Both must give the same numbers at every epoch, and the numbers of a plain loop that switches
    at epoch 3."""
    killed = kill_worker_at(tmp_path / "phases", epoch=2)
    experiment = sweep.run(str(SPACE), name="phases", storage=tmp_path)
    assert killed and killed[0][1] <= 3, "the worker was not killed before the switch"

    runs = {d.name: results(d) for d in trial_dirs(experiment)}
    assert len(runs) == 2
    for rows in runs.values():
        assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]  # nothing redone, nothing twice
    same = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr",
            "best_epoch", "best_val_loss", "test_acc_at_best")
    first, second = runs.values()
    assert [[r[k] for k in same] for r in first] == [[r[k] for k in same] for r in second]

    cfg = json.loads((trial_dirs(experiment)[0] / "searchlab_trial.json").read_text())["config"]
    assert [r["train_loss"] for r in first] == reference_train_losses(cfg, 6, switch=3)

    # The best epoch is the lowest val_loss (eval.select, eval.mode); the end-of-training
    # evaluation of the best model gives its numbers again, under *_at_best, in the last report only.
    for rows in runs.values():
        best = min(rows, key=lambda r: r["val_loss"])
        last = rows[-1]
        assert (last["best_epoch"], last["best_val_loss"]) == (best["epoch"], best["val_loss"])
        assert last["test_acc_at_best"] == best["test_acc"]
        assert (last["val_loss_at_best"], last["val_acc_at_best"]) == (best["val_loss"], best["val_acc"])
        assert all("val_loss_at_best" not in r for r in rows[:-1])
    # The same names in TensorBoard, and a checkpoint that loads with weights_only.
    trial_dir = trial_dirs(experiment)[0]
    tags = set(EventAccumulator(str(trial_dir)).Reload().Tags()["scalars"])
    assert {"ray/tune/best_val_loss", "ray/tune/val_loss_at_best", "ray/tune/test_acc_at_best"} <= tags
    state = checkpoint.load_state(checkpoint.newest(trial_dir))
    assert state["epoch"] == 6 and state["best"]["epoch"] == runs[trial_dir.name][-1]["best_epoch"]

    # The sweep keeps the source of its search space.
    record = json.loads((experiment / sweep.RECORD).read_text())
    assert record["space_source"] == SPACE.read_text() and record["space_file"] == str(SPACE)
