"""The refinement study's figures and table, on a fake experiment written through the checkpoint
module: known per-epoch histories and spectra for labels with and without refinement, a fixed-budget
switch sweep, and one unfinished trial. Every number is checked against numpy on the values written.
No Ray, no training."""
import copy
import csv
from pathlib import Path

import numpy as np
import pytest

from searchlab import checkpoint, spaces, sweep
from searchlab.analysis import refinement
from searchlab.config import DEFAULTS
from searchlab.errors import UserError
from searchlab.train import total_epochs

PNG = b"\x89PNG\r\n\x1a\n"
SPECTRA = ("spectrum_class0_at_best", "spectrum_all_at_best", "spectrum_class0_at_last", "spectrum_all_at_last")


def config(label, seed, mix="mixup", epochs=6, refine_epochs=0, start_epoch=None, pipeline="standard",
           gradual=False):
    """A resolved-looking config: the defaults with a refine group (set here, whether or not the
    defaults hold one yet)."""
    cfg = copy.deepcopy(DEFAULTS)
    cfg["optim"]["epochs"] = epochs
    cfg["augment"]["mix"] = {"name": mix, "alpha": 1.0}
    cfg["refine"] = {"epochs": refine_epochs, "start_epoch": start_epoch, "pipeline": pipeline,
                     "lr": "final", "gradual": gradual}
    cfg["label"], cfg["seed"] = label, seed
    return cfg


def write_trial(experiment, name, cfg, rng, spectra=SPECTRA, finished=True):
    """A trial whose checkpoint is at its last epoch (or one before it); its history and arrays."""
    # However total_epochs counts refinement epochs, the trial has trained that many (or one fewer).
    epochs = total_epochs(cfg) - (0 if finished else 1)
    history = []
    for epoch in range(1, epochs + 1):
        test_acc = float(rng.uniform(0.5, 0.95))
        past = [h["test_acc"] for h in history] + [test_acc]
        history.append({"epoch": epoch, "train_loss": float(rng.uniform(0.5, 2)),
                        "train_clean_loss": float(rng.uniform(0.01, 1)), "train_clean_acc": float(rng.uniform(0.5, 1)),
                        "val_loss": float(rng.uniform(0.1, 1)), "val_acc": float(rng.uniform(0.5, 1)),
                        "test_loss": float(rng.uniform(0.1, 1)), "test_acc": test_acc,
                        "test_acc_max": max(past), "test_acc_median10": float(np.median(past[-10:])), "lr": 0.1})
    arrays = {name: np.sort(rng.uniform(0.01, 10, 16))[::-1].copy() for name in spectra}
    folder = Path(experiment) / name / f"checkpoint_{epochs:06d}"
    folder.mkdir(parents=True)
    state = {"model": {}, "optimizer": {}, "best": {"epoch": 1}, "history": history}
    checkpoint.save(str(folder), epochs, state, cfg, history[-1], arrays)
    return history, arrays


@pytest.fixture
def experiment(tmp_path):
    """{label: [(history, arrays)]} of an experiment with mixup trials (none, 2 refinement epochs, and
    2 gradual epochs without augmentation) and a cutmix switch sweep in a budget of 6 epochs."""
    rng = np.random.default_rng(0)
    exp = tmp_path / "exp"
    written = {}

    def add(label, seeds, spectra=SPECTRA, last_seed_lacks=None, **settings):
        for seed in seeds:
            found = [s for s in spectra if not (s == last_seed_lacks and seed == seeds[-1])]
            written.setdefault(label, []).append(
                write_trial(exp, f"{label}_s{seed}", config(label, seed, **settings), rng, found))

    add("mixup", range(3))
    add("mixup+refine", range(3), last_seed_lacks="spectrum_all_at_last", refine_epochs=2)
    add("mixup+gradual", [0], refine_epochs=2, pipeline=[], gradual=True)
    add("cutmix", range(2), spectra=(), mix="cutmix")
    add("cutmix@4", range(2), spectra=(), mix="cutmix", start_epoch=4)
    add("cutmix@2", range(2), spectra=(), mix="cutmix", start_epoch=2)
    # Refined, but no plain cutmix trained 8 epochs: no counterpart.
    add("cutmix8+refine", [0], spectra=(), mix="cutmix", epochs=8, refine_epochs=2)
    # Unfinished: values far from the others, so counting it would show.
    bad = config("mixup", 9)
    write_trial(exp, "mixup_unfinished", bad, np.random.default_rng(1), finished=False)
    return exp, written


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def last(written, label, metric):
    return np.array([history[-1][metric] for history, _ in written[label]])


def test_every_file_is_written(experiment):
    exp, _ = experiment
    paths = refinement.refine_figures(exp)
    folder = exp / "figures"
    assert sorted(Path(p).name for p in paths) == sorted(
        ["curves.png", "curves.csv", "spectrum.png", "spectrum.npz", "switch.png", "switch.csv",
         "table.md", "table.csv"])
    assert all(Path(p).parent == folder and Path(p).is_file() for p in paths)
    for png in folder.glob("*.png"):
        content = png.read_bytes()
        assert content[:8] == PNG and len(content) > 5_000, png.name


def test_table_against_numpy(experiment):
    exp, written = experiment
    refinement.refine_figures(exp)
    table = {row["label"]: row for row in read_csv(exp / "figures" / "table.csv")}
    # Rows in the order of the trial folders' names ("<label>_s<seed>": "8" < "@" < "_" and "+" < "_").
    assert list(table) == ["cutmix8+refine", "cutmix@2", "cutmix@4", "cutmix", "mixup+gradual", "mixup+refine",
                           "mixup"]
    assert {label: int(row["n"]) for label, row in table.items()} == {label: len(w) for label, w in written.items()}
    assert table["mixup"]["n"] == "3"  # the unfinished seed is left out
    assert {label: row["refinement"] for label, row in table.items()} == {
        "cutmix": "none", "cutmix8+refine": "2 epochs", "cutmix@2": "switch at 2", "cutmix@4": "switch at 4",
        "mixup": "none", "mixup+gradual": "2 epochs, none, gradual", "mixup+refine": "2 epochs"}
    for label, row in table.items():
        for metric, scale in [("test_acc_max", 100), ("test_acc", 100), ("test_acc_median10", 100),
                              ("train_clean_loss", 1)]:
            found = scale * last(written, label, metric)
            assert float(row[f"{metric}_mean"]) == pytest.approx(np.mean(found), rel=1e-12), (label, metric)
            assert int(row[f"{metric}_n"]) == len(found)
            if len(found) > 1:
                assert float(row[f"{metric}_std"]) == pytest.approx(np.std(found, ddof=1), rel=1e-12)
            else:
                assert row[f"{metric}_std"] == ""

    # Pairs: same config but for the refine group, label and seed; optim.epochs included.
    pairs = {label: row["without"] for label, row in table.items() if row["without"]}
    assert pairs == {"mixup+refine": "mixup", "mixup+gradual": "mixup", "cutmix@4": "cutmix", "cutmix@2": "cutmix"}
    for label, without in pairs.items():
        gain = 100 * (np.mean(last(written, label, "test_acc")) - np.mean(last(written, without, "test_acc")))
        assert float(table[label]["gain_vs_without"]) == pytest.approx(gain, rel=1e-9)
    assert table["cutmix8+refine"]["gain_vs_without"] == "" and table["mixup"]["gain_vs_without"] == ""

    markdown = (exp / "figures" / "table.md").read_text()
    acc = 100 * last(written, "mixup+refine", "test_acc")
    best = 100 * last(written, "mixup+refine", "test_acc_max")
    gain = np.mean(acc) - 100 * np.mean(last(written, "mixup", "test_acc"))
    assert (f"| mixup+refine | 3 | 2 epochs | {np.mean(best):.2f} ± {np.std(best, ddof=1):.2f} | "
            f"{np.mean(acc):.2f} ± {np.std(acc, ddof=1):.2f} |") in markdown
    assert f"| mixup | {gain:+.2f} |" in markdown
    loss = last(written, "mixup+gradual", "train_clean_loss")[0]
    assert "| mixup+gradual | 1 | 2 epochs, none, gradual |" in markdown and f"| {loss:.4g} | mixup |" in markdown


def test_curves_are_the_seed_means_of_the_histories(experiment):
    exp, written = experiment
    refinement.refine_figures(exp)
    rows = read_csv(exp / "figures" / "curves.csv")
    for label, trials in written.items():
        mine = [r for r in rows if r["label"] == label]
        epochs = len(trials[0][0])
        assert [int(r["epoch"]) for r in mine] == list(range(1, epochs + 1))
        for metric in ("train_clean_loss", "train_loss", "test_loss"):
            by_epoch = np.array([[h[metric] for h in history] for history, _ in trials])  # seeds x epochs
            np.testing.assert_allclose([float(r[f"{metric}_mean"]) for r in mine], by_epoch.mean(0), rtol=1e-12)
            assert {int(r[f"{metric}_n"]) for r in mine} == {len(trials)}
            if len(trials) > 1:
                np.testing.assert_allclose([float(r[f"{metric}_std"]) for r in mine], by_epoch.std(0, ddof=1),
                                           rtol=1e-12)
            else:
                assert {r[f"{metric}_std"] for r in mine} == {""}


def test_spectrum_is_the_seed_mean(experiment):
    exp, written = experiment
    refinement.refine_figures(exp)
    saved = np.load(exp / "figures" / "spectrum.npz")
    expected = {f"{label}:{name}" for label in ("mixup", "mixup+refine", "mixup+gradual") for name in SPECTRA}
    assert set(saved.files) == expected
    for key in saved.files:
        label, name = key.split(":")
        found = [arrays[name] for _, arrays in written[label] if name in arrays]
        # The seed of mixup+refine that lacks one array is left out of that array's mean only.
        assert len(found) == (2 if (label, name) == ("mixup+refine", "spectrum_all_at_last")
                              else len(written[label]))
        np.testing.assert_allclose(saved[key], np.mean(found, axis=0), rtol=1e-12)


def test_switch_against_the_values_written(experiment):
    exp, written = experiment
    refinement.refine_figures(exp)
    rows = read_csv(exp / "figures" / "switch.csv")
    # One setting has several switch epochs: cutmix in 6 epochs, never switched standing at 6. The
    # mixup labels differ in refine.epochs (or gradual): one switch epoch each, no curve.
    assert [(r["setting"], int(r["switch_epoch"])) for r in rows] == [("all", 2), ("all", 4), ("all", 6)]
    for row, label in zip(rows, ["cutmix@2", "cutmix@4", "cutmix"]):
        error = 100 * (1 - last(written, label, "test_acc"))
        assert float(row["test_err_mean"]) == pytest.approx(np.mean(error), rel=1e-12)
        assert float(row["test_err_std"]) == pytest.approx(np.std(error, ddof=1), rel=1e-12)
        assert int(row["n"]) == 2


def test_a_switch_at_the_end_is_no_refinement(tmp_path):
    """The fixed-budget grid's "never": start_epoch = optim.epochs trains no refinement epoch."""
    rng = np.random.default_rng(4)
    written = {label: [write_trial(tmp_path, f"{label}_s{seed}", config(label, seed, start_epoch=start), rng)
                       for seed in range(2)]
               for label, start in [("switch=2", 2), ("switch=6", 6)]}
    refinement.refine_figures(tmp_path)
    table = {row["label"]: row for row in read_csv(tmp_path / "figures" / "table.csv")}
    assert table["switch=6"]["refinement"] == "none (switch at the end, 6)"
    assert table["switch=2"]["refinement"] == "switch at 2" and table["switch=2"]["without"] == "switch=6"
    gain = 100 * (np.mean(last(written, "switch=2", "test_acc")) - np.mean(last(written, "switch=6", "test_acc")))
    assert float(table["switch=2"]["gain_vs_without"]) == pytest.approx(gain, rel=1e-9)
    rows = read_csv(tmp_path / "figures" / "switch.csv")
    assert [int(r["switch_epoch"]) for r in rows] == [2, 6]
    for row, label in zip(rows, ["switch=2", "switch=6"]):
        assert float(row["test_err_mean"]) == pytest.approx(100 * (1 - np.mean(last(written, label, "test_acc"))))


def test_no_switch_figure_with_one_switch_epoch(tmp_path):
    rng = np.random.default_rng(2)
    for seed in range(2):
        write_trial(tmp_path, f"plain_s{seed}", config("mixup", seed), rng)
        write_trial(tmp_path, f"refined_s{seed}", config("mixup+refine", seed, refine_epochs=2), rng)
    names = {Path(p).name for p in refinement.refine_figures(tmp_path)}
    assert names == {"curves.png", "curves.csv", "spectrum.png", "spectrum.npz", "table.md", "table.csv"}
    assert not (tmp_path / "figures" / "switch.png").exists() and not (tmp_path / "figures" / "switch.csv").exists()


def test_nothing_finished_writes_nothing(tmp_path):
    assert refinement.refine_figures(tmp_path) == []
    write_trial(tmp_path, "t0", config("x", 0), np.random.default_rng(3), finished=False)
    assert refinement.refine_figures(tmp_path) == []
    assert not (tmp_path / "figures").exists()


def test_a_space_can_name_the_refine_figures(experiment):
    exp, _ = experiment
    assert spaces.check({"param_space": {}, "figures": "refine"}, "t")["figures"] == "refine"
    with pytest.raises(UserError, match="valid: .*refine"):
        spaces.check({"param_space": {}, "figures": "refinement"}, "t")
    assert sorted(sweep.write_figures({"figures": "refine"}, exp)) == sorted(refinement.refine_figures(exp))


def test_figures_read_checkpoints_through_the_checkpoint_module():
    source = Path(refinement.__file__).read_text()
    assert "state.pt" not in source and "trial.json\"" not in source and "torch.load" not in source
