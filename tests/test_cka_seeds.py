"""The CKA study with several seeds per augmentation: which comparisons, the impact averaged over
reference pairs, and the mean/std/n of the table and curves, on fake experiments written through the
checkpoint module with hand-made CKA matrices (no training, no Ray); and the study's runs."""
import csv
import itertools

import numpy as np
import pytest

from searchlab import checkpoint, spaces
from searchlab.analysis import study
from searchlab.errors import UserError

STATE = {"model": {}, "optimizer": {}, "best": {}, "history": []}
LAYERS = 5


def write_trial(experiment, label, augmentation, references, test_acc, epoch=2):
    cka = {"label": label, "group": "g", "references": references}
    if augmentation is not None:  # None: a config recorded before cka.augmentation existed
        cka["augmentation"] = augmentation
    folder = experiment / f"trial_{label}" / f"checkpoint_{epoch:06d}"
    folder.mkdir(parents=True)
    checkpoint.save(str(folder), epoch, STATE, {"optim": {"epochs": 2}, "cka": cka}, {"test_acc_at_best": test_acc})


def write_cka(experiment, a, b, matrix):
    folder = experiment / "cka" / "g"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"{a}__{b}.npz", cka=matrix, layers_a=np.array([f"l{i}" for i in range(LAYERS)]),
             layers_b=np.array([f"l{i}" for i in range(LAYERS)]), images=64)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def experiment(tmp_path):
    """Three references, flip with three seeds, cutout with one (no cka.augmentation: its label),
    an unfinished flip run and a finished crop run whose comparisons are not on disk yet."""
    rng = np.random.default_rng(0)
    exp = tmp_path / "exp"
    refs = ["none1", "none2", "none3"]
    runs = {"none1": "none", "none2": "none", "none3": "none", "flip1": "flip", "flip2": "flip",
            "flip3": "flip", "cutout": None}
    acc = {label: float(rng.uniform(0.5, 0.9)) for label in runs}
    for label, augmentation in runs.items():
        write_trial(exp, label, augmentation, refs, acc[label])
    write_trial(exp, "flip4", "flip", refs, 0.0, epoch=1)  # unfinished: must count nowhere
    write_trial(exp, "crop1", "crop", refs, 0.0)
    # Square CKA matrices with diagonals in (0.3, 1): the impact's denominators stay away from 0.
    cka = {}
    for a, b in list(itertools.combinations(refs, 2)) + [(r, x) for r in refs for x in runs if x not in refs]:
        cka[a, b] = rng.uniform(0.3, 1.0, (LAYERS, LAYERS))
        write_cka(exp, a, b, cka[a, b])
    write_cka(exp, "none1", "flip4", np.full((LAYERS, LAYERS), 100.0))  # a stray file of the unfinished run
    return exp, refs, acc, cka


def expected_impact(cka, refs, run):
    """Per-layer impact, written out: for each reference pair (i, j),
    (CKA(i,j) - (CKA(i,run) + CKA(j,run)) / 2) / CKA(i,j) on the diagonals, then the mean over pairs."""
    per_pair = []
    for i in range(len(refs)):
        for j in range(i + 1, len(refs)):
            ref = np.array([cka[refs[i], refs[j]][k, k] for k in range(LAYERS)])
            to_i = np.array([cka[refs[i], run][k, k] for k in range(LAYERS)])
            to_j = np.array([cka[refs[j], run][k, k] for k in range(LAYERS)])
            per_pair.append((ref - (to_i + to_j) / 2) / ref)
    return sum(per_pair) / len(per_pair)


def sample_std(values):
    values = np.asarray(values, dtype=float)
    return np.sqrt(((values - values.mean(0)) ** 2).sum(0) / (len(values) - 1))


def test_pairs_with_more_references():
    refs = ["none1", "none2", "none3"]
    assert study.pairs({"none1", "none2", "flip1"}, refs) == []  # none3 not finished: wait
    assert study.pairs({"none1", "none2", "none3", "flip1", "cutout"}, refs) == [
        ("none1", "none2"), ("none1", "none3"), ("none2", "none3"),
        ("none1", "cutout"), ("none2", "cutout"), ("none3", "cutout"),
        ("none1", "flip1"), ("none2", "flip1"), ("none3", "flip1")]
    for bad in (["none1"], ["none1", "none1"]):
        with pytest.raises(UserError, match="cka.references must name two or more distinct labels"):
            study.pairs({"none1"}, bad)


def test_pending_lists_only_the_missing_comparisons(experiment):
    exp, refs, _, _ = experiment
    assert [(a, b) for _, a, b, _, _ in study.pending(exp)] == [(r, "crop1") for r in refs]


def test_impact_mean_std_and_table_against_numpy(experiment):
    exp, refs, acc, cka = experiment
    rows = study.report(exp)

    impacts = {run: expected_impact(cka, refs, run) for run in ("flip1", "flip2", "flip3", "cutout")}
    flips = [impacts[f"flip{i}"] for i in (1, 2, 3)]
    curves = read_csv(exp / "cka" / "impact_curves.csv")
    assert list(curves[0]) == ["group", "augmentation", "n", "depth", "mean", "std"]
    # crop1 has no comparisons yet and flip4 is unfinished: neither is drawn.
    assert [(c["augmentation"], c["n"]) for c in curves] == [("cutout", "1")] * LAYERS + [("flip", "3")] * LAYERS
    flip_curve = [c for c in curves if c["augmentation"] == "flip"]
    np.testing.assert_allclose([float(c["depth"]) for c in flip_curve], np.linspace(0, 1, LAYERS))
    np.testing.assert_allclose([float(c["mean"]) for c in flip_curve], sum(flips) / 3, rtol=1e-12)
    np.testing.assert_allclose([float(c["std"]) for c in flip_curve], sample_std(flips), rtol=1e-12)
    cutout_curve = [c for c in curves if c["augmentation"] == "cutout"]
    np.testing.assert_allclose([float(c["mean"]) for c in cutout_curve], impacts["cutout"], rtol=1e-12)
    assert {c["std"] for c in cutout_curve} == {""}  # one run: no spread

    table = read_csv(exp / "cka" / "cka_table.csv")
    assert list(table[0]) == ["group", "augmentation", "n", "test_acc_at_best_mean", "test_acc_at_best_std",
                              "cka_impact_mean", "cka_impact_std"]
    assert [(r["augmentation"], r["n"]) for r in table] == [("cutout", "1"), ("flip", "3"), ("none", "3")]
    cutout, flip, none = table
    layer_means = [float(np.mean(f)) for f in flips]
    flip_accs = [acc[f"flip{i}"] for i in (1, 2, 3)]
    np.testing.assert_allclose(float(flip["cka_impact_mean"]), np.mean(layer_means), rtol=1e-12)
    np.testing.assert_allclose(float(flip["cka_impact_std"]), sample_std(layer_means), rtol=1e-12)
    np.testing.assert_allclose(float(flip["test_acc_at_best_mean"]), np.mean(flip_accs), rtol=1e-12)
    np.testing.assert_allclose(float(flip["test_acc_at_best_std"]), sample_std(flip_accs), rtol=1e-12)
    np.testing.assert_allclose(float(cutout["cka_impact_mean"]), np.mean(impacts["cutout"]), rtol=1e-12)
    assert cutout["cka_impact_std"] == cutout["test_acc_at_best_std"] == ""
    ref_accs = [acc[r] for r in refs]
    np.testing.assert_allclose(float(none["test_acc_at_best_mean"]), np.mean(ref_accs), rtol=1e-12)
    np.testing.assert_allclose(float(none["test_acc_at_best_std"]), sample_std(ref_accs), rtol=1e-12)
    assert none["cka_impact_mean"] == none["cka_impact_std"] == ""
    assert [r["augmentation"] for r in rows] == ["cutout", "flip", "none"]

    md = (exp / "cka" / "cka_table.md").read_text().splitlines()
    flip_line = next(line for line in md if line.startswith("| g | flip |"))
    assert flip_line == (f"| g | flip | {np.mean(flip_accs):.4f} ± {sample_std(flip_accs):.4f} (3) | "
                         f"{np.mean(layer_means):.4f} ± {sample_std(layer_means):.4f} (3) |")
    assert f"| g | cutout | {acc['cutout']:.4f} (1) | {np.mean(impacts['cutout']):.4f} (1) |" in md
    assert any(line.startswith("| g | none |") and line.endswith(" (3) | - |") for line in md)
    for figure in ("cka_heatmaps.png", "cka_impact.png"):
        assert (exp / "cka" / "g" / figure).stat().st_size > 10_000


def test_two_references_and_old_configs_give_the_papers_formula(tmp_path):
    # An experiment recorded before cka.augmentation existed: labels are the rows, one run each.
    exp = tmp_path / "old"
    rng = np.random.default_rng(1)
    refs = ["none1", "none2"]
    for label in ("none1", "none2", "cutout"):
        write_trial(exp, label, None, refs, 0.5)
    cka = {pair: rng.uniform(0.3, 1.0, (LAYERS, LAYERS))
           for pair in [("none1", "none2"), ("none1", "cutout"), ("none2", "cutout")]}
    for (a, b), matrix in cka.items():
        write_cka(exp, a, b, matrix)
    study.report(exp)
    table = read_csv(exp / "cka" / "cka_table.csv")
    assert [(r["augmentation"], r["n"]) for r in table] == [("cutout", "1"), ("none", "2")]
    d = {pair: np.diag(m) for pair, m in cka.items()}
    paper = (d["none1", "none2"] - (d["none1", "cutout"] + d["none2", "cutout"]) / 2) / d["none1", "none2"]
    np.testing.assert_allclose(float(table[0]["cka_impact_mean"]), paper.mean(), rtol=1e-12)


def test_study_runs_of_the_cka_study_space():
    module = spaces.load_module("cka_study")
    assert module.study_runs(("flip", "cutout")) == [
        ("none1", "none"), ("none2", "none"), ("flip", "flip"), ("cutout", "cutout")]
    assert module.study_runs(("flip",), seeds=3) == [("none1", "none"), ("none2", "none"), ("none3", "none"),
                                                      ("flip1", "flip"), ("flip2", "flip"), ("flip3", "flip")]
    with pytest.raises(UserError, match="seeds must be a whole number >= 1"):
        module.study_runs(seeds=0)
    with pytest.raises(UserError, match="unknown augmentation 'rotate'; valid: flip, crop"):
        module.study_runs(("rotate",))
    # Every run of the full grid resolves; seeds differ; references and augmentation are set.
    runs = spaces.load("cka_study", {"smoke": True, "seeds": 3})["param_space"]["variant"]["grid_search"]
    assert len(runs) == 3 + 3 * 10 and len({r["seed"] for r in runs}) == len(runs)
    assert {r["cka"]["augmentation"] for r in runs} == {"none", *module.AUGMENTATIONS}
    assert all(r["cka"]["references"] == ["none1", "none2", "none3"] for r in runs)
    assert len(spaces.load("cka_study", {"smoke": True})["param_space"]["variant"]["grid_search"]) == 12
