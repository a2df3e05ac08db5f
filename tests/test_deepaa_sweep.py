"""DeepAA's search through real sweeps: the smoke search end to end under Tune (what each layer was
given and reported, the exported policy, the proxy cache, the figures), a layer trial recomputed
in this process, and a driver killed in the middle of a layer, then resumed."""
import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import torch

from searchlab import deepaa, deepaa_trials, sweep
from searchlab.augment import policies
from searchlab.data import load_dataset
from test_resume import SNAPSHOT_S, interrupt, searchlab

TINY = Path(__file__).parent / "spaces" / "deepaa_tiny.py"


def trials(experiment):
    """{label: result.json rows} of every trial of the experiment."""
    found = {}
    for result in Path(experiment).glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            label = rows[0]["config"]["label"]
            assert label not in found or rows[0]["config"]["kind"] == "train", f"{label} ran twice"
            found.setdefault(label, []).append(rows)
    return found


def softmax(logits):
    return torch.softmax(torch.tensor(logits, dtype=torch.float64), 0).float().numpy()


def test_smoke_search_end_to_end(ray_session, cifar_data, tmp_path):
    experiment = sweep.run(str(TINY), name="deepaa", storage=tmp_path)
    found = trials(experiment)
    assert set(found) == {"proxy", "deepaa-s0/layer1", "deepaa-s0/layer2", "deepta-s0/layer1",
                          "deepta-s0/layer2", "deepaa-s0-L2", "none"}
    for label in ("deepaa-s0/layer1", "deepaa-s0/layer2"):
        rows, = found[label]
        # Every report exactly once, every report_every steps; the logits with the last one.
        assert [r["epoch"] for r in rows] == [1, 2] and [r["step"] for r in rows] == [2, 4]
        assert "logits" in rows[-1] and all("logits" not in r for r in rows[:-1])
        assert all(-1 <= r["cos_before"] <= 1 and r["reward_std"] >= 0 for r in rows)
    layer1, layer2 = found["deepaa-s0/layer1"][0], found["deepaa-s0/layer2"][0]
    # Layer 2 was given layer 1's finished policy; the export holds both layers.
    np.testing.assert_array_equal(np.asarray(layer2[0]["config"]["deepaa"]["frozen"], dtype=np.float32),
                                  softmax(layer1[-1]["logits"])[None])
    exported = policies.load_policy(str(experiment / "deepaa" / "deepaa-s0.npz"))["policy_probs"]
    np.testing.assert_array_equal(exported, np.stack([softmax(layer1[-1]["logits"]), softmax(layer2[-1]["logits"])]))
    evaluation, = found["deepaa-s0-L2"]
    np.testing.assert_array_equal(np.asarray(evaluation[-1]["config"]["augment"]["pipeline"][0]["policy_probs"],
                                             dtype=np.float32), exported)
    assert evaluation[-1]["epoch"] == 1 and 0 <= evaluation[-1]["test_acc"] <= 1
    # DeepTA layers are measured, never moved: their policy stays uniform.
    for label in ("deepta-s0/layer1", "deepta-s0/layer2"):
        rows, = found[label]
        np.testing.assert_allclose(softmax(rows[-1]["logits"]), 1 / len(deepaa.Space()), rtol=1e-6)
    assert sorted(p.name for p in (experiment / "figures").glob("deepaa_*.png"))

    # The layer trial recomputed here from the cached proxy, its seed and settings: same logits.
    cfg = deepaa_trials.resolve({k: v for k, v in layer1[0]["config"].items() if k != "kind"})
    torch.set_num_threads(1)  # as the trial (1 CPU)
    d = cfg["data"]
    data = load_dataset(d["dataset"], val_size=d["val_size"], train_size=d["train_size"], root=cifar_data)
    cfg["proxy"]["cache"] = str(tmp_path / "deepaa_proxies")  # beside the experiments on the storage
    proxy = deepaa_trials.load_proxy(cfg, 10, "cpu")
    layer = deepaa.LayerSearch(len(deepaa.Space()), deepaa_trials.settings(cfg), seed=cfg["seed"] * 1000 + 1)
    deepaa.search_layer(proxy, deepaa.search_pools(data, cfg["proxy"]["pretrain_size"]), [], layer,
                        settings=deepaa_trials.settings(cfg))
    np.testing.assert_allclose(layer.logits.detach().numpy(), layer1[-1]["logits"], rtol=0, atol=1e-9)

    # A second search with the same data, proxy recipe and seed reuses the proxy: nothing retrained.
    again = sweep.run(str(TINY), name="again", storage=tmp_path)
    proxy_rows, = trials(again)["proxy"]
    assert len(proxy_rows) == 1 and proxy_rows[0]["cached"] is True


def test_driver_killed_mid_layer_resumes_at_that_layer_and_step(cifar_data, tmp_path):
    experiment, steps, every = tmp_path / "deepaa", 12, 2
    env = {**os.environ, "SEARCHLAB_DATA": cifar_data, "TUNE_GLOBAL_CHECKPOINT_S": SNAPSHOT_S}

    def mid_layer_2():  # layer 2 has reported twice and not finished
        rows = trials(experiment).get("deepaa-s0/layer2", [[]])[0] if experiment.exists() else []
        return 2 <= len(rows) < steps // every

    interrupt(searchlab("sweep", str(TINY), "--arg", f"steps={steps}", "--arg", f"report_every={every}",
                        "--name", "deepaa", "--storage", str(tmp_path)),
              env, mid_layer_2, signal.SIGKILL, seconds=300, waiting_for="the middle of layer 2", whole_group=True)
    before = trials(experiment)
    reported_before = len(before["deepaa-s0/layer2"][0])
    assert reported_before < steps // every, "killed too late to test resume"

    resumed = subprocess.run(searchlab("resume", str(experiment)), env=env, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = trials(experiment)  # raises when a layer ran twice
    assert {"deepaa-s0-L2", "none"} <= set(after)
    for label in ("deepaa-s0/layer1", "deepaa-s0/layer2"):
        rows, = after[label]
        # Every report exactly once, in order, each at its step: the layer went on where it stopped.
        assert [r["epoch"] for r in rows] == list(range(1, steps // every + 1)), label
        assert [r["step"] for r in rows] == list(range(every, steps + 1, every)), label
    layer1, layer2 = after["deepaa-s0/layer1"][0], after["deepaa-s0/layer2"][0]
    assert layer1 == before["deepaa-s0/layer1"][0]  # finished before the kill: not run again
    assert layer2[:reported_before] == before["deepaa-s0/layer2"][0]
    exported = policies.load_policy(str(experiment / "deepaa" / "deepaa-s0.npz"))["policy_probs"]
    np.testing.assert_array_equal(exported, np.stack([softmax(layer1[-1]["logits"]), softmax(layer2[-1]["logits"])]))
