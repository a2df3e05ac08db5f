"""Refinement through a real sweep: the switch, its learning rate and the clean-data metrics replay
exactly after workers die before the switch and in the middle of refinement, and every figure is
written."""
import json
from pathlib import Path

import numpy as np
import torch

from searchlab import checkpoint, sweep
from searchlab.augment import Pipeline
from searchlab.data import load_dataset
from searchlab.models import build_model
from searchlab.train import lr_at, make_optimizer, train_epoch
from searchlab.trainable import seed_everything

SPACE = Path(__file__).parent / "spaces" / "refine_tiny.py"


def results(trial_dir):
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]


def reference_run(cfg):
    """(training losses, learning rates) of the trial recomputed in this process without the
    refine group: mixup on flip + crop until the switch, then flip + crop at learning rate 0.003."""
    switch, optim = cfg["refine"]["start_epoch"], cfg["optim"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial (1 CPU)
    try:
        seed_everything(cfg["seed"])
        d = cfg["data"]
        data = load_dataset("cifar10", val_size=d["val_size"], train_size=d["train_size"],
                            test_size=d["test_size"], root=d["root"])
        model = build_model("small_cnn", 10)
        optimizer = make_optimizer(model, optim)

        def rate(t):
            return lr_at(optim, t) if t <= switch else 0.003

        losses = []
        for epoch in range(6):
            mix = {"name": "mixup", "alpha": 1.0} if epoch < switch else None
            generator = torch.Generator().manual_seed(cfg["seed"] * 100_003 + epoch)
            losses.append(train_epoch(model, data, optimizer, optim, epoch, Pipeline("standard", mix, 10),
                                      generator, schedule=rate)[0])
        return losses, [rate(e) for e in range(1, 7)]
    finally:
        torch.set_num_threads(threads)


def test_refinement_resumes_exactly_and_writes_every_figure(ray_session, cifar_data, tmp_path, kill_worker_at):
    before = kill_worker_at(tmp_path / "refine", epoch=2)
    during = kill_worker_at(tmp_path / "refine", epoch=5)
    experiment = sweep.run(str(SPACE), name="refine", storage=tmp_path)
    assert before and during, "the workers were not killed"

    trial_dirs = sorted(p for p in experiment.glob("train_*") if p.is_dir())
    switches = set()
    for trial_dir in trial_dirs:
        rows = results(trial_dir)
        assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]  # nothing redone, nothing twice
        cfg = json.loads((trial_dir / "searchlab_trial.json").read_text())["config"]
        switches.add(cfg["refine"]["start_epoch"])
        losses, rates = reference_run(cfg)
        assert [r["train_loss"] for r in rows] == losses
        assert [r["lr"] for r in rows] == rates
        accs = [r["test_acc"] for r in rows]
        for i, r in enumerate(rows):
            assert r["test_acc_max"] == max(accs[:i + 1])
            assert r["test_acc_median10"] == float(np.median(accs[max(0, i - 9):i + 1]))
            assert 0 <= r["train_clean_acc"] <= 1 and r["train_clean_loss"] > 0
        arrays = checkpoint.read_arrays(checkpoint.newest(trial_dir))
        assert set(arrays) == {f"spectrum_{kind}_at_{model}" for kind in ("all", "class0") for model in ("best", "last")}
        assert all(np.all(np.diff(a) <= 0) and a.shape == (32,) for a in arrays.values())
    assert switches == {3, 6}
    # The trial killed in the middle of refinement lost that worker after the switch.
    assert during[0][1] >= 5

    written = {p.name for p in (experiment / "figures").iterdir()}
    assert {"curves.png", "curves.csv", "spectrum.png", "spectrum.npz", "switch.png", "switch.csv",
            "table.md", "table.csv"} <= written
