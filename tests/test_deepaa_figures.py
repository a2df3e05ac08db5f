"""Deep AutoAugment's figures and tables, on fake experiments written as Tune leaves them (result.json
rows, and a policy file through deepaa.export_policy): two DeepAA and two DeepTA searches of two
layers, a proxy pretraining, evaluations with repeats and one unfinished trial, and a sweep caught
early. Every number is checked against numpy on the values written. No Ray, no training."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from searchlab import deepaa
from searchlab.analysis.deepaa_figures import deepaa_figures
from searchlab.augment import ops

PNG = b"\x89PNG\r\n\x1a\n"
ENTRIES = len(deepaa.Space())
STEPS = (4, 8)  # two reports per layer


def write_trial(experiment, folder, config, rows):
    """A trial folder with its result.json: one JSON line per report, each with the trial's config."""
    path = Path(experiment) / folder
    path.mkdir(parents=True)
    with open(path / "result.json", "w") as f:
        for row in rows:
            f.write(json.dumps({**row, "config": config, "trial_id": folder}) + "\n")


def layer_rows(rng, layer, deepta, finished=True, steps=STEPS):
    rows, hours = [], 0.0
    for report, step in enumerate(steps, 1):
        hours += float(rng.uniform(0.1, 1))
        rows.append({"epoch": report, "layer": layer, "step": step, "cos_before": float(rng.uniform(0, 1)),
                     "cos_before_std": 0.1, "cos_after": None if deepta else float(rng.uniform(0, 1)),
                     "reward_mean": 0.01, "reward_std": float(rng.uniform(0, 0.1)), "entropy": 4.0,
                     "identity_prob": 0.1, "top5": "Identity 0.100, flip 0.050", "step_time": 0.5,
                     "device_hours": hours})
    if finished:
        rows[-1]["logits"] = rng.normal(size=ENTRIES).tolist()
    return rows


def pretrain(experiment, epochs=3, reported=3):
    rows = [{"epoch": e, "train_loss": 2.0, "epoch_time": 1.0, "device_hours": 0.25 * e}
            for e in range(1, reported + 1)]
    if reported == epochs:
        rows[-1].update(proxy_val_acc=0.5, cached=False)
    write_trial(experiment, "deepaa_pretrain_00000_proxy", {"kind": "deepaa_pretrain", "proxy": {"epochs": epochs},
                                                            "label": "proxy"}, rows)
    return rows


def evaluation(experiment, rng, label, seed, epochs=3, reported=3):
    rows = [{"epoch": e, "test_acc": float(rng.uniform(0.5, 0.9)), "test_acc_at_best": float(rng.uniform(0.5, 0.9)),
             "val_acc": 0.7, "best_val_acc": 0.7, "epoch_time": 1.0} for e in range(1, reported + 1)]
    write_trial(experiment, f"train_{label}{seed}_{label}",
                {"kind": "train", "optim": {"epochs": epochs}, "seed": seed, "label": label}, rows)
    return rows


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def number(text):
    return float("nan") if text == "" else float(text)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """(experiment folder, the paths written, what was written): {(search, layer): rows}, the
    pretraining's rows, {label: [finished trials' last rows]}, and deepaa-s0's exported probabilities."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("deepaa") / "experiment"
    layers = {}
    for search in ("deepaa-s0", "deepaa-s1", "deepta-s0", "deepta-s1"):
        for layer in (1, 2):
            rows = layers[search, layer] = layer_rows(rng, layer, search.startswith("deepta"))
            seed = int(search[-1])
            write_trial(root, f"deepaa_layer_{search}{layer}_{search}-layer{layer}",
                        {"kind": "deepaa_layer", "deepaa": {"layer": layer}, "seed": seed,
                         "label": f"{search}/layer{layer}"}, rows)
    # deepaa-s0 was exported; deepaa-s1 not yet (its figures come from its layers' logits).
    (root / "deepaa").mkdir()
    exported = deepaa.export_policy(str(root / "deepaa" / "deepaa-s0.npz"),
                                    [layers["deepaa-s0", k][-1]["logits"] for k in (1, 2)])
    pretrain_rows = pretrain(root)
    finals = {}
    for label, seeds in (("deepaa-s0-L1", 2), ("deepaa-s0-L2", 3), ("deepta-L2", 2), ("none", 1)):
        finals[label] = [evaluation(root, rng, label, seed)[-1] for seed in range(seeds)]
    evaluation(root, rng, "none", 7, reported=2)  # unfinished: left out
    (root / "figures").mkdir()  # a folder without result.json
    return root, deepaa_figures(str(root)), layers, pretrain_rows, finals, exported


def test_writes_every_output(experiment):
    root, written, *_ = experiment
    names = sorted(Path(p).name for p in written)
    assert names == sorted(["deepaa_policy.png", "deepaa_policy.csv", "deepaa_policy_levels.csv", "deepaa_layers.csv",
                            "deepaa_cos.png", "deepaa_cos.csv", "deepaa_steps.png", "deepaa_table.csv",
                            "deepaa_table.md", "deepaa_accuracy.png", "deepaa_cost.csv", "deepaa_cost.png"])
    for path in written:
        assert Path(path).parent == root / "figures"
        if path.endswith(".png"):
            assert Path(path).read_bytes()[:8] == PNG


def test_policy_marginals(experiment):
    root, _, layers, _, _, exported = experiment
    table = deepaa.Space().table
    names = np.array([name for name, _ in table])
    # The file's own level column (the authors' layout), for the entries of ops with a range.
    with np.load(root / "deepaa" / "deepaa-s0.npz") as data:
        levels = data["mags"].ravel()
    ranged = np.array([name in ops.RANGES for name in names])
    policies = {"deepaa-s0": exported.astype(float),  # the float32 probabilities a policy file holds
                "deepaa-s1": deepaa.policy_probs([layers["deepaa-s1", k][-1]["logits"] for k in (1, 2)]).astype(float)}
    op_rows = read_csv(root / "figures" / "deepaa_policy.csv")
    level_rows = read_csv(root / "figures" / "deepaa_policy_levels.csv")
    assert {r["search"]: r["source"] for r in op_rows} == {"deepaa-s0": "exported", "deepaa-s1": "layers 1-2 so far"}
    for search, probs in policies.items():
        mine = [r for r in op_rows if r["search"] == search]
        assert [r["op"] for r in mine if r["layer"] == "1"] == list(dict.fromkeys(names))
        for r in mine:
            expected = probs[int(r["layer"]) - 1][names == r["op"]].sum()
            assert float(r["probability"]) == pytest.approx(expected, abs=1e-9)
        mine = [r for r in level_rows if r["search"] == search]
        assert len(mine) == 2 * ops.DEEPAA_LEVELS
        for r in mine:
            row = probs[int(r["layer"]) - 1]
            expected = row[ranged & (levels == int(r["level"]))].sum()
            assert float(r["probability"]) == pytest.approx(expected, abs=1e-9)
            assert float(r["share_of_ops_with_a_range"]) == pytest.approx(expected / row[ranged].sum(), abs=1e-9)


def test_cos_and_reward_per_layer(experiment):
    root, _, layers, *_ = experiment
    rows = read_csv(root / "figures" / "deepaa_layers.csv")
    assert len(rows) == 8
    for r in rows:
        last = layers[r["search"], int(r["layer"])][-1]
        assert r["finished"] == "True" and r["reports"] == "2"
        for metric in ("cos_before", "cos_after", "reward_std", "device_hours"):
            if last[metric] is None:  # DeepTA's cos after the step
                assert r[metric] == ""
            else:
                assert float(r[metric]) == pytest.approx(last[metric])
    stats = read_csv(root / "figures" / "deepaa_cos.csv")
    assert [(r["method"], int(r["layer"])) for r in stats] == [(method, layer) for method in ("deepaa", "deepta")
                                                               for layer in (1, 2)]
    for r in stats:
        method, layer = r["method"], int(r["layer"])
        for metric in ("cos_before", "cos_after", "reward_std"):
            found = np.array([layers[f"{method}-s{s}", layer][-1][metric] for s in (0, 1)])
            if method == "deepta" and metric == "cos_after":  # DeepTA's layers do not step
                assert (r[f"{metric}_mean"], r[f"{metric}_std"], r[f"{metric}_n"]) == ("", "", "0")
                continue
            assert float(r[f"{metric}_mean"]) == pytest.approx(found.mean())
            assert float(r[f"{metric}_std"]) == pytest.approx(found.std(ddof=1))
            assert r[f"{metric}_n"] == "2"


def test_table(experiment):
    root, _, _, _, finals, _ = experiment
    rows = read_csv(root / "figures" / "deepaa_table.csv")
    assert [r["label"] for r in rows] == ["deepaa-s0-L1", "deepaa-s0-L2", "deepta-L2", "none"]
    for r in rows:
        found = finals[r["label"]]
        assert int(r["n"]) == len(found)
        assert r["unfinished"] == ("1" if r["label"] == "none" else "0")  # its epoch-2 trial is left out
        for metric in ("test_acc", "test_acc_at_best"):
            values = 100 * np.array([row[metric] for row in found])
            assert float(r[f"{metric}_mean"]) == pytest.approx(values.mean())
            assert number(r[f"{metric}_std"]) == pytest.approx(values.std(ddof=1) if len(values) > 1 else np.nan,
                                                               nan_ok=True)
            assert int(r[f"{metric}_n"]) == len(values)
    md = (root / "figures" / "deepaa_table.md").read_text()
    values = 100 * np.array([row["test_acc"] for row in finals["deepaa-s0-L2"]])
    assert f"| deepaa-s0-L2 | 3 | 0 | {values.mean():.2f} ± {values.std(ddof=1):.2f} |" in md


def test_cost(experiment):
    root, _, layers, pretrain_rows, _, _ = experiment
    rows = read_csv(root / "figures" / "deepaa_cost.csv")
    cost = {(r["search"], r["layer"]): float(r["device_hours"]) for r in rows}
    assert cost["proxy", "pretraining"] == pytest.approx(pretrain_rows[-1]["device_hours"])
    for search in ("deepaa-s0", "deepaa-s1", "deepta-s0", "deepta-s1"):
        hours = [layers[search, k][-1]["device_hours"] for k in (1, 2)]
        assert [cost[search, str(k)] for k in (1, 2)] == pytest.approx(hours)
        assert cost[search, "total"] == pytest.approx(sum(hours))
    assert cost["all", "total"] == pytest.approx(pretrain_rows[-1]["device_hours"] + sum(
        rows[-1]["device_hours"] for rows in layers.values()))


def test_partial_experiment(tmp_path):
    """Pretraining done, layer 1 of a search running (no logits yet), nothing else: what can be drawn is."""
    rng = np.random.default_rng(1)
    pretrain(tmp_path)
    rows = layer_rows(rng, 1, deepta=False, finished=False, steps=(4,))
    write_trial(tmp_path, "deepaa_layer_1_deepaa-s0-layer1",
                {"kind": "deepaa_layer", "seed": 0, "label": "deepaa-s0/layer1"}, rows)
    evaluation(tmp_path, rng, "none", 0, reported=1)  # a baseline's first epoch
    names = sorted(Path(p).name for p in deepaa_figures(str(tmp_path)))
    assert names == sorted(["deepaa_layers.csv", "deepaa_cos.png", "deepaa_cos.csv", "deepaa_steps.png",
                            "deepaa_table.csv", "deepaa_table.md", "deepaa_cost.csv", "deepaa_cost.png"])
    layer = read_csv(tmp_path / "figures" / "deepaa_layers.csv")[0]
    assert layer["finished"] == "False" and float(layer["cos_before"]) == pytest.approx(rows[-1]["cos_before"])
    table = read_csv(tmp_path / "figures" / "deepaa_table.csv")
    assert [(r["label"], r["n"], r["unfinished"], r["test_acc_mean"]) for r in table] == [("none", "0", "1", "")]
    cost = read_csv(tmp_path / "figures" / "deepaa_cost.csv")
    assert [(r["search"], r["layer"]) for r in cost] == [("proxy", "pretraining"), ("deepaa-s0", "1"),
                                                         ("deepaa-s0", "total"), ("all", "total")]


def test_pretraining_only_and_empty(tmp_path):
    assert deepaa_figures(str(tmp_path)) == []
    assert not (tmp_path / "figures").exists()
    pretrain(tmp_path, reported=1)  # still pretraining: only its cost so far
    written = deepaa_figures(str(tmp_path))
    assert sorted(Path(p).name for p in written) == ["deepaa_cost.csv", "deepaa_cost.png"]
    row = read_csv(tmp_path / "figures" / "deepaa_cost.csv")[0]
    assert (row["finished"], float(row["device_hours"])) == ("False", 0.25)
