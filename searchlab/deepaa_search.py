"""DeepAA's search as a Tune searcher: pretrain, then one trial per layer, then evaluation trials.

``DeepAASearcher`` suggests, in this order:

1. the proxy's pretraining (one ``deepaa_pretrain`` trial; every search shares its proxy);
2. for each search (``seeds`` independent DeepAA searches, and with ``deepta_steps`` one DeepTA
   measurement per seed), layer 1, then layer k once layer k-1 has completed, its logits read from
   that trial's last result. A search stops after ``layers`` layers, or early once a layer gives
   the identity at least ``identity_threshold``. DeepTA layers are uniform and never move (Adam's
   rate 0): their trials only measure cos(g_V, g_T) and the reward spread of stacked uniform
   layers, the paper's Fig. 4 baseline;
3. the evaluation trials (``kind`` train): each search's policy cut to every depth of
   ``eval_layers`` (queued as soon as that layer is searched), and the ``baselines``, ``eval_seeds``
   seeds each. They fill the slots the searches leave idle, the searched policies first.

Each finished search is exported to ``EXPERIMENT/deepaa/<search>.npz`` (the authors' layout). The
whole state is a plain dict of numbers, strings and lists, pickled by ``save`` and put back by
``restore``: a resumed sweep goes on at the layer (and, through the layer trial's checkpoint, the
step) where it stopped.
"""
import copy
import os
import pickle

import numpy as np
from ray.tune.search import Searcher

from searchlab import deepaa
from searchlab.augment import policies
from searchlab.errors import UserError

# The baselines' pipelines (a name, or a path to a policy .npz file such as the published ones).
# TrivialAugment and RandAugment as in the TrivialAugment code DeepAA evaluates with: flip, crop,
# the policy, cutout 16. "deepta" is as many uniform layers as the searched policy has.
BASELINES = {
    "none": [],
    "standard": [{"op": "flip", "p": 0.5}, {"op": "pad_crop", "padding": 4}],
    "trivialaugment": [{"op": "flip", "p": 0.5}, {"op": "pad_crop", "padding": 4}, {"op": "trivialaugment"},
                       {"op": "cutout", "size": 16}],
    "randaugment": [{"op": "flip", "p": 0.5}, {"op": "pad_crop", "padding": 4}, {"op": "randaugment", "n": 2, "m": 14},
                    {"op": "cutout", "size": 16}],
    "deepta": None,
}


class DeepAASearcher(Searcher):
    """See the module docstring. ``search`` holds the trial config groups of the search trials
    (``deepaa_trials.DEFAULTS``: data, proxy, deepaa settings, device), ``evaluate`` the training
    config of the evaluation trials (its augment pipeline is set per policy)."""

    def __init__(self, search=None, evaluate=None, layers=6, seeds=1, identity_threshold=None,
                 deepta_steps=0, eval_layers=None, eval_seeds=1, baselines=("deepta",), mirror=True,
                 batch_augment=1, experiment=None):
        super().__init__(metric=None, mode=None)
        self.search = copy.deepcopy(search or {})
        self.evaluate = copy.deepcopy(evaluate or {})
        self.layers, self.identity_threshold, self.deepta_steps = layers, identity_threshold, deepta_steps
        self.eval_layers = sorted(set(eval_layers or [layers]))
        self.eval_seeds, self.mirror, self.batch_augment = eval_seeds, mirror, batch_augment
        self.experiment = experiment
        self._check(seeds, baselines)
        searches = {f"deepaa-s{s}": {"method": "deepaa", "seed": s} for s in range(seeds)}
        if deepta_steps:
            searches.update({f"deepta-s{s}": {"method": "deepta", "seed": s} for s in range(seeds)})
        # Everything below is the state save() pickles: numbers, strings, lists and dicts.
        self.state = {
            "pretrain": "todo",  # todo | running | done | failed
            "searches": {name: {**s, "logits": [], "running": None, "status": "searching", "evaluated": []}
                         for name, s in searches.items()},
            "baselines": [self._evaluation(label, pipeline, seed) for label, pipeline in self._baselines(baselines)
                          for seed in range(eval_seeds)],
            "evaluations": [],  # of the searched policies, once their searches are done
            "trials": {},       # trial id -> {"role": pretrain | layer | evaluation, "search", "layer"}
            "exported": {},     # search -> the policy file written
        }

    # ---- configs of the three kinds ------------------------------------------------------------

    def _check(self, seeds, baselines):
        for name, value in (("layers", self.layers), ("seeds", seeds), ("eval_seeds", self.eval_seeds),
                            ("batch_augment", self.batch_augment)):
            if not isinstance(value, int) or value < 1:
                raise UserError(f"deepaa searcher: {name} must be a whole number >= 1, got {value!r}")
        if not all(isinstance(k, int) and 1 <= k <= self.layers for k in self.eval_layers):
            raise UserError(f"deepaa searcher: eval_layers must be depths in 1..{self.layers} (layers), "
                            f"got {self.eval_layers}")
        for baseline in baselines:
            if baseline not in BASELINES and not str(baseline).endswith(".npz"):
                raise UserError(f"unknown deepaa baseline {baseline!r}; valid: {', '.join(BASELINES)} "
                                "or a policy .npz file")
        # Every kind of trial this searcher will suggest, resolved now: a bad setting fails here.
        from searchlab.sweep import resolve_kind

        for config in self.example_configs():
            resolve_kind(config)

    def example_configs(self):
        """A trial config of each kind this searcher suggests (spaces.check_data reads their data)."""
        return [self._pretrain_config(), self._layer_config("deepaa-s0", 0, []),
                self._evaluation("check", [], 0)["config"]]

    def _pretrain_config(self):
        return {"kind": "deepaa_pretrain", **{k: v for k, v in self.search.items() if k != "deepaa"},
                "label": "proxy"}

    def _layer_config(self, name, seed, logits, method="deepaa"):
        settings = dict(self.search.get("deepaa", {}))
        if method == "deepta":  # uniform layers that stay uniform: a measurement, not a search
            settings.update(init="uniform", lr=0.0, cos_after=False, steps=self.deepta_steps)
            settings["report_every"] = min(settings.get("report_every", 16), self.deepta_steps)
        frozen = deepaa.policy_probs(logits).astype(float).tolist() if logits else []
        return {"kind": "deepaa_layer", **self.search, "deepaa": {**settings, "layer": len(logits) + 1,
                                                                  "frozen": frozen},
                "seed": seed, "label": f"{name}/layer{len(logits) + 1}"}

    def _baselines(self, baselines):
        for baseline in baselines:
            if baseline == "deepta":
                uniform = np.full((self.layers, len(deepaa.Space())), 1 / len(deepaa.Space()), dtype=np.float32)
                yield f"deepta-L{self.layers}", [self._policy_op(uniform)]
            elif baseline in BASELINES:
                yield baseline, BASELINES[baseline]
            else:  # a policy file: read on the driver, so that the workers need no copy of it
                loaded = policies.load_policy(str(baseline))
                if [tuple(e) for e in loaded["table"]] != [tuple(e) for e in deepaa.Space().table]:
                    raise UserError(f"policy {baseline} was searched on another table than deepaa_table()")
                yield os.path.basename(str(baseline))[:-4], [self._policy_op(loaded["policy_probs"])]

    def _policy_op(self, probs):
        # float32 probabilities, as in a policy file: sampling from these and from the file agree.
        return {"op": "deepaa", "policy_probs": np.asarray(probs, dtype=np.float32).tolist(), "mirror": self.mirror}

    def _evaluation(self, label, pipeline, seed):
        cfg = copy.deepcopy(self.evaluate)
        cfg["augment"] = {**cfg.get("augment", {}), "pipeline": pipeline}
        if self.batch_augment > 1:
            cfg.update(regime="batch_augment", batch_augment={"copies": self.batch_augment})
        return {"label": label, "config": {"kind": "train", **cfg, "seed": seed, "label": label}}

    # ---- Tune's calls ----------------------------------------------------------------------------

    def suggest(self, trial_id):
        state = self.state
        if state["pretrain"] == "todo":
            state["pretrain"] = "running"
            return self._start(trial_id, {"role": "pretrain"}, self._pretrain_config())
        if state["pretrain"] == "done":
            for name, search in state["searches"].items():
                if search["status"] == "searching" and search["running"] is None:
                    search["running"] = trial_id
                    config = self._layer_config(name, search["seed"], search["logits"], search["method"])
                    return self._start(trial_id, {"role": "layer", "search": name,
                                                  "layer": len(search["logits"]) + 1}, config)
        # Evaluations fill the slots the searches leave idle: the searched policies' first, then the
        # baselines, which need no search.
        for queue in (state["evaluations"], state["baselines"]):
            if queue:
                return self._start(trial_id, {"role": "evaluation"}, queue.pop(0)["config"])
        if state["pretrain"] == "running" or any(s["running"] for s in state["searches"].values()):
            return None  # Tune asks again once a layer completes
        return Searcher.FINISHED

    def _start(self, trial_id, role, config):
        self.state["trials"][trial_id] = role
        return config

    def on_trial_complete(self, trial_id, result=None, error=False):
        role = self.state["trials"].get(trial_id)
        if role is None:  # not one of ours (e.g. a trial restarted under a new id)
            return
        if role["role"] == "pretrain":
            self.state["pretrain"] = "failed" if error else "done"
            if error:  # no proxy, no search: the baselines are still evaluated
                for search in self.state["searches"].values():
                    search["status"] = "failed"
        elif role["role"] == "layer":
            self._layer_done(role["search"], result, error)

    def _layer_done(self, name, result, error):
        search = self.state["searches"][name]
        search["running"] = None
        if error or not result or "logits" not in result:
            search["status"] = "failed"
            return
        search["logits"].append(list(result["logits"]))
        if search["method"] == "deepta":  # a measurement: nothing to export or evaluate
            search["status"] = "done" if len(search["logits"]) == self.layers else "searching"
            return
        k, threshold = len(search["logits"]), self.identity_threshold
        done = k == self.layers or (threshold is not None and result.get("identity_prob", 0.0) >= threshold)
        # A depth of eval_layers is evaluated as soon as it is searched; a search that stops early
        # stands in for the deeper ones with all its layers.
        depths = {min(d, k) for d in self.eval_layers} if done else {k} & set(self.eval_layers)
        self._evaluate(name, search, sorted(depths - set(search["evaluated"])))
        if done:
            search["status"] = "done"
            self._export(name, search)

    def _evaluate(self, name, search, depths):
        """Queue the evaluations of the search's policy cut to each of ``depths``, one per seed."""
        probs = deepaa.policy_probs(search["logits"])
        for depth in depths:
            search["evaluated"].append(depth)
            for seed in range(self.eval_seeds):
                self.state["evaluations"].append(
                    self._evaluation(f"{name}-L{depth}", [self._policy_op(probs[:depth])], seed))

    def _export(self, name, search):
        if self.experiment:
            folder = os.path.join(self.experiment, "deepaa")
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"{name}.npz")
            deepaa.export_policy(path, search["logits"])
            self.state["exported"][name] = path

    # ---- resume ----------------------------------------------------------------------------------

    def save(self, checkpoint_path):
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.state, f)

    def restore(self, checkpoint_path):
        with open(checkpoint_path, "rb") as f:
            self.state = pickle.load(f)
