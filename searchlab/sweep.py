"""Run, resume and inspect sweeps: a search-space spec becomes a Tuner.

What a spec can name is in three literal tables: ``TRAINABLES`` (what a trial runs), ``SEARCHERS``
and ``SCHEDULERS`` (each a function of the spec and its ``*_options``).

An experiment directory is ``<storage>/<name>``. Next to Tune's own files it holds
``searchlab_sweep.json``: the space, its arguments and its source text when the sweep started,
which is all ``resume`` needs to rebuild the same Tuner and all a reader needs to know what ran.
"""
import datetime
import glob
import inspect
import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

from ray import tune

from searchlab import checkpoint, cluster, config, deepaa_trials, spaces, trainable, train
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
    storage = str(storage or os.environ.get("SEARCHLAB_RESULTS", DEFAULT_STORAGE))
    if "://" in storage:  # the record, the figures and the state backups are written as local files
        raise UserError(f"--storage {storage}: object-store URIs are not supported yet; mount the bucket "
                        "(e.g. s3fs, gcsfuse) on every node and give its path")
    storage = Path(storage).expanduser().resolve()
    experiment = storage / name
    if glob.glob(str(experiment / "experiment_state-*.json")):
        raise UserError(f"experiment {experiment} exists; continue it with `searchlab resume "
                        f"{experiment}` or pick another --name")
    experiment.mkdir(parents=True, exist_ok=True)
    module = spaces.load_module(space)
    record = {"space": space, "args": args or {}, "name": name, "address": address, "trials": planned_trials(spec),
              "space_file": inspect.getsourcefile(module), "space_source": inspect.getsource(module)}
    # Whole or not at all: a full disk must not leave a record that resume cannot read.
    checkpoint.write_whole(experiment, RECORD, lambda f: f.write(json.dumps(record, indent=2).encode()))

    _init_ray(address)
    _check_cluster(spec, experiment, address)
    _snapshot_on_tunes_clock()
    searcher = build(SEARCHERS, "searcher", spec)
    if hasattr(searcher, "experiment"):  # a searcher that writes into the experiment (DeepAA's policies)
        searcher.experiment = str(experiment)
    tuner = tune.Tuner(
        _trainable(spec),
        param_space={} if spec["searcher"] == "optuna" else spec["param_space"],
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=build(SCHEDULERS, "scheduler", spec),
            num_samples=spec["num_samples"],
            max_concurrent_trials=spec["max_concurrent_trials"],
            # A reused actor keeps its resources from one trial to the next, so analysis actors
            # (CKA) would find no room until the sweep ends: see analysis/actors.py.
            reuse_actors=not spec["cka"],
            trial_dirname_creator=_kind_dirname if spec["trainable"] == "by_kind" else None,
        ),
        run_config=_run_config(spec, name, storage, experiment),
    )
    tuner.fit()
    write_figures(spec, experiment)
    return experiment


def planned_trials(spec):
    """How many trials the sweep will run (None when its searcher decides, as DeepAA's does), for
    ``searchlab report``'s progress: num_samples x the grid's combinations, as Tune counts them."""
    from ray.tune.search.variant_generator import generate_variants

    if spec["searcher"] == "deepaa":
        return None
    if callable(spec["param_space"]):  # Optuna's define-by-run space: one trial per sample
        return spec["num_samples"]
    return spec["num_samples"] * sum(1 for _ in generate_variants(spec["param_space"]))


def resume(experiment, address=None):
    """Finish an interrupted sweep: unfinished and errored trials continue from their checkpoints."""
    experiment = Path(experiment).expanduser().resolve()
    record = read_record(experiment)
    if not _snapshot_written(experiment):
        # Stopped before Tune's first snapshot: there is nothing of Tune's to restore, but the record
        # holds the space and its arguments, so the sweep starts again under the same name.
        set_aside_unstarted(experiment)
        return run(record["space"], record["args"], name=experiment.name, storage=experiment.parent,
                   address=address or record.get("address"))
    repair_state(experiment)
    trials_before = len(trial_table(experiment))
    spec = spaces.load(record["space"], record["args"])

    address = address or record.get("address")
    _init_ray(address)
    _check_cluster(spec, experiment, address)
    _snapshot_on_tunes_clock()
    tuner = tune.Tuner.restore(
        str(experiment), _trainable(spec), resume_errored=True,
        param_space=None if spec["searcher"] == "optuna" else spec["param_space"])
    # The run config, CKA callback included, comes back from the experiment's tuner.pkl.
    tuner.fit()
    # Tune starts a fresh one-trial run when a restore fails; never let that pass for a resume.
    trials_after = len(trial_table(experiment))
    if trials_after < trials_before:
        raise RuntimeError(f"resume of {experiment} lost trials ({trials_before} before, "
                           f"{trials_after} after): Tune did not restore the experiment state")
    write_figures(spec, experiment)
    return experiment


def read_record(experiment):
    path = Path(experiment) / RECORD
    if not path.is_file():
        raise UserError(f"{experiment} is not a searchlab experiment directory (no {RECORD})")
    return json.loads(path.read_text())


def trial_table(experiment):
    """One row per trial: name, a ``*`` in column ``best`` for the best trial by the sweep's metric
    and mode, status, what differs between trials, latest metrics. Read from Tune's experiment state."""
    from ray.tune import ExperimentAnalysis

    experiment = Path(experiment).expanduser().resolve()
    record = read_record(experiment)
    if not glob.glob(str(experiment / "experiment_state-*.json")):
        return []
    for path in _state_files(experiment):
        if not _readable(path):
            raise UserError(f"{path.name} in {experiment} is cut short (the driver was killed while Tune "
                            f"wrote it); `searchlab resume {experiment}` puts back its last readable copy")
    trials = sorted(ExperimentAnalysis(str(experiment)).trials, key=str)
    statuses = recorded_statuses(experiment)
    configs = [spaces.flatten(t.config) for t in trials]
    # The config keys whose values differ between trials say what each trial is.
    keys = dict.fromkeys(k for c in configs for k in c)
    varying = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    results = [t.last_result or {} for t in trials]
    metric, mode = _metric_and_mode(record)
    objectives = metric if isinstance(metric, list) else [metric] if metric else []
    # A multi-objective search has a Pareto front (figures), not one best trial.
    best = _best_index(results, metric, mode) if len(objectives) == 1 else None
    metrics = list(dict.fromkeys([*STATUS_METRICS, *objectives]))
    rows = []
    for i, (trial, flat, result) in enumerate(zip(trials, configs, results)):
        row = {"trial": str(trial)}
        if best is not None:
            row["best"] = "*" if i == best else ""
        rows.append({**row, "status": statuses.get(trial.trial_id, trial.status),
                     **{k: _short(flat.get(k)) for k in varying},
                     **{k: result[k] for k in metrics if k in result}})
    return rows


def recorded_statuses(experiment):
    """{trial id: status} as the newest experiment state records them. ExperimentAnalysis loads a
    RUNNING trial as PENDING (what a restored trial becomes), which would show a live sweep idle."""
    # The newest by name (its session's start), as ExperimentAnalysis picks it: a resume leaves the
    # older session's file beside it, and Tune's syncing can leave that one the later mtime.
    newest = sorted(glob.glob(str(Path(experiment) / "experiment_state-*.json")))[-1]
    trials = [json.loads(state) for state, _ in json.loads(Path(newest).read_text())["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def _short(value):
    """A config value as a table cell: op lists and mixes by their names."""
    if isinstance(value, list) and all(isinstance(v, dict) and "op" in v for v in value):
        return "+".join(v["op"] for v in value) or "none"
    if isinstance(value, dict) and "name" in value:
        return value["name"]
    if isinstance(value, list) and len(value) > 8:  # e.g. the frozen layers of a DeepAA layer search
        return f"[{len(value)} items]"
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
    return "\n".join(line.rstrip() for line in lines)


# ---- Tuner parts --------------------------------------------------------------------------------

def _init_ray(address):
    import ray

    if ray.is_initialized():
        return
    # How loud Ray is on the driver and in the workers: see configure_console.
    options = {"logging_level": _console["ray_level"]}
    runtime_env = {}
    if _console["worker_setup"]:
        runtime_env["worker_process_setup_hook"] = _console["worker_setup"]
    # Trials' OpenMP threads sleep as soon as a parallel region ends (PASSIVE) instead of spinning
    # (libgomp's default spins ~300k iterations, ACTIVE for good). A trial's threads equal its CPUs,
    # so a spinning thread takes a core the driver, Ray or a neighbouring trial wanted, and a
    # training step is made of many small ops, each ending in a barrier that waits for the slowest
    # thread. tests/bench/bench_sweep.py --omp default,passive --cpus-per-trial 2 on 2 busy cores
    # (load 13-25): 4 trials took 917 s and 365 s spinning, 92 s and 20 s with PASSIVE. libgomp reads the variable
    # when torch loads it, so it goes in the workers' environment from the start; a value the user
    # set (OMP_WAIT_POLICY or GOMP_SPINCOUNT) is theirs to keep, and is passed on to every node.
    omp = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    runtime_env["env_vars"] = omp or {"OMP_WAIT_POLICY": "PASSIVE"}
    options["runtime_env"] = runtime_env
    # RAY_AUTH_MODE is read when Ray is imported, so it cannot be set here: the CLI sets it.
    if address:
        ray.init(address=address, **options)
    else:
        # "local": a Ray of its own, never one that `ray start` left running on this machine.
        ray.init(address="local", include_dashboard=False, **options)


def _check_cluster(spec, experiment, address):
    import ray

    nodes = ray.nodes()
    cluster.check_resources(spec, nodes)
    if address:  # this machine's own Ray sees what the driver sees
        cluster.check_nodes(spec, experiment, nodes)


def _trainable(spec):
    run, resources = TRAINABLES[spec["trainable"]].run, spec["resources"]
    if all(isinstance(v, dict) for v in resources.values()):  # per kind of trial: {kind: {"cpu", "gpu"}}
        return tune.with_resources(run, partial(_kind_resources, resources))
    return tune.with_resources(run, cluster.bundle(resources))


def _kind_resources(table, config):
    from ray.tune import PlacementGroupFactory

    bundle = cluster.bundle(table.get(config.get("kind", "train"), {}))
    return PlacementGroupFactory([{"CPU": bundle["cpu"], "GPU": bundle["gpu"]}])


# ---- tables: what a search-space spec can name ---------------------------------------------------

class Trainable(NamedTuple):
    run: Callable       # the Tune function trainable: run(config)
    resolve: Callable   # trial config -> resolved config; UserError on bad input
    metrics: Callable   # resolved config -> (metrics in every report, metrics in the last one only)
    epochs: Callable    # resolved config -> epochs a trial trains (ASHA's max_t)


TRAINABLES = {
    "train": Trainable(trainable.train, config.resolve, trainable.reported_metrics, train.total_epochs),
    "deepaa_pretrain": Trainable(deepaa_trials.deepaa_pretrain, deepaa_trials.resolve, deepaa_trials.pretrain_metrics,
                                 deepaa_trials.pretrain_epochs),
    "deepaa_layer": Trainable(deepaa_trials.deepaa_layer, deepaa_trials.resolve, deepaa_trials.layer_metrics,
                              deepaa_trials.reports),
}


# A sweep whose trials are of several kinds (DeepAA: pretraining, layer searches, training) runs one
# trainable, "by_kind", which hands each trial to the TRAINABLES entry its config's "kind" names
# (default "train"). Per-kind resources: a spec's resources {kind: {"cpu", "gpu"}}.
def _kind(config):
    config = dict(config)
    kind = config.pop("kind", "train")
    if kind not in TRAINABLES or kind == "by_kind":
        kinds = ", ".join(k for k in TRAINABLES if k != "by_kind")
        raise UserError(f"unknown trial kind {kind!r}; valid kinds: {kinds}")
    return kind, config


def _kind_dirname(trial):
    # <kind>_<trial id>_<label>: Tune's default folder name spells out the suggested config, which
    # for a DeepAA layer search is a run of frozen probabilities.
    label = str(trial.config.get("label") or "").replace("/", "-")
    return "_".join(part for part in (trial.config.get("kind", "train"), trial.trial_id, label) if part)


def by_kind(config):
    kind, config = _kind(config)
    return TRAINABLES[kind].run(config)


def resolve_kind(config):
    """A trial config with a "kind" resolved by that kind's trainable, its "kind" kept."""
    kind, config = _kind(config)
    return {**TRAINABLES[kind].resolve(config), "kind": kind}


def _by_kind_metrics(resolved):
    kind, cfg = _kind(resolved)
    return TRAINABLES[kind].metrics(cfg)


def _by_kind_epochs(resolved):
    kind, cfg = _kind(resolved)
    return TRAINABLES[kind].epochs(cfg)


TRAINABLES["by_kind"] = Trainable(by_kind, resolve_kind, _by_kind_metrics, _by_kind_epochs)


def _grid(spec):
    # grid_search axes and sampled domains are both Tune's basic variant generation.
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=spec["seed"])


def _optuna(spec, sampler="tpe", **sampler_options):
    """Optuna's define-by-run search with a seeded ``sampler`` (tpe, random, or nsga2) and its options.
    With lists of metrics and modes it searches for their Pareto front (tpe and nsga2)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                "nsga2": optuna.samplers.NSGAIISampler}
    if sampler not in samplers:
        raise UserError(f"unknown optuna sampler {sampler!r}; valid samplers: {', '.join(samplers)}")
    if isinstance(spec["metric"], list):
        # Objectives such as uce_at_best come with the last epoch only. Optuna judges a trial by its
        # last report, but Tune would reject every earlier report that lacks them.
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    return OptunaSearch(space=spec["param_space"], metric=spec["metric"], mode=spec["mode"],
                        sampler=samplers[sampler](seed=spec["seed"], **sampler_options))


def _deepaa(spec, **options):
    """Deep AutoAugment's layer-by-layer search and its evaluation (deepaa_search.DeepAASearcher)."""
    from searchlab.deepaa_search import DeepAASearcher

    if spec["trainable"] != "by_kind":
        raise UserError(f"the deepaa searcher suggests trials of several kinds: its space needs trainable "
                        f"'by_kind', got {spec['trainable']!r}")
    return DeepAASearcher(**options)


# name -> searcher(spec, **searcher_options)
SEARCHERS = {"grid": _grid, "random": _grid, "optuna": _optuna, "deepaa": _deepaa}


def _fifo(spec):
    return None  # Tune's default: trials run to the end in the order they came


def _asha(spec, grace_period=1, reduction_factor=2, max_t=None):
    """Asynchronous successive halving; rungs in epochs (the trainable's ``epoch``), ``max_t`` by
    default the most epochs any trial of the space trains."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="epoch", metric=spec["metric"], mode=spec["mode"],
                         max_t=max_t or max_epochs(spec), grace_period=grace_period,
                         reduction_factor=reduction_factor)


# name -> scheduler(spec, **scheduler_options)
SCHEDULERS = {"fifo": _fifo, "asha": _asha}


def build(table, kind, spec):
    """The searcher or scheduler (``kind``) the spec names, with its options; UserError on bad ones."""
    name, options = spec[kind], spec[f"{kind}_options"] or {}
    factory = table[name]
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    valid = [p for p in params if p != "spec" and params[p].kind != params[p].VAR_KEYWORD]
    unknown = [k for k in options if k not in valid]
    if unknown and not takes_any:
        raise UserError(f"unknown {kind}_options {', '.join(unknown)} for {kind} {name!r}; "
                        f"valid: {', '.join(valid) or 'none'}")
    try:
        return factory(spec, **options)
    except UserError:
        raise
    except (TypeError, ValueError) as e:
        raise UserError(f"{kind} {name!r} with {kind}_options {options}: {e}") from e


def _splitbn_figures(spec, experiment):
    from searchlab.analysis.figures import splitbn_figures

    objectives = list(zip(spec["metric"], spec["mode"])) if isinstance(spec["metric"], list) else None
    return splitbn_figures(experiment, objectives)


def _refine_figures(spec, experiment):
    from searchlab.analysis.refinement import refine_figures

    return refine_figures(experiment)


def _deepaa_figures(spec, experiment):
    from searchlab.analysis.deepaa_figures import deepaa_figures

    return deepaa_figures(experiment)


# name -> figures(spec, experiment): the figures and tables a study writes when its sweep ends
FIGURES = {"splitbn": _splitbn_figures, "refine": _refine_figures, "deepaa": _deepaa_figures}


def write_figures(spec, experiment):
    """The spec's figures of the experiment (``searchlab figures`` redoes them); the paths written."""
    if not spec["figures"]:
        return []
    written = FIGURES[spec["figures"]](spec, experiment)
    if written:
        print(f"figures and tables: {Path(experiment) / 'figures'}")
    return written


def max_epochs(spec):
    """The most epochs a trial of the space trains, every grid choice (and variant) resolved."""
    entry = TRAINABLES[spec["trainable"]]
    return max(entry.epochs(entry.resolve(example)) for example in spaces.examples(spec["param_space"]))


def _callbacks(spec, experiment):
    callbacks = [StateBackup(experiment)]
    if spec["cka"]:
        from searchlab.analysis.actors import CKACallback

        options = {"actors": 1, **spec["cka"]}
        callbacks.append(CKACallback(experiment, resources={k: v for k, v in options.items() if k != "actors"},
                                     actors=options["actors"]))
    return callbacks


# ---- Tune's experiment state, kept readable ------------------------------------------------------

# Tune writes these (the controller's, the grid's generator's, Optuna's and DeepAA's generator's and
# searcher's, the callbacks') in its staging folder and copies them to the experiment, both in place:
# a driver killed in the middle leaves a file cut short, and Tuner.restore then fails on it.
STATE_FILES = ("experiment_state-*.json", "basic-variant-state-*.json", "search_gen_state-*.json",
               "searcher-state-*.pkl", "callback-states-*.pkl")
STATE_BACKUP = ".searchlab_state"


class StateBackup(tune.Callback):
    """Keeps Tune's experiment state restorable: the last readable copy of each of its files in
    EXPERIMENT/.searchlab_state/, for ``repair_state`` to put back before a resume; and, as a start
    or a resume begins, no checkpoint named in it that is gone (``forget_deleted_checkpoints``)."""

    # Tune steps its loop many times a second (1385 steps for 8 trials of 10 epochs), and globbing
    # the experiment folder each step took as much of the driver's CPU as Tune's own snapshots: look
    # at most once a PERIOD_S. Tune snapshots every 10 s or more (_snapshot_on_tunes_clock), so a
    # copy is at most a second behind.
    PERIOD_S = 1.0

    def __init__(self, experiment):
        self.experiment = str(experiment)
        self._copied = {}  # file name -> (mtime, size) of the version copied
        self._looked = float("-inf")  # time.monotonic() of the last look

    def setup(self, **info):  # each start and resume (the instance comes back from tuner.pkl)
        self._checked_checkpoints = False

    def on_step_begin(self, iteration, trials, **info):
        if not self._checked_checkpoints:  # the first step, before Tune starts any trial
            for trial in trials:
                forget_deleted_checkpoints(trial)
            self._checked_checkpoints = True

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self._looked >= self.PERIOD_S:
            backup_state(self.experiment, self._copied)
            self._looked = time.monotonic()

    def on_experiment_end(self, trials, **info):
        backup_state(self.experiment, self._copied)


def _state_files(folder):
    return [Path(p) for pattern in STATE_FILES for p in glob.glob(str(Path(folder) / pattern))]


def _readable(path):
    return _whole(path.read_bytes())


def _whole(data):
    """Whether ``data`` is a whole state file, not one cut short or caught while being written."""
    import pickle

    for load in (json.loads, pickle.loads):  # the generators' ".json" files are pickles
        try:
            load(data)
            return True
        except Exception:  # cut short, being written, or the other format
            pass
    return False


def backup_state(experiment, copied):
    """Copy each state file of ``experiment`` that changed since ``copied`` and reads whole."""
    for path in _state_files(experiment):
        try:
            stamp = (path.stat().st_mtime_ns, path.stat().st_size)
        except FileNotFoundError:
            continue
        if copied.get(path.name) == stamp:
            continue
        # Read once: Tune may rewrite the file in place between two reads, so the bytes checked
        # are the bytes copied (a second read once copied half a file over the last good copy).
        data = path.read_bytes()
        if not _whole(data):
            continue
        folder = Path(experiment) / STATE_BACKUP
        folder.mkdir(exist_ok=True)
        # On a full storage this leaves the last good copy, and no copy cut short beside it.
        checkpoint.write_whole(folder, path.name, lambda f: f.write(data))
        copied[path.name] = stamp


def repair_state(experiment):
    """Put back the last readable copy of each state file that no longer reads; the trials then
    continue from their newest checkpoints on storage (``trainable.latest_state``), also where
    the copy is a few epochs older. UserError when a file is cut short and no copy exists."""
    for path in _state_files(experiment):
        if _readable(path):
            continue
        copy = Path(experiment) / STATE_BACKUP / path.name
        if not (copy.is_file() and _readable(copy)):
            raise UserError(f"{path} is cut short (the driver was killed while Tune wrote it) and "
                            f"there is no readable copy in {copy.parent}; the sweep cannot be resumed")
        checkpoint.write_whole(path.parent, path.name, lambda f: f.write(copy.read_bytes()))
        print(f"{path.name} was cut short (the driver was killed while writing it): restored its last readable copy")


def _snapshot_on_tunes_clock():
    """Tune snapshots its experiment state on its own clock (every 10 s or more, TUNE_GLOBAL_CHECKPOINT_S)
    and also, with CheckpointConfig(num_to_keep), whenever a trial has saved num_to_keep checkpoints
    since the last snapshot, so that the snapshot never names a checkpoint it has deleted. Trials
    checkpoint every epoch, so those forced snapshots came every other epoch of every trial, each
    writing every trial's state: their cost grew with the square of the trials (bench_sweep.py,
    256 two-epoch trials: 217 snapshots of 6.4 MB, the driver's CPU 0.099 s a trial against 0.028 s
    for a plain Tuner). Tune has no setting for it, so this turns the forced ones off; a resume
    then meets snapshots that name deleted checkpoints: see forget_deleted_checkpoints."""
    from ray.tune.execution import experiment_state

    experiment_state._ExperimentCheckpointManager.on_trial_checkpoint = _count_nothing


def _count_nothing(self, trial):
    pass


def forget_deleted_checkpoints(trial):
    """Drop the checkpoints that the restored snapshot names for ``trial`` but that Tune has deleted
    since (it keeps the newest 2 of a trial's). Tune would fail to restore the trial from one
    ("Could not recover from checkpoint as it does not exist on storage anymore"); without them it
    restores from the newest that is left, or starts the trial with none, and either way
    ``trainable.latest_state`` continues from the newest checkpoint on storage."""
    from ray.train._internal.storage import _exists_at_fs_path

    manager = trial.run_metadata.checkpoint_manager
    if manager is None:
        return
    kept = [r for r in manager._checkpoint_results
            if _exists_at_fs_path(r.checkpoint.filesystem, r.checkpoint.path)]
    latest = manager._latest_checkpoint_result
    if len(kept) == len(manager._checkpoint_results) and (latest is None or latest in kept):
        return
    manager._checkpoint_results = kept
    manager._latest_checkpoint_result = max(kept, key=lambda r: r.checkpoint.path, default=None)
    trial.run_metadata.invalidate_cache()


def _snapshot_written(experiment):
    """Whether Tune wrote an experiment state to restore from: one that reads, or a readable copy of it
    (a driver killed while Tune wrote its first snapshot leaves a file cut short and no copy)."""
    return any(_readable(path) or _readable_copy(experiment, path)
               for path in map(Path, glob.glob(str(Path(experiment) / "experiment_state-*.json"))))


def _readable_copy(experiment, path):
    copy = Path(experiment) / STATE_BACKUP / path.name
    return copy.is_file() and _readable(copy)


UNSTARTED = ".searchlab_unstarted"


def set_aside_unstarted(experiment):
    """Move what a start stopped before Tune's first snapshot left in ``experiment`` (Tune's tuner.pkl,
    trial folders holding no finished work) into EXPERIMENT/.searchlab_unstarted/<time>/, so that the
    new start, which names its trials afresh, and the readers of the trial folders (status, figures,
    CKA) see only its own. Moved, not deleted: nothing a user might want is lost. The record stays."""
    leftovers = [p for p in Path(experiment).iterdir() if p.name != RECORD and not p.name.startswith(".")]
    if not leftovers:
        return
    folder = Path(experiment) / UNSTARTED / f"{datetime.datetime.now():%Y%m%d-%H%M%S-%f}"
    folder.mkdir(parents=True)
    for path in leftovers:
        os.replace(path, folder / path.name)
    print(f"the sweep stopped before Tune's first snapshot: starting it again; what it left is in {folder}")


def _run_config(spec, name, storage, experiment):
    return tune.RunConfig(
        callbacks=_callbacks(spec, experiment),
        name=name,
        storage_path=str(storage),
        failure_config=tune.FailureConfig(max_failures=spec["max_failures"]),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        sync_config=tune.SyncConfig(sync_artifacts=True),
        verbose=1,
    )


# ---- console: what Ray and Tune print --------------------------------------------------------------

# Set by configure_console, read by _init_ray. Until it is called Ray and Tune print as they do by
# default (Python callers of run and resume get their usual output).
_console = {"ray_level": "info", "worker_setup": None}


def configure_console(verbose=False):
    """Keep Tune's progress table, its trial errors and searchlab's own lines; drop Ray's and Tune's
    notices that a searchlab user cannot act on. ``verbose`` keeps everything Ray and Tune print.

    Each notice is turned off where it is made: a Tune setting, a logger's level, or (the TensorBoard
    hint) the value Tune prints. Errors stay: a trial that raises still shows "Trial task failed"
    with its traceback and, in the final table, its error file.
    """
    import logging

    if verbose:
        return
    # Ray's INFO lines on the driver: "Started a local Ray instance", "Wrote the latest version ...".
    _console["ray_level"] = "warning"
    # On Ctrl-C Tune advises `Tuner.restore(path=..., trainable=...)`; searchlab prints its own
    # `searchlab resume EXPERIMENT`. That logger's errors (a failed last snapshot) still show.
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    # ExperimentAnalysis, built by Tuner.fit, Tuner.restore and trial_table, warns "Failed to fetch
    # metrics ... FileNotFoundError" for every trial that has not reported yet: it tests
    # `trial.last_result is None`, which Trial.last_result never is. The table shows them PENDING.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # The driver shows what workers print. Ray's loggers there say "Checkpoint successfully created
    # at: ..." for every epoch of every trial (shown folded into "[repeated Nx across cluster]"
    # lines) and "Restored on ... from checkpoint" on resume: raise them to WARNING, as on the driver.
    # The rest of the workers' output (a trial's prints, warnings and errors) still reaches the console.
    _console["worker_setup"] = _quiet_worker_logs
    _tensorboard_hint_names_experiment()


def _quiet_worker_logs():
    """Runs in each Ray worker as it starts (ray.init's worker_process_setup_hook)."""
    import logging

    logging.getLogger("ray").setLevel(logging.WARNING)


def _tensorboard_hint_names_experiment():
    """Tune's "To visualize your results with TensorBoard, run: `tensorboard --logdir ...`" names its
    staging folder inside Ray's session directory, which is deleted with the session and is not
    where searchlab keeps results. Ray 2.60 has no setting for this line (tune.run passes that folder
    whenever a TBXLoggerCallback is present, and turning that logger off loses the TensorBoard files),
    so this patches the reporter's experiment_started to be handed the experiment directory instead:
    the folder `searchlab tensorboard` opens. Should Tune change that method, its own line returns."""
    try:
        from ray.tune.experimental import output
    except ImportError:
        return
    started = output.ProgressReporter.experiment_started
    if getattr(started, "names_experiment", False):
        return

    def experiment_started(self, *args, experiment_path=None, tensorboard_path=None, **kwargs):
        return started(self, *args, experiment_path=experiment_path,
                       tensorboard_path=experiment_path if tensorboard_path else None, **kwargs)

    experiment_started.names_experiment = True
    output.ProgressReporter.experiment_started = experiment_started


# ---- the best trial of a table ---------------------------------------------------------------------

def _metric_and_mode(record):
    """The sweep's metric and mode from its search space; (None, None) when the space no longer loads
    (moved or edited since), so that the table still shows, unmarked."""
    try:
        spec = spaces.load(record["space"], record["args"])
    except UserError:
        return None, None
    return spec["metric"], spec["mode"]


def _best_index(results, metric, mode):
    """Index of the best of the trials' last results, or None when no trial reported the metric.

    A trial keeps its best epoch, so it is judged by its best-so-far value ``best_<metric>`` where it
    reports one, else by its latest ``metric``.
    """
    values = {}
    for i, result in enumerate(results):
        value = result.get(f"best_{metric}", result.get(metric))
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:  # not NaN
            values[i] = value
    if not values:
        return None
    return (max if mode == "max" else min)(values, key=values.get)
