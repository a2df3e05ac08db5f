"""searchlab report on fake experiment folders written as a sweep leaves them (the sweep's record,
each trial's record, result.json and a checkpoint through the checkpoint module, Tune's experiment
state): a plain sweep with seeds, a GPU setting, a published setting and an unfinished trial, and the
studies' own fake experiments (tests/test_figures.py, test_refine_figures.py, test_deepaa_figures.py).
Every number is checked against numpy on the values written. No Ray, no training."""
import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from searchlab import checkpoint
from searchlab.analysis import report
from searchlab.config import DEFAULTS

STATE = {"model": {}, "optimizer": {}, "best": {"epoch": 1}, "history": []}
EPOCHS = 4
NUMBER = r"[-+0-9.e]+"


def write_experiment(exp, trials, planned=None, states=None):
    """The sweep's record, and Tune's experiment state when ``states`` ({folder: status}) is given."""
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "searchlab_sweep.json").write_text(json.dumps({"space": "fake", "args": {}, "name": exp.name,
                                                          "trials": planned}))
    if states is not None:
        entries = [[json.dumps({"trial_id": name, "status": status, "relative_logdir": name, "config": {}}), "{}"]
                   for name, status in states.items()]
        (exp / "experiment_state-2026-12-02_10-00-00.json").write_text(json.dumps({"trial_data": entries}))


def write_trial(exp, name, config, rows, reports, resources=None):
    """A trial folder: its record, one result.json line per report and a checkpoint of its last report."""
    folder = exp / name
    folder.mkdir(parents=True, exist_ok=True)
    record = {"config": config, "reports": reports, "resources": resources or {"cpu": 1.0, "gpu": 0.0}}
    (folder / "searchlab_trial.json").write_text(json.dumps(record))
    with open(folder / "result.json", "a") as f:
        for row in rows:
            f.write(json.dumps({**row, "config": config}) + "\n")
    if rows:
        save = folder / f"checkpoint_{len(rows) - 1:06d}"
        save.mkdir()
        checkpoint.save(str(save), len(rows), STATE, config, rows[-1], {})


def he_config(seed, lr=0.1, model="resnet20"):
    """ResNet-20 with He et al.'s CIFAR-10 setting (PUBLISHED), at learning rate ``lr``."""
    cfg = copy.deepcopy(DEFAULTS)
    cfg["data"]["dataset"] = "cifar10"
    cfg["model"]["name"] = model
    cfg["optim"].update(lr=lr, weight_decay=1e-4, schedule="step", epochs=EPOCHS)
    cfg["seed"] = seed
    return cfg


def rows_of(rng, reports):
    return [{"epoch": e, "val_acc": float(rng.uniform(0.3, 0.9)), "train_loss": float(rng.uniform(0.1, 2)),
             "test_acc_at_best": float(rng.uniform(0.5, 0.95)), "best_val_acc": float(rng.uniform(0.5, 0.95)),
             "time_this_iter_s": float(rng.uniform(20, 90))} for e in range(1, reports + 1)]


@pytest.fixture
def plain(tmp_path):
    """(experiment, {setting: [rows of its finished trials]}, [every trial's (rows, resources)]):
    lr 0.1 (He et al.'s setting) x 3 seeds on 1 CPU, lr 0.05 x 2 seeds on half a GPU, an unfinished
    lr 0.1 trial (2 of 4 reports, far-off values) and one trial of the 7 planned not yet created."""
    rng = np.random.default_rng(0)
    exp = tmp_path / "exp"
    finished, every, states = {"lr": [], "half": []}, [], {}
    for seed in range(3):
        rows = rows_of(rng, EPOCHS)
        write_trial(exp, f"train_a{seed}", he_config(seed), rows, EPOCHS)
        finished["lr"].append(rows)
        every.append((rows, 1.0, "CPU"))
        states[f"train_a{seed}"] = "TERMINATED"
    for seed in range(2):
        rows = rows_of(rng, EPOCHS)
        write_trial(exp, f"train_b{seed}", he_config(seed, lr=0.05), rows, EPOCHS, {"cpu": 2.0, "gpu": 0.5})
        finished["half"].append(rows)
        every.append((rows, 0.5, "GPU"))
        states[f"train_b{seed}"] = "TERMINATED"
    rows = [{**r, "test_acc_at_best": 0.0, "val_acc": 0.0} for r in rows_of(rng, 2)]
    write_trial(exp, "train_c", he_config(9), rows, EPOCHS)
    every.append((rows, 1.0, "CPU"))
    states["train_c"] = "RUNNING"
    write_experiment(exp, None, planned=7, states=states)
    return exp, finished, every


def parse(cell):
    """(mean, std or nan, n) of a "mean ± std (n=k)" cell."""
    found = re.fullmatch(rf"({NUMBER})(?: ± ({NUMBER}))? \(n=(\d+)\)", cell)
    assert found, cell
    return float(found[1]), float(found[2]) if found[2] else float("nan"), int(found[3])


def hours(cell, device):
    return float(re.search(rf"({NUMBER}) {device}-h", cell)[1])


def test_rows_over_seeds_cost_and_published_value(plain, tmp_path):
    exp, finished, every = plain
    _, built = report.write(exp, tmp_path / "out", tensorboard=False)
    table = built["sections"][0].tables[0]
    # The seeds share a row; only lr sets rows apart (dataset and model are always shown).
    assert table.columns[:3] == ["data.dataset", "model.name", "optim.lr"]
    rows = {row[2]: dict(zip(table.columns, row)) for row in table.rows}
    assert set(rows) == {"0.1", "0.05"}
    he, half = rows["0.1"], rows["0.05"]
    assert he["finished"] == "3/4" and half["finished"] == "2/2"
    for row, key in ((he, "lr"), (half, "half")):
        for metric in ("test_acc_at_best", "best_val_acc", "train_loss"):
            values = np.array([r[-1][metric] for r in finished[key]])  # last reports of finished trials only
            mean, std, n = parse(row[metric])
            assert n == len(values)
            assert mean == pytest.approx(values.mean(), rel=1e-3)
            assert std == pytest.approx(values.std(ddof=1), rel=1e-2)
    # He et al.'s ResNet-20 on CIFAR-10 beside ours; lr 0.05 is not their setting.
    assert he["published (%)"] == 8.75 and "He et al. 2016" in he["source"]
    assert half["published (%)"] == "" and half["source"] == ""
    errors = [100 * (1 - r[-1]["test_acc_at_best"]) for r in finished["lr"]]
    assert parse(he["test error (%)"])[0] == pytest.approx(np.mean(errors), rel=1e-3)
    # Cost: every report's seconds x the request, finished or not (the unfinished trial counts too).
    cpu = sum(r["time_this_iter_s"] for rows, _, device in every[:3] + every[5:] for r in rows) / 3600
    gpu = sum(0.5 * r["time_this_iter_s"] for rows, _, device in every[3:5] for r in rows) / 3600
    assert hours(he["cost"], "CPU") == pytest.approx(cpu, rel=5e-3) and "(4 trials)" in he["cost"]
    assert hours(half["cost"], "GPU") == pytest.approx(gpu, rel=5e-3)
    total = {row[0]: float(row[1]) for row in built["sections"][-1].tables[0].rows}
    assert total == pytest.approx({"CPU": cpu, "GPU": gpu}, rel=1e-3)


def test_progress_of_a_running_sweep(plain):
    exp, _, every = plain
    state = report.progress(report.read_trials(str(exp)), planned=7)
    assert state["finished"] == 5 and state["planned"] == 7 and state["running"] == 1
    # Reports to come: 2 of the running trial and 4 of the trial not created yet, at the median
    # seconds of a report so far, one trial running.
    median = np.median([r["time_this_iter_s"] for rows, _, _ in every for r in rows])
    assert state["seconds_left"] == pytest.approx((2 + 4) * median)
    assert report.progress_line(state).startswith("5 of 7 trials finished, 1 running; about ")


def test_markdown_html_and_tensorboard(plain, tmp_path):
    exp, _, _ = plain
    path, _ = report.write(exp, fmt="md")
    text = Path(path).read_text()
    assert Path(path).parent == exp / "report"
    for image in re.findall(r"\]\((figures/[^)]+)\)", text):
        assert (Path(path).parent / image).is_file()
    assert "curves.png" in text and "| cifar10 | resnet20 | 0.1 | 3/4 |" in text
    path, _ = report.write(exp, tmp_path / "html", fmt="html")
    page = Path(path).read_text()
    # Self-contained: the figures are inside, nothing is fetched from anywhere.
    assert page.count("src='data:image/png;base64,") == 1
    assert not re.search(r"(?:src|href)\s*=\s*['\"](?!data:)", page) and "http" not in page and "@import" not in page
    assert "<table class='sortable'>" in page and "<script>" in page
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(exp / "report"))
    events.Reload()
    assert events.Tags()["images"] == ["report/curves"]
    assert events.Images("report/curves")[-1].step == 5  # trials finished


def test_cli_writes_the_report_and_names_a_folder_that_is_not_an_experiment(plain, tmp_path):
    exp, _, _ = plain
    run = subprocess.run([sys.executable, "-m", "searchlab.cli", "report", str(exp), "--format", "html"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "5 of 7 trials finished" in run.stdout and (exp / "report" / "report.html").is_file()
    run = subprocess.run([sys.executable, "-m", "searchlab.cli", "report", str(tmp_path)], capture_output=True,
                         text=True)
    assert run.returncode != 0 and "is not a searchlab experiment" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_published_needs_the_whole_setting():
    assert report.published_for(he_config(0, model="resnet56"))["test_err"] == 6.97
    other = he_config(0)
    other["augment"]["pipeline"] = [{"op": "flip", "p": 0.5}]  # not flip + crop
    assert report.published_for(other) is None
    other = he_config(0)
    other["data"]["train_size"] = 5000  # a subset is not the paper's setting
    assert report.published_for(other) is None


# ---- the studies: their own fake experiments, with the sweep's record and per-report seconds added ----

from test_cka_seeds import experiment as cka_experiment  # noqa: E402,F401 (fixtures)
from test_deepaa_figures import experiment as deepaa_experiment  # noqa: E402,F401
from test_figures import experiment as splitbn_experiment  # noqa: E402,F401
from test_refine_figures import experiment as refine_experiment  # noqa: E402,F401


def add_seconds(exp, rng):
    """Give every trial folder per-report seconds in its result.json (made, or its rows extended),
    and the experiment the sweep's record; {trial folder: its seconds}."""
    seconds = {}
    for folder in sorted(p for p in exp.iterdir() if p.is_dir() and p.name not in ("figures", "deepaa", "cka", "report")):
        path = folder / "result.json"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines()]
        else:  # one report per epoch the checkpoint has trained
            rows = [{}] * checkpoint.read_record(checkpoint.newest(str(folder)))["epoch"]
        rows = [{**row, "time_this_iter_s": float(rng.uniform(10, 100))} for row in rows]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        seconds[folder.name] = [row["time_this_iter_s"] for row in rows]
    write_experiment(exp, None)
    return seconds


def label_of(exp, name):
    """The study label of a trial: its row in the study's table."""
    rows = (exp / name / "result.json").read_text().splitlines()
    newest = checkpoint.newest(str(exp / name))
    config = checkpoint.read_record(newest)["config"] if newest else json.loads(rows[-1])["config"]
    cka = config.get("cka", {})
    return cka.get("augmentation") or cka.get("label") or config.get("label")


@pytest.mark.parametrize("study, fixture, title, tables", [
    ("splitbn", "splitbn_experiment", "Split BatchNorm", ["table.csv"]),
    ("refine", "refine_experiment", "Refinement", ["table.csv"]),
    ("deepaa", "deepaa_experiment", "Deep AutoAugment", ["deepaa_table.csv", "deepaa_cost.csv"]),
    ("cka", "cka_experiment", "CKA", ["cka_table.csv"]),
])
def test_each_study_gets_its_tables_figures_and_cost(study, fixture, title, tables, request, tmp_path):
    exp = Path(request.getfixturevalue(fixture)[0])
    seconds = add_seconds(exp, np.random.default_rng(1))
    _, built = report.write(exp, tmp_path / "out", fmt="html", tensorboard=False)
    assert built["study"] == study
    section = built["sections"][0]
    assert section.title.startswith(title)
    assert [t.title for t in section.tables] == tables
    assert section.figures and all(Path(p).is_file() and p.endswith(".png") for p in section.figures)
    # Each fixture has one unfinished trial (deepaa's counts by its searcher's own count).
    if study != "deepaa":
        assert built["progress"]["finished"] == len(seconds) - 1
    table = section.tables[0]
    assert "cost" in table.columns and len(table.rows) >= 2
    label = table.columns.index("augmentation" if study == "cka" else "label")
    for row in table.rows:  # a label's cost: all its trials' seconds (finished or not), on 1 CPU each
        expected = sum(sum(s) for name, s in seconds.items() if label_of(exp, name) == row[label]) / 3600
        assert hours(row[-1], "CPU") == pytest.approx(expected, rel=5e-3)
    for mean_std in (c for row in table.rows for c in row if " ± " in str(c)):
        parse(mean_std)  # every spread is a "mean ± std (n=k)" cell
    assert "<img" in Path(tmp_path / "out" / "report.html").read_text()
