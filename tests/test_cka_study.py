"""The CKA study's bookkeeping: which comparisons, when, in actors during a sweep, and on resume."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from searchlab import sweep
from searchlab.analysis import study
from searchlab.analysis.cka import cka_matrix
from searchlab.data import Split, batches, load_dataset, normalize

TINY = str(Path(__file__).parent / "spaces" / "tiny_cka.py")


def test_pairs_wait_for_both_references():
    refs = ("none1", "none2")
    assert study.pairs({"flip", "none1"}, refs) == []
    assert study.pairs({"none1", "none2"}, refs) == [("none1", "none2")]
    assert study.pairs({"none1", "none2", "flip", "cutout"}, refs) == [
        ("none1", "none2"), ("none1", "cutout"), ("none2", "cutout"), ("none1", "flip"), ("none2", "flip")]


def test_cka_actors_during_a_sweep_then_searchlab_cka(ray_session, tmp_path):
    experiment = sweep.run(TINY, name="cka", storage=tmp_path)
    folder = experiment / "cka" / "small_cnn"
    names = sorted(p.name for p in folder.glob("*.npz"))
    # The augmented run finished before the references; its comparisons waited for them.
    assert names == ["none1__crop.npz", "none1__none2.npz", "none2__crop.npz"]
    for figure in ("cka_heatmaps.png", "cka_impact.png"):
        assert (folder / figure).stat().st_size > 10_000
    with open(experiment / "cka" / "cka_table.csv", newline="") as f:
        table = list(csv.DictReader(f))
    # One row per augmentation, then the references' ("none": their labels differ, no cka.augmentation).
    assert [(r["augmentation"], r["n"]) for r in table] == [("crop", "1"), ("none", "2")]

    # What the actor wrote is the CKA of the two best-validation models on the first validation images.
    groups = study.study_trials(experiment)["small_cnn"]
    model_a, config, best = study.best_model(groups["none1"])
    model_b, _, _ = study.best_model(groups["crop"])
    data = load_dataset("digits", val_size=config["data"]["val_size"], split_seed=0)
    loader = [(normalize(x, data.mean, data.std), y)
              for x, y in batches(Split(data.val.x[:128], data.val.y[:128]), 64)]
    expected, names_a, _ = cka_matrix(model_a, model_b, loader)
    saved = np.load(folder / "none1__crop.npz")
    np.testing.assert_allclose(saved["cka"], expected, rtol=1e-10)
    assert list(saved["layers_a"]) == names_a and expected.shape == (3, 3)
    crop, none = table
    assert float(crop["test_acc_at_best_mean"]) == study.best_model(groups["crop"])[2]["test_acc"]
    assert crop["test_acc_at_best_std"] == crop["cka_impact_std"] == ""
    best2 = study.best_model(groups["none2"])[2]
    assert float(none["test_acc_at_best_mean"]) == np.mean([best["test_acc"], best2["test_acc"]])
    assert none["cka_impact_mean"] == ""

    # Re-running on the finished experiment computes only what is missing.
    kept = folder / "none1__none2.npz"
    before = kept.stat().st_mtime_ns
    os.remove(folder / "none2__crop.npz")
    run = subprocess.run([sys.executable, "-m", "searchlab.cli", "cka", str(experiment)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "computed 1 comparison(s)" in run.stdout and "crop" in run.stdout
    assert (folder / "none2__crop.npz").exists() and kept.stat().st_mtime_ns == before
    assert study.pending(experiment) == []


def test_comparisons_start_while_trials_fill_the_cluster(ray_session, tmp_path):
    # 2 slots, 6 trials: when the references end, augmented runs wait for every freed slot. The
    # analysis actor must get one then, not after the sweep: the references' comparison is on disk
    # before the last augmented run starts (the runs go in order, two at a time at most).
    experiment = sweep.run(str(Path(__file__).parent / "spaces" / "cka_busy.py"), name="busy", storage=tmp_path)
    starts = sorted(json.loads(p.read_text())["placement"]["started"]
                    for p in experiment.glob("*/searchlab_trial.json")
                    if json.loads(p.read_text())["config"]["cka"]["label"].startswith("crop"))
    compared = (experiment / "cka" / "small_cnn" / "none1__none2.npz").stat().st_mtime
    assert len(starts) == 4 and compared < starts[-1]
