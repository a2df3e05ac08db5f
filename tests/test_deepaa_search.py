"""DeepAASearcher without Ray: Tune's calls (suggest, on_trial_complete, save, restore) made by hand,
with the layer trials' results made up. Checks the order of the trials, what each layer is given,
the export, the evaluations, early stopping, failures, and that a restored searcher goes on exactly
as one never interrupted."""
import numpy as np
import pytest
import torch
from ray.tune.search import Searcher

from searchlab import deepaa, sweep
from searchlab.augment import policies
from searchlab.deepaa_search import BASELINES, DeepAASearcher
from searchlab.errors import UserError

E = len(deepaa.Space())
SEARCH = {"data": {"dataset": "cifar10", "val_size": 2000}, "proxy": {"model": "small_cnn", "epochs": 1},
          "deepaa": {"steps": 4, "report_every": 2}}
EVALUATE = {"model": {"name": "small_cnn"}, "optim": {"epochs": 1}}


def make(tmp_path=None, **options):
    options = {"search": SEARCH, "evaluate": EVALUATE, "layers": 2, "baselines": ("deepta", "none"), **options}
    return DeepAASearcher(experiment=str(tmp_path) if tmp_path else None, **options)


def logits_for(label, layer):
    """Made-up final logits of a layer trial, different for every search and layer."""
    rng = np.random.default_rng(abs(hash((label, layer))) % 2**32)
    return rng.normal(size=E).tolist()


class Driver:
    """Plays Tune: asks for trials while fewer than ``slots`` run, completes the oldest running one."""

    def __init__(self, searcher, slots=2):
        self.searcher, self.slots, self.running, self.log, self.next_id = searcher, slots, [], [], 0

    def fill(self):
        while len(self.running) < self.slots:
            self.next_id += 1
            config = self.searcher.suggest(f"t{self.next_id}")
            if config is None or config == Searcher.FINISHED:
                return config
            self.running.append((f"t{self.next_id}", config))
            self.log.append(config)

    def complete_one(self, result_for=None):
        trial_id, config = self.running.pop(0)
        result = (result_for or made_up_result)(config)
        self.searcher.on_trial_complete(trial_id, result=result, error=result is None)

    def run(self, result_for=None, limit=200):
        for _ in range(limit):
            if self.fill() == Searcher.FINISHED and not self.running:
                return self.log
            self.complete_one(result_for)
        raise AssertionError("the searcher never finished")


def made_up_result(config):
    if config["kind"] == "deepaa_layer":
        return {"logits": logits_for(config["label"].split("/")[0], config["deepaa"]["layer"]),
                "identity_prob": 0.1, "device_hours": 0.5}
    return {"done": True}


def test_pretrain_first_then_layer_by_layer_then_evaluations(tmp_path):
    searcher = make(tmp_path, seeds=2, eval_layers=[1, 2], eval_seeds=2)
    log = Driver(searcher).run()
    kinds = [c["kind"] for c in log]
    assert kinds[0] == "deepaa_pretrain" and kinds.count("deepaa_pretrain") == 1
    layers = [c for c in log if c["kind"] == "deepaa_layer"]
    assert sorted(c["label"] for c in layers) == ["deepaa-s0/layer1", "deepaa-s0/layer2",
                                                 "deepaa-s1/layer1", "deepaa-s1/layer2"]
    for c in layers:  # layer k is given the softmax of the logits layer k-1 finished with
        search, k = c["label"].split("/")[0], c["deepaa"]["layer"]
        expected = [torch.softmax(torch.tensor(logits_for(search, j), dtype=torch.float64), 0).float().tolist()
                    for j in range(1, k)]
        np.testing.assert_allclose(c["deepaa"]["frozen"], expected, rtol=0, atol=0)
        assert c["seed"] == int(search[-1]) and c["deepaa"]["steps"] == 4
    # A depth is evaluated once that layer is searched, and before the layer after it is suggested.
    evaluations = [c for c in log if c["kind"] == "train"]
    assert sorted({c["label"] for c in evaluations}) == ["deepaa-s0-L1", "deepaa-s0-L2", "deepaa-s1-L1",
                                                         "deepaa-s1-L2", "deepta-L2", "none"]
    assert all(sorted(c["seed"] for c in evaluations if c["label"] == label) == [0, 1]
               for label in {c["label"] for c in evaluations})
    order = [c["label"] for c in log]
    for s in (0, 1):
        for depth in (1, 2):
            first = min(i for i, x in enumerate(order) if x == f"deepaa-s{s}-L{depth}")
            assert order.index(f"deepaa-s{s}/layer{depth}") < first
        assert order.index(f"deepaa-s{s}-L1") < order.index("none")  # searched policies before baselines


def test_exported_policy_and_evaluation_policies_match_the_reported_logits(tmp_path):
    searcher = make(tmp_path, eval_layers=[1, 2])
    log = Driver(searcher).run()
    loaded = policies.load_policy(str(tmp_path / "deepaa" / "deepaa-s0.npz"))
    expected = deepaa.policy_probs([logits_for("deepaa-s0", 1), logits_for("deepaa-s0", 2)])
    np.testing.assert_array_equal(loaded["policy_probs"], expected)
    for depth in (1, 2):
        config, = [c for c in log if c["label"] == f"deepaa-s0-L{depth}"]
        op, = config["augment"]["pipeline"]
        assert op["op"] == "deepaa" and op["mirror"] is True
        # Bit-identical to the file's rows: sampling from either draws the same.
        np.testing.assert_array_equal(np.asarray(op["policy_probs"], dtype=np.float32), expected[:depth])
    deepta, = [c for c in log if c["label"] == "deepta-L2"]
    np.testing.assert_array_equal(np.asarray(deepta["augment"]["pipeline"][0]["policy_probs"]),
                                  np.full((2, E), np.float32(1 / E)))
    none, = [c for c in log if c["label"] == "none"]
    assert none["augment"]["pipeline"] == BASELINES["none"]


def test_identity_threshold_stops_a_search_early_and_deepta_measures_uniform_layers():
    def identity_heavy(config):
        result = made_up_result(config)
        if config["kind"] == "deepaa_layer":
            result["identity_prob"] = 0.97 if config["label"].startswith("deepaa") else 1 / E
        return result

    log = Driver(make(layers=4, identity_threshold=0.95, deepta_steps=3)).run(identity_heavy)
    labels = [c["label"] for c in log if c["kind"] == "deepaa_layer"]
    assert [x for x in labels if x.startswith("deepaa")] == ["deepaa-s0/layer1"]
    # DeepTA measurements do not stop on identity: all 4 uniform layers, never moved, 3 steps each.
    deepta = [c for c in log if c["kind"] == "deepaa_layer" and c["label"].startswith("deepta")]
    assert [c["deepaa"]["layer"] for c in deepta] == [1, 2, 3, 4]
    assert all(c["deepaa"]["init"] == "uniform" and c["deepaa"]["lr"] == 0 and c["deepaa"]["steps"] == 3
               for c in deepta)
    # The policy stopped at one layer is evaluated with its one layer.
    assert "deepaa-s0-L1" in {c["label"] for c in log if c["kind"] == "train"}


def test_a_failed_layer_ends_its_search_without_evaluations_and_a_failed_pretrain_leaves_the_baselines():
    def fail_layer_2(config):
        return None if config.get("deepaa", {}).get("layer") == 2 else made_up_result(config)

    log = Driver(make()).run(fail_layer_2)
    assert not [c for c in log if c["label"].startswith("deepaa-s0-L")]
    assert {c["label"] for c in log if c["kind"] == "train"} == {"deepta-L2", "none"}

    log = Driver(make()).run(lambda c: None if c["kind"] == "deepaa_pretrain" else made_up_result(c))
    assert [c["kind"] for c in log].count("deepaa_layer") == 0
    assert {c["label"] for c in log if c["kind"] == "train"} == {"deepta-L2", "none"}


@pytest.mark.parametrize("stop_after", [1, 3, 5, 8])
def test_a_restored_searcher_goes_on_exactly_as_one_never_interrupted(tmp_path, stop_after):
    reference = Driver(make(tmp_path / "a", seeds=2, deepta_steps=2)).run()

    first = Driver(make(tmp_path / "b", seeds=2, deepta_steps=2))
    for _ in range(stop_after):
        first.fill()
        first.complete_one()
    first.fill()
    first.searcher.save(str(tmp_path / "searcher.pkl"))
    # Tune rebuilds the searcher from tuner.pkl (its constructor-time state), restores the saved
    # state, and re-adds the unfinished trials with their ids.
    resumed = Driver(make(tmp_path / "b", seeds=2, deepta_steps=2))
    resumed.searcher.restore(str(tmp_path / "searcher.pkl"))
    resumed.running, resumed.log, resumed.next_id = list(first.running), list(first.log), first.next_id
    assert resumed.run() == reference


def test_unknown_trial_ids_are_ignored():
    searcher = make()
    searcher.suggest("t1")
    searcher.on_trial_complete("not-ours", result={"logits": [0.0] * E})
    assert searcher.state["pretrain"] == "running"


@pytest.mark.parametrize("options, message", [
    ({"eval_layers": [3]}, "eval_layers must be depths in 1..2"),
    ({"baselines": ["autoaugment2"]}, "unknown deepaa baseline 'autoaugment2'"),
    ({"layers": 0}, "layers must be a whole number >= 1"),
    ({"search": {"proxy": {"model": "resnet9000"}}}, "unknown proxy.model 'resnet9000'"),
    ({"search": {"deepaa": {"init": "zeros"}}}, "init must be one of identity, uniform"),
    ({"evaluate": {"model": {"name": "resnet9000"}}}, "unknown model.name 'resnet9000'"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(UserError, match=message):
        make(**options)


def test_a_policy_file_baseline_is_inlined_from_the_file(tmp_path):
    path = tmp_path / "policy_DeepAA_cifar_1.npz"
    probs = deepaa.export_policy(str(path), [logits_for("x", 1), logits_for("x", 2)])
    log = Driver(make(baselines=[str(path)])).run()
    config, = [c for c in log if c["label"] == "policy_DeepAA_cifar_1"]
    np.testing.assert_array_equal(np.asarray(config["augment"]["pipeline"][0]["policy_probs"], dtype=np.float32), probs)


def test_by_kind_dispatch_and_per_kind_resources():
    from ray.tune import PlacementGroupFactory

    table = {"deepaa_layer": {"cpu": 2, "gpu": 0.5}, "train": {"cpu": 1, "gpu": 0.25}}
    assert sweep._kind_resources(table, {"kind": "deepaa_layer"}) == PlacementGroupFactory([{"CPU": 2, "GPU": 0.5}])
    assert sweep._kind_resources(table, {}) == PlacementGroupFactory([{"CPU": 1, "GPU": 0.25}])
    assert sweep._kind_resources(table, {"kind": "deepaa_pretrain"}) == PlacementGroupFactory([{"CPU": 1, "GPU": 0}])
    resolved = sweep.resolve_kind({"kind": "deepaa_layer", "deepaa": {"layer": 1}})
    assert resolved["kind"] == "deepaa_layer" and resolved["proxy"]["model"] == "wrn40_2"
    assert sweep.TRAINABLES["by_kind"].metrics(resolved)[1] == ["logits"]
    with pytest.raises(UserError, match="unknown trial kind 'pretrain'; valid kinds: train, deepaa_pretrain"):
        sweep.resolve_kind({"kind": "pretrain"})


def test_a_missing_dataset_stops_the_sweep_before_it_starts(tmp_path, monkeypatch):
    from searchlab import spaces

    monkeypatch.setenv("SEARCHLAB_DATA", str(tmp_path))
    with pytest.raises(UserError, match="cifar10"):
        spaces.check_data(spaces.load("deepaa", {"smoke": True}))
