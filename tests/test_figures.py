"""The split-BatchNorm study's figures and tables, on a fake experiment written through the checkpoint
module: known metrics and arrays for two labels x three seeds and one unfinished trial. No Ray."""
import csv
from pathlib import Path

import numpy as np
import pytest

from searchlab import checkpoint
from searchlab.analysis import figures

LAMBDAS = [0.0, 0.25, 0.5, 0.75, 1.0]
STATE = {"model": {}, "optimizer": {}, "best": {}, "history": []}
PNG = b"\x89PNG\r\n\x1a\n"


def config(label, seed, split, epochs=2, **extra):
    return {"label": label, "seed": seed, "regime": "splitbn" if split else "standard",
            "splitbn": {"lambdas": LAMBDAS, "split": split, "aux": "randaugment"},
            "optim": {"epochs": epochs, "lr": 0.1}, "phases": [], **extra}


def write_trial(experiment, name, cfg, metrics, arrays, epoch=2):
    folder = experiment / name / "checkpoint_000002"
    folder.mkdir(parents=True)
    checkpoint.save(str(folder), epoch, STATE, cfg, metrics, arrays)


@pytest.fixture
def experiment(tmp_path):
    """Trial folders in name order: three split seeds, an unfinished split trial, three plain seeds."""
    rng = np.random.default_rng(0)
    exp = tmp_path / "exp"
    written = {"split": [], "plain": []}
    # (val_acc, uce_at_best) per trial, chosen for the Pareto front: a tie on the front (s0, s1),
    # a point tied in val_acc but worse in uce (p1), and a plain seed without uce (p2: no point).
    objectives = {"a_split_s0": (0.90, 0.20), "a_split_s1": (0.90, 0.20), "a_split_s2": (0.85, 0.15),
                  "c_plain_s0": (0.92, 0.30), "c_plain_s1": (0.90, 0.25), "c_plain_s2": (0.80, None)}
    for seed in range(3):
        name = f"a_split_s{seed}"
        val, uce = objectives[name]
        metrics = {"val_acc": val, "best_val_acc": val + 0.01, "uce_at_best": uce,
                   "test_acc_at_best": float(rng.uniform(0.8, 0.95)), "fourier_err_at_best": 0.3}
        for lam in LAMBDAS:
            metrics[f"test_acc@lam{lam:g}_at_best"] = float(rng.uniform(0.7, 0.95))
            metrics[f"uce@lam{lam:g}_at_best"] = float(rng.uniform(0.1, 0.3))
            metrics[f"uce_fog@lam{lam:g}_at_best"] = float(rng.uniform(0.1, 0.3))
        arrays = {f"fourier{s}_at_best": rng.uniform(0, 1, (8, 8)) for s in ("", "@lam0", "@lam1", "@lam0.5")}
        arrays.update({f"lowpass_acc{s}_at_best": np.sort(rng.uniform(0, 1, 8)) for s in ("", "@lam0", "@lam1", "@lam0.5")})
        write_trial(exp, name, config("splitbn_ra", seed, True), metrics, arrays)
        written["split"].append((metrics, arrays))
    # Unfinished (epoch 1 of 2): values far from the others, so counting it would show.
    bad = {"val_acc": 0.99, "uce_at_best": 0.01, "test_acc_at_best": 0.0, "test_acc@lam0_at_best": 0.0}
    write_trial(exp, "b_split_unfinished", config("splitbn_ra", 9, True), bad,
                {"fourier@lam0_at_best": np.full((8, 8), 100.0)}, epoch=1)
    for seed in range(3):
        name = f"c_plain_s{seed}"
        val, uce = objectives[name]
        metrics = {"val_acc": val, "test_acc_at_best": float(rng.uniform(0.8, 0.95))}
        if uce is not None:
            metrics["uce_at_best"] = uce
        arrays = {"fourier_at_best": rng.uniform(0, 1, (8, 8)), "lowpass_acc_at_best": rng.uniform(0, 1, 8)}
        write_trial(exp, name, config("flip_crop", seed, False), metrics, arrays)
        written["plain"].append((metrics, arrays))
    return exp, written, objectives


def read_table(path):
    with open(path, newline="") as f:
        return {row["label"]: row for row in csv.DictReader(f)}


def test_figures_and_tables_of_a_fake_experiment(experiment):
    exp, written, objectives = experiment
    paths = figures.splitbn_figures(exp, objectives=[("val_acc", "max"), ("uce_at_best", "min")])
    folder = exp / "figures"
    names = sorted(Path(p).name for p in paths)
    assert names == sorted(["lambda.png", "fourier_splitbn_ra.png", "fourier_splitbn_ra.npz",
                            "fourier_flip_crop.png", "fourier_flip_crop.npz", "lowpass.png",
                            "pareto.png", "pareto.csv", "table.md", "table.csv"])
    assert all(Path(p).parent == folder for p in paths)
    for png in folder.glob("*.png"):
        content = png.read_bytes()
        assert content[:8] == PNG and len(content) > 5_000, png.name

    # The table: one row per label in order of first appearance; mean and sample std of the values
    # written, in percent; the unfinished trial left out (n = 3); a missing metric skipped (n = 2).
    table = read_table(folder / "table.csv")
    assert list(table) == ["splitbn_ra", "flip_crop"]
    assert table["splitbn_ra"]["n"] == "3" and table["flip_crop"]["n"] == "3"
    checks = [("splitbn_ra", m) for m in ("test_acc_at_best", "uce_at_best", "test_acc@lam0_at_best",
                                         "test_acc@lam0.25_at_best", "uce@lam1_at_best", "uce@lam0.5_at_best")]
    checks += [("flip_crop", "test_acc_at_best"), ("flip_crop", "uce_at_best")]
    for label, metric in checks:
        group = written["split" if label == "splitbn_ra" else "plain"]
        values = 100 * np.array([m[metric] for m, _ in group if metric in m])
        row = table[label]
        assert float(row[f"{metric}_mean"]) == pytest.approx(np.mean(values), rel=1e-12), (label, metric)
        assert float(row[f"{metric}_std"]) == pytest.approx(np.std(values, ddof=1), rel=1e-12), (label, metric)
        assert int(row[f"{metric}_n"]) == len(values)
    assert table["flip_crop"]["uce_at_best_n"] == "2"
    assert table["flip_crop"]["test_acc@lam0_at_best_mean"] == ""  # a plain label has no lambdas
    assert "val_acc_mean" not in table["splitbn_ra"]  # the table shows test metrics only
    markdown = (folder / "table.md").read_text()
    assert "| label | n | test_acc_at_best | uce_at_best |" in markdown
    mean = 100 * np.mean([m["test_acc_at_best"] for m, _ in written["split"]])
    std = 100 * np.std([m["test_acc_at_best"] for m, _ in written["split"]], ddof=1)
    assert f"| splitbn_ra | 3 | {mean:.2f} ± {std:.2f} |" in markdown
    assert "(n=2)" in markdown

    # The Pareto front: a brute-force dominance check over the finished trials that report both.
    points = {name: (v, u) for name, (v, u) in objectives.items() if u is not None}
    front = {a for a, (va, ua) in points.items()
             if not any(vb >= va and ub <= ua and (vb > va or ub < ua) for vb, ub in points.values())}
    assert front == {"a_split_s0", "a_split_s1", "a_split_s2", "c_plain_s0"}  # ties stay together
    with open(folder / "pareto.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["trial"] for r in rows} == front
    for r in rows:
        assert (float(r["val_acc"]), float(r["uce_at_best"])) == points[r["trial"]]
    # Columns: the config values that differ between trials (seed included: it names the trial).
    assert list(rows[0]) == ["trial", "label", "val_acc", "uce_at_best", "seed", "regime", "splitbn.split"]
    assert {(r["label"], r["seed"], r["splitbn.split"]) for r in rows if r["trial"] == "c_plain_s0"} == {
        ("flip_crop", "0", "false")}

    # The heatmaps drawn are the mean over seeds of the arrays written.
    saved = np.load(folder / "fourier_splitbn_ra.npz")
    assert sorted(saved.files) == ["fourier@lam0.5_at_best", "fourier@lam0_at_best", "fourier@lam1_at_best"]
    for name in saved.files:
        np.testing.assert_allclose(saved[name], np.mean([a[name] for _, a in written["split"]], axis=0))
    plain = np.load(folder / "fourier_flip_crop.npz")
    assert plain.files == ["fourier_at_best"]
    np.testing.assert_allclose(plain["fourier_at_best"], np.mean([a["fourier_at_best"] for _, a in written["plain"]], axis=0))


def test_seed_mean_and_spread_against_numpy(experiment):
    exp, written, _ = experiment
    groups = figures.by_label(figures.finished_trials(exp))
    mean, std, n = figures.seed_mean(groups["splitbn_ra"], "lowpass_acc@lam1_at_best")
    stack = np.stack([a["lowpass_acc@lam1_at_best"] for _, a in written["split"]])
    assert n == 3
    np.testing.assert_allclose(mean, stack.mean(0))
    np.testing.assert_allclose(std, stack.std(0, ddof=1))
    assert figures.seed_mean(groups["flip_crop"], "lowpass_acc@lam1_at_best") is None
    assert figures.spread([0.5]) == (0.5, pytest.approx(np.nan, nan_ok=True), 1)


def test_pareto_front_ties_and_modes():
    points = [(1, 1), (1, 1), (2, 0), (0, 2), (1, 0), (0, 0)]
    # max/max: (1, 0) and (0, 0) are dominated; the two (1, 1) stay together.
    assert figures.pareto_front(points, ("max", "max")) == [0, 1, 2, 3]
    # max/min: lower second objective wins; (2, 0) dominates everything but nothing else is tied.
    assert figures.pareto_front(points, ("max", "min")) == [2]


def test_label_from_differing_config_values(tmp_path):
    for i, (aux, seed) in enumerate([("randaugment", 0), ("gaussian", 0), ("randaugment", 1)]):
        cfg = config(None, seed, True)
        cfg["splitbn"]["aux"] = aux
        write_trial(tmp_path, f"t{i}", cfg, {"test_acc_at_best": 0.5 + i / 10}, {})
    figures.splitbn_figures(tmp_path)
    table = read_table(tmp_path / "figures" / "table.csv")
    assert list(table) == ["splitbn.aux=randaugment", "splitbn.aux=gaussian"]
    assert table["splitbn.aux=randaugment"]["n"] == "2"
    assert float(table["splitbn.aux=randaugment"]["test_acc_at_best_mean"]) == pytest.approx(60.0)


def test_nothing_finished_writes_nothing(tmp_path):
    assert figures.splitbn_figures(tmp_path) == []
    write_trial(tmp_path, "t0", config("x", 0, False), {"test_acc_at_best": 0.5}, {}, epoch=1)
    assert figures.splitbn_figures(tmp_path, objectives=[("val_acc", "max"), ("uce_at_best", "min")]) == []
    assert not (tmp_path / "figures").exists()


def test_bad_objectives_are_refused(tmp_path):
    with pytest.raises(ValueError, match="two \\(metric, mode\\) pairs with mode 'max' or 'min'"):
        figures.splitbn_figures(tmp_path, objectives=[("val_acc", "best"), ("uce_at_best", "min")])


def test_figures_read_checkpoints_through_the_checkpoint_module():
    source = Path(figures.__file__).read_text()
    assert "state.pt" not in source and "trial.json\"" not in source and "torch.load" not in source
