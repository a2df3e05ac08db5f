"""Run, resume and inspect sweeps: a search-space spec becomes a Tuner.

An experiment directory is ``<storage>/<name>``. Next to Tune's own files it holds
``searchlab_sweep.json``, the space and arguments it was started with, which is all ``resume``
needs to rebuild the same Tuner.
"""
import datetime
import glob
import json
import os
from pathlib import Path

from searchlab import spaces
from searchlab.errors import UserError

RECORD = "searchlab_sweep.json"
DEFAULT_STORAGE = "~/searchlab_results"
# What `status` shows for each trial, in this order, when reported.
STATUS_METRICS = ("epoch", "train_loss", "val_acc", "best_val_acc", "test_acc_at_best")


def run(space, args=None, name=None, storage=None, address=None):
    """Start a sweep; return the experiment directory."""
    spec = spaces.load(space, args)
    if not address:  # on a cluster the data lives on the workers, which the driver cannot see
        spaces.check_data(spec)
    name = name or f"{Path(space).stem}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    storage = Path(storage or os.environ.get("SEARCHLAB_RESULTS", DEFAULT_STORAGE)).expanduser().resolve()
    experiment = storage / name
    if glob.glob(str(experiment / "experiment_state-*.json")):
        raise UserError(f"experiment {experiment} exists; continue it with `searchlab resume "
                        f"{experiment}` or pick another --name")
    experiment.mkdir(parents=True, exist_ok=True)
    (experiment / RECORD).write_text(json.dumps(
        {"space": space, "args": args or {}, "name": name, "address": address}, indent=2))

    from ray import tune

    _init_ray(address)
    tuner = tune.Tuner(
        _trainable(spec, experiment),
        param_space={} if spec["searcher"] == "optuna" else spec["param_space"],
        tune_config=tune.TuneConfig(
            search_alg=_searcher(spec),
            scheduler=_scheduler(spec),
            num_samples=spec["num_samples"],
            max_concurrent_trials=spec["max_concurrent_trials"],
            reuse_actors=True,
        ),
        run_config=_run_config(spec, name, storage, experiment),
    )
    tuner.fit()
    return experiment


def resume(experiment, address=None):
    """Finish an interrupted sweep: unfinished and errored trials continue from their checkpoints."""
    experiment = Path(experiment).expanduser().resolve()
    record = read_record(experiment)
    states = sorted(glob.glob(str(experiment / "experiment_state-*.json")))
    if not states:
        raise UserError(f"nothing to resume in {experiment}: no experiment_state-*.json "
                        "(the sweep stopped before its first trial started; start it again)")
    trials_before = len(trial_table(experiment))
    spec = spaces.load(record["space"], record["args"])

    from ray import tune

    _init_ray(address or record.get("address"))
    tuner = tune.Tuner.restore(
        str(experiment), _trainable(spec, experiment), resume_errored=True,
        param_space=None if spec["searcher"] == "optuna" else spec["param_space"])
    # The run config, CKA callback included, comes back from the experiment's tuner.pkl.
    tuner.fit()
    # Tune starts a fresh one-trial run when a restore fails; never let that pass for a resume.
    trials_after = len(trial_table(experiment))
    if trials_after < trials_before:
        raise RuntimeError(f"resume of {experiment} lost trials ({trials_before} before, "
                           f"{trials_after} after): Tune did not restore the experiment state")
    return experiment


def read_record(experiment):
    path = Path(experiment) / RECORD
    if not path.is_file():
        raise UserError(f"{experiment} is not a searchlab experiment directory (no {RECORD})")
    return json.loads(path.read_text())


def trial_table(experiment):
    """One row per trial: name, status, latest metrics. Read from Tune's experiment state."""
    from ray.tune import ExperimentAnalysis

    experiment = Path(experiment).expanduser().resolve()
    read_record(experiment)
    if not glob.glob(str(experiment / "experiment_state-*.json")):
        return []
    trials = sorted(ExperimentAnalysis(str(experiment)).trials, key=str)
    configs = [spaces.flatten(t.config) for t in trials]
    # The config keys whose values differ between trials say what each trial is.
    keys = dict.fromkeys(k for c in configs for k in c)
    varying = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    rows = []
    for trial, config in zip(trials, configs):
        result = trial.last_result or {}
        rows.append({"trial": str(trial), "status": trial.status,
                     **{k: _short(config.get(k)) for k in varying},
                     **{k: result[k] for k in STATUS_METRICS if k in result}})
    return rows


def _short(value):
    """A config value as a table cell: op lists and mixes by their names."""
    if isinstance(value, list) and all(isinstance(v, dict) and "op" in v for v in value):
        return "+".join(v["op"] for v in value) or "none"
    if isinstance(value, dict) and "name" in value:
        return value["name"]
    return "" if value is None else value


def format_table(rows):
    if not rows:
        return "no trials yet"
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


# ---- Tuner parts --------------------------------------------------------------------------------

def _init_ray(address):
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)


def _trainable(spec, experiment):
    from ray import tune

    from searchlab.trainable import train

    resources = {"cpu": 1, "gpu": 0, **spec["resources"]}
    # The experiment directory lets a trial find checkpoints newer than Tune's last snapshot.
    return tune.with_resources(tune.with_parameters(train, experiment_dir=str(experiment)),
                               {"cpu": resources["cpu"], "gpu": resources["gpu"]})


def _searcher(spec):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if spec["searcher"] == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(space=spec["param_space"], metric=spec["metric"], mode=spec["mode"],
                            sampler=optuna.samplers.TPESampler(seed=spec["seed"]))
    return BasicVariantGenerator(random_state=spec["seed"])


def _scheduler(spec):
    if spec["scheduler"] == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # time_attr "epoch" is the trainable's own counter, so rungs are in epochs.
        return ASHAScheduler(time_attr="epoch", metric=spec["metric"], mode=spec["mode"],
                             max_t=_max_epochs(spec), grace_period=1, reduction_factor=2)
    return None


def _max_epochs(spec):
    from searchlab.config import DEFAULTS

    epochs = [e.get("optim", {}).get("epochs") for e in spaces.examples(spec["param_space"])]
    return max([e for e in epochs if isinstance(e, int)] or [DEFAULTS["optim"]["epochs"]])


def _callbacks(spec, experiment):
    if not spec["cka"]:
        return None
    from searchlab.analysis.actors import CKACallback

    options = {"actors": 1, **spec["cka"]}
    return [CKACallback(experiment, resources={k: v for k, v in options.items() if k != "actors"},
                        actors=options["actors"])]


def _run_config(spec, name, storage, experiment):
    from ray import tune

    return tune.RunConfig(
        callbacks=_callbacks(spec, experiment),
        name=name,
        storage_path=str(storage),
        failure_config=tune.FailureConfig(max_failures=spec["max_failures"]),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        sync_config=tune.SyncConfig(sync_artifacts=True),
        verbose=1,
    )
