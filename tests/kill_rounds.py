"""Kill a sweep's driver at random moments, then finish it with `searchlab resume`; N rounds.

    python tests/kill_rounds.py [--rounds 20] [--seed 0] [--storage DIR]

Each round starts `searchlab sweep` on tests/spaces/tiny_cka.py (three small CNNs on digits and a CKA
report at the end) in its own process group and SIGKILLs the whole group, and the Ray processes
below the driver, at a seeded random moment of one of three stretches, taken in turn:

    start-up   0-8 s after searchlab_sweep.json is written: Ray's start, Tune's set-up, often before
               Tune's first snapshot (a kill before the record exists leaves nothing to resume);
    end        0-4 s after every trial has reported its last epoch: the CKA report, Tune's last
               snapshot, Ray's shutdown (when the sweep ends first, the round says so);
    training   0-3 s after the first epoch of any trial.

Then `searchlab resume` runs until it exits 0 (at most 3 times), and the round checks that the sweep
has its 3 trials, each with every epoch exactly once in its result.json (1..E, E from the trial's
own resolved config), all TERMINATED, and the CKA table. One line per round; exit 1 if any failed.
Needs PYTHONPATH naming the searchlab to test; the data (digits) ships with scikit-learn.
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_resume import descendants  # noqa: E402

SPACE = str(Path(__file__).parent / "spaces" / "tiny_cka.py")
TRIALS = 3
# stretch -> (what starts its clock, the most seconds after that to wait before the kill)
STRETCHES = {"start-up": ("record written", 8.0), "end": ("all epochs reported", 4.0), "training": ("first epoch", 3.0)}


def searchlab(*args):
    return [sys.executable, "-m", "searchlab.cli", *args]


def results(experiment):
    """{trial folder: [epochs in its result.json]}; a last line cut short by the kill is left out."""
    found = {}
    for path in Path(experiment).glob("train_*/result.json"):
        epochs = []
        for line in path.read_text().splitlines():
            try:
                epochs.append(json.loads(line)["epoch"])
            except (json.JSONDecodeError, KeyError):
                pass
        found[path.parent.name] = epochs
    return found


def expected_epochs(trial_dir):
    """The epochs a trial trains, from its own resolved config (searchlab_trial.json)."""
    from searchlab.train import total_epochs

    return total_epochs(json.loads((trial_dir / "searchlab_trial.json").read_text())["config"])


def checkpointed(experiment):
    """{trial folder: the newest epoch it checkpointed}. A trial's worker writes checkpoint_<epoch - 1>
    on storage as it reports, while result.json reaches the experiment folder with Tune's snapshots
    only (every 10 s or more): the checkpoints are the clock of the stretches."""
    return {trial.name: 1 + max((int(c.name.split("_")[1]) for c in trial.glob("checkpoint_*")), default=-1)
            for trial in Path(experiment).glob("train_*")}


def all_reported(experiment):
    done = checkpointed(experiment)
    if len(done) < TRIALS:
        return False
    try:
        return all(done[name] == expected_epochs(Path(experiment) / name) for name in done)
    except (OSError, ValueError, KeyError):
        return False


def stop(process):
    """SIGKILL the process group of ``process`` and every process below it (Ray's, which may run in
    other groups); only processes this script started."""
    below = descendants(process.pid)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def kill_round(number, stretch, rng, storage, env):
    """One round; returns (line to print, ok)."""
    start_on, most = STRETCHES[stretch]
    delay = rng.uniform(0, most)
    experiment = Path(storage) / f"round{number:03d}"
    began = time.time()
    driver = subprocess.Popen(searchlab("sweep", SPACE, "--name", experiment.name, "--storage", str(storage)),
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        started = {"start-up": lambda: (experiment / "searchlab_sweep.json").is_file(),
                   "end": lambda: all_reported(experiment), "training": lambda: any(checkpointed(experiment).values())}
        clock = None
        while driver.poll() is None:
            if clock is None and started[stretch]():
                clock = time.time()
            if clock is not None and time.time() >= clock + delay:
                break
            if time.time() > began + 300:
                return f"round {number}: {stretch}: the sweep made no progress in 300 s", False
            time.sleep(0.05)
        finished = driver.poll() is not None
        snapshot = bool(list(experiment.glob("experiment_state-*.json")))
        before = checkpointed(experiment)
    finally:
        stop(driver)
    at = f"{time.time() - began:5.1f} s after launch" if not finished else "never: the sweep ended first"
    moment = (f"round {number:3d}: {stretch:8s} +{delay:4.2f} s, killed {at}; "
              f"snapshot {'yes' if snapshot else 'no '}, epochs {sorted(before.values())}")

    resumes, code, errors, failures = 0, None, "", []
    while code != 0 and resumes < 3:
        if code is not None:
            failures.append(f"resume {resumes} exit {code}: {errors.strip().splitlines()[-1:]}")
        resumes += 1
        resume = subprocess.Popen(searchlab("resume", str(experiment)), env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)
        try:
            _, errors = resume.communicate(timeout=600)
            code = resume.returncode
        except subprocess.TimeoutExpired:
            code, errors = "timeout", ""
        finally:
            stop(resume)
    problems = [] if code == 0 else [f"resume exit {code}: {errors.strip().splitlines()[-1:] }"]
    after = results(experiment)
    if len(after) != TRIALS:
        problems.append(f"{len(after)} trials, expected {TRIALS}")
    for name, epochs in after.items():
        wanted = list(range(1, expected_epochs(experiment / name) + 1))
        if epochs != wanted:
            problems.append(f"{name.split('_variant')[0]}: epochs {epochs}, expected {wanted}")
    status = subprocess.run(searchlab("status", str(experiment)), env=env, capture_output=True, text=True)
    if status.stdout.count("TERMINATED") != TRIALS:
        problems.append(f"status shows {status.stdout.count('TERMINATED')} TERMINATED trials")
    if not (experiment / "cka" / "cka_table.csv").is_file():
        problems.append("no CKA table")
    outcome = ("ok" if not problems else "FAILED: " + "; ".join(problems)) + "".join(f" ({f})" for f in failures)
    return f"{moment}; resumed {resumes}x in {time.time() - began:5.1f} s total: {outcome}", not problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--storage", help="where the rounds' experiments go (default: a temporary folder)")
    a = parser.parse_args(argv)
    rng = random.Random(a.seed)
    # A Ray of its own for every driver: without an address ray.init joins the cluster a `ray start`
    # elsewhere on the machine named in /tmp/ray/ray_current_cluster.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local"}
    storage = a.storage or tempfile.mkdtemp(prefix="kill_rounds-")
    stretches = list(STRETCHES)
    failed = 0
    for number in range(a.rounds):
        line, ok = kill_round(number, stretches[number % len(stretches)], rng, storage, env)
        print(line, flush=True)
        failed += not ok
    print(f"{a.rounds - failed}/{a.rounds} rounds ok; experiments in {storage}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
