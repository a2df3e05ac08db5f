"""A sweep's overhead: searchlab's sweep and a plain Tuner.fit against the ideal, and the driver's
cost per trial as the trial count grows.

What it measures
    Main part: ``--trials`` (8) short torch trials (searchlab's ``train`` trainable, a small CNN on
    digits: tests/spaces/bench_sweep.py) on a Ray cluster of ``--slots`` (2) CPUs, one CPU a trial,
    run three ways on the same cluster:
    - sweep:        ``searchlab.sweep.run`` of that space;
    - tune:         a plain ``tune.Tuner(...).fit()`` of the same trainable function, param_space
                    and resources, with ``reuse_actors=True`` (Tune's best case);
    - tune_noreuse: the same without actor reuse (the anchor).
    Ideal = the sum of the trials' own times (each trial's ``time_total_s``: its time_this_iter_s
    summed, from the trainable's start to its last report) / slots. Each run's time is the wall time
    of ``sweep.run`` or ``Tuner.fit`` (Ray is started before, untimed). Printed as
    ``sweep/ideal``, ``tune/ideal``, ``tune_noreuse/ideal`` and ``sweep/tune``.

    Each round runs in a fresh process with its own Ray cluster, started with the OpenMP settings
    named by ``--omp`` (several: the rounds interleave them, e.g. ``--omp default,passive``). The
    runs of a round go in a rotated order, so that no run is always the first on a fresh cluster.
    Ratios are medians over the rounds, with their spread (min..max).

    The wait policy only matters when a trial has several OpenMP threads (a trial sets torch's
    threads to its CPUs): compare policies with ``--cpus-per-trial 2`` (one slot of two threads,
    next to the driver and Ray's own processes) as well as with the default 1.

    Overhead part (``--overhead 8,32,128,256``; empty to skip): sweeps of very short trials (two
    epochs on 64 images: almost no work) through searchlab's sweep and a plain Tuner (actor reuse),
    each count once. Printed per trial: (wall - ideal) x slots / trials, the slot time a trial costs
    beyond its own; with what the driver spent writing Tune's experiment snapshots (count, seconds,
    size of experiment_state json) and in searchlab's StateBackup callback.

How to run
    python tests/bench/bench_sweep.py                                  # 3 rounds + overhead 8..256
    python tests/bench/bench_sweep.py --rounds 1 --overhead 8,32       # quick
    python tests/bench/bench_sweep.py --omp default,passive --cpus-per-trial 2 --overhead ""

    With PYTHONPATH pointing at the tree to measure. Needs no dataset (digits ships with
    scikit-learn). Reports and exits 0; asserts nothing; not collected by pytest.

Target
    sweep/ideal <= 1.15 and sweep/tune <= 1.00 (plain Tune measured 1.54x ideal without actor reuse,
    1.18-1.26x with it).

Measured (2 cores, nothing else running: load average 2, which is the two trial slots)
    Main part, 8 trials, medians over rounds (per-round spread in parentheses):

        epochs a trial   ideal   sweep/ideal        tune/ideal         tune_noreuse/ideal  sweep/tune
        10 (2 rounds)    7.5 s   1.59 (1.58-1.60)   1.58 (1.56-1.60)   2.20 (earlier run)  0.97
        40 (3 rounds)    21 s    1.24 (1.23-1.25)   1.26 (1.24-1.28)   1.62 (1.61-1.68)    1.01 (0.92-1.13)
        120 (2 rounds)   60 s    1.14 (1.14-1.15)   1.14 (1.14-1.15)   -                   1.05 (1.04-1.07)

    searchlab's sweep costs what a plain Tuner with actor reuse costs at every length. What both
    pay above the ideal is Tune's, and it falls with the trial's length:
    - the first trial of each slot starts 5.5-6 s after fit() (its training, after the trial's own
      set-up, which the ideal counts): Tune's set-up and the actor's creation (~1 s), then the new
      worker's imports (ray.tune ~1 s, torch ~1.8 s). A runtime_env worker_process_setup_hook does
      not run ahead of time (Ray runs it when the worker is given its first task, and prestarted
      workers are not given one), and an actor never takes over a worker that ran a warm-up task.
    - each report waits for the driver: Tune's function trainables report synchronously, so the
      driver's handling of a result (loggers, callbacks) is wall time a trial spends outside its
      own time: about 10 ms a report here (wall minus ideal grows by ~4.5 s from 10 to 120 epochs,
      440 more reports a slot), against epochs of 60 ms.
    So 1.15 is reached with 120-epoch trials (digits epochs of 60 ms); with real epochs of seconds
    to minutes both costs vanish, and with 1-6 s trials no Tune-based sweep reaches it.

    Overhead part, driver's CPU per trial at 8 / 32 / 128 / 256 two-epoch trials:
    sweep 0.045 / 0.031 / 0.032 / 0.036 s, plain Tuner 0.036 / 0.028 / 0.027 / 0.036 s (wall for 256:
    25.7 s against 26.1 s). Before sweep._snapshot_on_tunes_clock it was 0.049 / 0.042 / 0.075 /
    0.099 s against 0.039 / 0.036 / 0.030 / 0.028 s (wall 36.6 s against 22.0 s): with
    CheckpointConfig(num_to_keep=2) Tune wrote a forced snapshot of every trial's state after every
    two checkpoints of any trial, 206 snapshots of 6.4 MB for 256 trials, a cost growing with the
    square of the trial count. Now the sweep writes 4, as the plain Tuner does.

    OpenMP wait policy (--omp default,passive --cpus-per-trial 2 --trials 4 --runs sweep, load
    13-25), two interleaved rounds: trial time 917 s and 365 s with libgomp's default spinning
    against 92 s and 20 s with PASSIVE (sweep wall 986 s / 397 s against 137 s / 45 s: PASSIVE/default
    0.14 and 0.11). With one CPU a trial (one thread) there is no thread team to spin, and the policy
    should not matter (not measured).
"""
import argparse
import cProfile
import io
import pstats
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.15
SPACE = str(Path(__file__).resolve().parents[1] / "spaces" / "bench_sweep.py")
# --omp names: the environment the trial workers get (ray.init's runtime_env). "default" is what
# libgomp does unset (spins ~300k iterations before sleeping); PASSIVE sleeps at once; ACTIVE spins.
OMP = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "spin10k": {"GOMP_SPINCOUNT": "10000"},
}
RUNS = ("sweep", "tune", "tune_noreuse")
# The overhead part's trials: two reports each (a trial checkpoints twice: CheckpointConfig(num_to_keep=2) then
# forces a snapshot), almost no work.
SHORT = {"epochs": 2, "train_size": 64}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="searchlab's sweep against the ideal and a plain Tuner.fit "
                                                 f"(target: sweep/ideal <= {TARGET}, sweep/tune <= 1).")
    parser.add_argument("--trials", type=int, default=8, help="default: %(default)s")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of a trial (default: %(default)s)")
    parser.add_argument("--train-size", type=int, default=1200, help="digits images a trial trains on "
                                                                     "(default: %(default)s)")
    parser.add_argument("--slots", type=int, default=2, help="CPUs of the Ray cluster (default: %(default)s)")
    parser.add_argument("--cpus-per-trial", type=int, default=1, help="default: %(default)s")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per --omp setting (default: %(default)s)")
    parser.add_argument("--omp", default="passive",
                        help=f"comma-separated OpenMP settings of the trials, from {', '.join(OMP)} "
                             "(default: %(default)s, searchlab's choice)")
    parser.add_argument("--runs", default=",".join(RUNS), help="default: %(default)s")
    parser.add_argument("--overhead", default="8,32,128,256",
                        help="trial counts of the overhead part, comma-separated; '' skips it (default: %(default)s)")
    parser.add_argument("--checkpoint-period", default=None,
                        help="TUNE_GLOBAL_CHECKPOINT_S for the overhead part (default: Tune's 'auto')")
    parser.add_argument("--profile", default=None, choices=RUNS,
                        help="print the driver's cProfile (cumulative) of this run in each round")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # JSON job of one round
    args = parser.parse_args(argv)
    args.omp = args.omp.split(",")
    args.runs = args.runs.split(",")
    unknown = [o for o in args.omp if o not in OMP] + [r for r in args.runs if r not in RUNS]
    if unknown:
        parser.error(f"unknown {', '.join(unknown)}; --omp from {', '.join(OMP)}, --runs from {', '.join(RUNS)}")
    return args


# ---- one round, in its own process with its own Ray cluster -------------------------------------

class Timers:
    """Seconds and calls of the driver's functions wrapped with ``wrap``."""

    def __init__(self):
        self.seconds, self.calls = {}, {}

    def wrap(self, owner, attribute, name):
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - began
                self.calls[name] = self.calls.get(name, 0) + 1

        setattr(owner, attribute, timed)

    def take(self):
        taken = {"seconds": self.seconds, "calls": self.calls}
        self.seconds, self.calls = {}, {}
        return taken


def trial_seconds(experiment):
    """Each trial's own time: time_total_s of its last result."""
    times = []
    for path in glob.glob(os.path.join(experiment, "*", "result.json")):
        lines = Path(path).read_text().splitlines()
        if lines:
            times.append(json.loads(lines[-1])["time_total_s"])
    return times


def first_start(experiment, began, trials):
    """Seconds from the run's start to the first trial's training: the worker's start, its imports,
    the trial's set-up (searchlab_trial.json's placement.started is written just before the first
    epoch). None unless every trial left its record: a plain Tuner with actor reuse does not sync a
    reused actor's trial files (searchlab's sweep syncs artifacts)."""
    records = glob.glob(os.path.join(experiment, "*", "searchlab_trial.json"))
    if len(records) < trials:
        return None
    return min(json.loads(Path(p).read_text())["placement"]["started"] for p in records) - began


def run_child(job):
    import ray
    from ray import tune
    from ray.tune.execution import tune_controller

    from searchlab import spaces, sweep, trainable

    from ray.tune.execution import experiment_state
    from ray.tune.logger import tensorboardx

    timers = Timers()
    timers.wrap(tune_controller.TuneController, "save_to_dir", "snapshot")
    # The whole snapshot: writing it, and waiting for the previous sync when forced.
    timers.wrap(experiment_state._ExperimentCheckpointManager, "sync_up_experiment_state", "snapshot_sync")
    timers.wrap(experiment_state._ExperimentCheckpointManager, "on_trial_checkpoint", "trial_checkpoint")
    timers.wrap(tune_controller.TuneController, "step", "step")
    timers.wrap(tensorboardx.TBXLoggerCallback, "log_trial_result", "tbx")
    timers.wrap(sweep, "backup_state", "state_backup")
    # address="local": a new cluster, never one that another `ray start` left on this machine.
    ray.init(address="local", num_cpus=job["slots"], include_dashboard=False, logging_level="warning",
             # A variable in every setting, so that each cluster has a runtime_env alike.
             runtime_env={"env_vars": {**OMP[job["omp"]], "SEARCHLAB_BENCH_OMP": job["omp"]}})
    spec = spaces.load(SPACE, job["space_args"])
    out = {}
    for i, run in enumerate(job["runs"]):
        storage, name = job["storage"], f"{run}-{i}"
        profile = cProfile.Profile() if job.get("profile") == run else None
        began, cpu, clock = time.perf_counter(), time.process_time(), time.time()
        if profile:
            profile.enable()
        if run == "sweep":
            sweep.run(SPACE, job["space_args"], name=name, storage=storage)
        else:
            tune.Tuner(tune.with_resources(trainable.train, {"cpu": job["space_args"]["cpus"]}),
                       param_space=spec["param_space"],
                       tune_config=tune.TuneConfig(reuse_actors=run == "tune"),
                       run_config=tune.RunConfig(name=name, storage_path=storage)).fit()
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        if profile:
            profile.disable()
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(40)
        experiment = os.path.join(storage, name)
        states = glob.glob(os.path.join(experiment, "experiment_state-*.json"))
        out[run] = {"wall": wall, "driver_cpu": cpu, "trials": trial_seconds(experiment), **timers.take(),
                    "first_start": first_start(experiment, clock, job["space_args"]["trials"]),
                    "state_bytes": max((os.path.getsize(s) for s in states), default=0)}
        if profile:
            out[run]["profile"] = text.getvalue()
    ray.shutdown()
    return out


def round_in_child(job):
    """Run ``job`` in a fresh process; its results. The child's console goes to a log file."""
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as folder:
        job = {**job, "storage": folder}
        result = os.path.join(folder, "result.json")
        log = os.path.join(folder, "console.log")
        env = dict(os.environ)
        if job.get("checkpoint_period"):
            env["TUNE_GLOBAL_CHECKPOINT_S"] = job["checkpoint_period"]
        with open(log, "w") as console:
            done = subprocess.run([sys.executable, __file__, "--child", json.dumps({**job, "result": result})],
                                  stdout=console, stderr=subprocess.STDOUT, env=env)
        if done.returncode:
            print(Path(log).read_text()[-4000:])
            raise SystemExit(f"a round failed (exit {done.returncode})")
        return json.loads(Path(result).read_text())


# ---- report -----------------------------------------------------------------------------------

def load_line():
    return "load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def driver_line(o):
    """Where the driver's time went: its CPU time, and the wrapped Tune and searchlab functions."""
    parts = [f"{name} {o['seconds'][name]:.2f} s / {o['calls'][name]}" for name in o["seconds"]]
    first = o.get("first_start")
    when = f"first trial's training starts at {first:.1f} s; " if first is not None else ""
    return when + f"driver CPU {o['driver_cpu']:.1f} s; " + ", ".join(parts) + \
        f"; experiment_state {o['state_bytes'] / 1e3:.0f} kB"


def spread(values):
    return f"{statistics.median(values):.2f}   (per round {min(values):.2f}..{max(values):.2f})"


def main_part(args):
    slots = args.slots // args.cpus_per_trial
    space_args = {"trials": args.trials, "epochs": args.epochs, "train_size": args.train_size,
                  "cpus": args.cpus_per_trial}
    print(f"{args.trials} trials ({args.epochs} epochs on {args.train_size} digits images, "
          f"{args.cpus_per_trial} CPU each) on {slots} slots of a {args.slots}-CPU Ray cluster; "
          f"{args.rounds} rounds of {', '.join(args.runs)} per OpenMP setting ({', '.join(args.omp)})")
    print(load_line() + " (before)")
    ratios = {omp: {} for omp in args.omp}
    for r in range(args.rounds):
        for omp in args.omp:
            shift = r % len(args.runs)
            runs = args.runs[shift:] + args.runs[:shift]
            out = round_in_child({"omp": omp, "slots": args.slots, "runs": runs, "space_args": space_args,
                                  "profile": args.profile})
            line = []
            for run, o in out.items():
                ideal = sum(o["trials"]) / slots
                ratios[omp].setdefault(f"{run}/ideal", []).append(o["wall"] / ideal)
                # Seconds, for comparing OpenMP settings (a setting changes the trials' own time too).
                ratios[omp].setdefault(f"{run} wall", []).append(o["wall"])
                ratios[omp].setdefault(f"{run} trial time", []).append(sum(o["trials"]))
                line.append(f"{run} {o['wall']:.1f} s (ideal {ideal:.1f} s, {len(o['trials'])} trials)")
            if "sweep" in out and "tune" in out:
                ratios[omp].setdefault("sweep/tune", []).append(out["sweep"]["wall"] / out["tune"]["wall"])
            print(f"  round {r + 1} {omp}: " + "; ".join(line) + f"   [{load_line()}]", flush=True)
            for run, o in out.items():
                print(f"    {run}: {driver_line(o)}")
                if "profile" in o:
                    print(o["profile"])
    for omp, by_name in ratios.items():
        print(f"OpenMP {omp} {OMP[omp] or '(libgomp default)'}:")
        for name, values in by_name.items():
            if "/" in name:
                print(f"{name} {spread(values)}")
    if len(args.omp) > 1:
        base = args.omp[0]
        for omp in args.omp[1:]:
            for name in ratios[omp]:
                if name.endswith((" wall", " trial time")):
                    pairs = [a / b for a, b in zip(ratios[omp][name], ratios[base][name])]
                    print(f"{name} {omp}/{base}: {spread(pairs)}")
    print(load_line() + " (after)")
    verdict = statistics.median(ratios[args.omp[0]].get("sweep/ideal", [float("nan")]))
    print(f"target sweep/ideal <= {TARGET}: {'met' if verdict <= TARGET else 'NOT met'} ({args.omp[0]})")


def overhead_part(args, counts):
    slots = args.slots // args.cpus_per_trial
    runs = [r for r in args.runs if r != "tune_noreuse"]
    print(f"overhead of very short trials (2 epochs on 64 images), {slots} slots, "
          f"TUNE_GLOBAL_CHECKPOINT_S={args.checkpoint_period or 'auto'}, OpenMP {args.omp[0]}:")
    for n in counts:
        space_args = {"trials": n, "cpus": args.cpus_per_trial, **SHORT}
        out = round_in_child({"omp": args.omp[0], "slots": args.slots, "runs": runs, "space_args": space_args,
                              "checkpoint_period": args.checkpoint_period})
        for run, o in out.items():
            ideal = sum(o["trials"]) / slots
            per_trial = (o["wall"] - ideal) * slots / n
            print(f"  {run:6s} {n:4d} trials: wall {o['wall']:6.1f} s, ideal {ideal:5.1f} s, overhead per trial "
                  f"{per_trial:.3f} s, driver CPU per trial {o['driver_cpu'] / n:.3f} s   [{load_line()}]\n"
                  f"      {driver_line(o)}", flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        Path(job["result"]).write_text(json.dumps(run_child(job)))
        return
    if args.rounds > 0:
        main_part(args)
    counts = [int(n) for n in args.overhead.split(",") if n.strip()]
    if counts:
        overhead_part(args, counts)


if __name__ == "__main__":
    main()
