"""Fault tolerance: driver kills, a dead worker node, corrupted checkpoints, full or read-only storage.

The driver-kill rounds (tests/kill_rounds.py) and the node failure (tests/node_failure.py) start
their own processes and Ray clusters in scripts, and stop only those.
"""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from searchlab import checkpoint, sweep

HERE = Path(__file__).parent
DIGITS_ONE = str(HERE / "spaces" / "digits_one.py")


@pytest.fixture(autouse=True, scope="session")  # session: set before the session Ray starts
def own_ray():
    """ray.init() without an address joins the cluster named in /tmp/ray/ray_current_cluster, which a
    `ray start` of anyone else on this machine writes; RAY_ADDRESS=local makes every Ray these tests
    start (the session fixture's, the scripts') a new one of their own."""
    before = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = before or "local"
    yield
    if before is None:
        del os.environ["RAY_ADDRESS"]


def env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}


def rows(result):
    """The rows of a result.json; a last line still being written is left out."""
    found = []
    for line in Path(result).read_text().splitlines():
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return found


def result_epochs(trial_dir):
    return [row["epoch"] for row in rows(Path(trial_dir) / "result.json")]


# ---- a. the driver killed at random moments ---------------------------------------------------------

def test_driver_killed_at_start_up_and_at_the_end_resumes(tmp_path, capsys):
    """Two rounds of tests/kill_rounds.py: a kill in start-up, one in the end of the sweep (the CKA
    report). A kill mid-training is test_resume.py's; `python tests/kill_rounds.py` runs all three."""
    import kill_rounds

    code = kill_rounds.main(["--rounds", "2", "--seed", "0", "--storage", str(tmp_path)])
    out = capsys.readouterr().out
    print(out)
    assert code == 0, out
    assert [line.split(":")[1].split()[0] for line in out.splitlines()[:2]] == ["start-up", "end"]


def test_resume_of_a_sweep_stopped_before_tunes_first_snapshot_starts_it_from_its_record(tmp_path, monkeypatch):
    """What a kill before the first snapshot leaves: the record, Tune's tuner.pkl, an empty trial folder."""
    experiment = tmp_path / "early"
    experiment.mkdir()
    record = {"space": DIGITS_ONE, "args": {"epochs": 1}, "name": "early", "address": None}
    (experiment / sweep.RECORD).write_text(json.dumps(record))
    (experiment / "tuner.pkl").write_bytes(b"partial")
    (experiment / "train_0a1b2_00000_0_2026-01-01_00-00-00").mkdir()
    (experiment / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_da')  # cut short, no copy
    started = []
    monkeypatch.setattr(sweep, "run", lambda *a, **kw: started.append((a, kw)) or experiment)

    assert sweep.resume(experiment) == experiment
    assert started == [((DIGITS_ONE, {"epochs": 1}), {"name": "early", "storage": tmp_path, "address": None})]
    assert sorted(p.name for p in experiment.iterdir()) == [sweep.UNSTARTED, sweep.RECORD]
    moved, = (experiment / sweep.UNSTARTED).iterdir()
    assert sorted(p.name for p in moved.iterdir()) == [
        "experiment_state-2026-01-01_00-00-00.json", "train_0a1b2_00000_0_2026-01-01_00-00-00", "tuner.pkl"]


# ---- b. a corrupted newest checkpoint ------------------------------------------------------------------

def test_a_corrupted_newest_checkpoint_warns_naming_it_and_the_previous_one_is_used(tmp_path):
    from test_checkpoint import write

    old, _, _ = write(tmp_path, 3)
    new, _, _ = write(tmp_path, 4)
    state = Path(new) / checkpoint.STATE
    state.write_bytes(state.read_bytes()[:100])
    with pytest.warns(UserWarning) as warned:
        assert checkpoint.newest_state([old, new])["epoch"] == 3
    warning, = warned
    assert str(state) in str(warning.message) and f"resuming from {old} (epoch 3)" in str(warning.message)
    # A corrupted trial.json (the epoch unknown) is skipped and named too.
    (Path(new) / checkpoint.RECORD).write_text("{")
    with pytest.warns(UserWarning, match="skipped an unreadable checkpoint") as warned:
        assert checkpoint.newest_state([old, new])["epoch"] == 3
    assert str(Path(new) / checkpoint.RECORD) in str(warned[0].message)
    # Nothing is said when the newest loads.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checkpoint.newest_state([old])["epoch"] == 3


def test_a_trial_retried_after_its_newest_checkpoint_was_corrupted_resumes_from_the_one_before(
        ray_session, tmp_path, prompt_results):
    """The worker dies after epoch k and the checkpoint of epoch k is cut short: the retried trial
    (Tune hands it that checkpoint) starts from epoch k-1's, and trains epoch k again."""
    import signal
    import threading
    import time

    experiment, epochs, killed = tmp_path / "corrupt", 5, []
    done = threading.Event()

    def corrupt_and_kill():
        while not done.is_set():
            for result in experiment.glob("train_*/result.json"):
                last = (rows(result) or [{"epoch": 0}])[-1]
                if last["epoch"] >= 2:
                    state = result.parent / f"{checkpoint.PREFIX}{last['epoch'] - 1:06d}" / checkpoint.STATE
                    state.write_bytes(state.read_bytes()[:1000])
                    os.kill(last["pid"], signal.SIGKILL)
                    killed.append(last["epoch"])
                    return
            time.sleep(0.02)

    watcher = threading.Thread(target=corrupt_and_kill, daemon=True)
    watcher.start()
    try:
        sweep.run(DIGITS_ONE, {"epochs": epochs}, name=experiment.name, storage=tmp_path)
    finally:
        done.set()
        watcher.join()
    trial_dir, = experiment.glob("train_*")
    assert list(sweep.recorded_statuses(experiment).values()) == ["TERMINATED"]
    k, = killed
    assert k < epochs, "the trial ended before the kill"
    # Epoch k, whose checkpoint was lost, was trained and reported again; every other epoch once.
    assert result_epochs(trial_dir) == [*range(1, k + 1), *range(k, epochs + 1)]


# ---- d. a worker node dies mid-trial -------------------------------------------------------------------

def test_a_trial_whose_node_dies_continues_on_another_node_with_every_epoch_once(tmp_path):
    run = subprocess.run([sys.executable, str(HERE / "node_failure.py"), str(tmp_path)], env=env(),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    # Ray's own lines (the killed raylet's last log) may come after it.
    line, = [line for line in run.stdout.splitlines() if line.startswith("OUTCOME ")]
    outcome = json.loads(line.split(" ", 1)[1])
    print(outcome)
    killed, finished_on, workers = outcome["killed"], outcome["finished_on"], outcome["worker_nodes"]
    assert killed["node_id"] in workers and finished_on in workers and finished_on != killed["node_id"]
    assert 2 <= killed["at_epoch"] < 8
    assert outcome["epochs"] == list(range(1, 9)) and list(outcome["status"].values()) == ["TERMINATED"]


# ---- c. storage full or read-only -------------------------------------------------------------------

@pytest.fixture
def small_storage(tmp_path):
    """A 64 MB tmpfs of our own: read-only and full are real file-system states there (as root,
    chmod would not stop a write). Unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "storage"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def remount(folder, mode):
    subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)], check=True)


def test_a_sweep_on_read_only_storage_fails_at_once_with_one_line(small_storage):
    remount(small_storage, "ro")
    run = subprocess.run([sys.executable, "-m", "searchlab.cli", "sweep", DIGITS_ONE, "--name", "ro",
                          "--storage", str(small_storage)], env=env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"searchlab: error: cannot write {small_storage / 'ro'}: its file system is read-only. What was saved "
        "before is intact: once the storage is writable, `searchlab resume` the experiment (or start it again)"]


def fill(folder):
    """Take every free byte of ``folder``'s file system: megabytes, then the last kilobytes."""
    with open(folder / "filler", "wb", buffering=0) as f:
        for size in (1024**2, 1024):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_storage_failing_mid_sweep_stops_it_clearly_and_a_resume_finishes_it(ray_session, small_storage, fault,
                                                                             prompt_results):
    """Once the trial has reported epoch 2 the storage turns read-only or full. The sweep stops with
    an OSError the command line reports in one line; the checkpoints and state files written before
    are unchanged and a resume on the storage, writable again, trains the remaining epochs once."""
    import threading
    import time

    from searchlab.cli import storage_problem

    experiment, epochs, saved, done = small_storage / "sweep", 6, {}, threading.Event()

    def break_storage():
        while not done.is_set():
            for result in experiment.glob("train_*/result.json"):
                if any(row["epoch"] >= 2 for row in rows(result)):
                    # What is on storage now must come through unchanged (but for what is still
                    # being written in the few milliseconds until the storage breaks).
                    saved.update({p: p.read_bytes() for p in experiment.rglob("*") if p.is_file()})
                    remount(small_storage, "ro") if fault == "read-only" else fill(small_storage)
                    return
            time.sleep(0.02)

    watcher = threading.Thread(target=break_storage, daemon=True)
    watcher.start()
    try:
        with pytest.raises(OSError) as failed:
            sweep.run(DIGITS_ONE, {"epochs": epochs}, name=experiment.name, storage=small_storage)
    finally:
        done.set()
        watcher.join()
    message = storage_problem(failed.value, str(experiment))
    assert message and ("read-only" if fault == "read-only" else "no space left") in message, failed.value
    assert str(small_storage) in message

    if fault == "read-only":
        remount(small_storage, "rw")
    else:
        (small_storage / "filler").unlink()
    # Epochs 1 and 2: reported, so written whole before the storage broke.
    checkpoints = [experiment.glob("train_*").__next__() / f"{checkpoint.PREFIX}{i:06d}" for i in (0, 1)]
    for folder in checkpoints:
        for path in (folder / checkpoint.STATE, folder / checkpoint.RECORD):
            assert path.read_bytes() == saved[path], f"{path} changed"
        assert checkpoint.load_state(folder)["epoch"] == checkpoint.read_record(folder)["epoch"]
    assert (experiment / sweep.RECORD).read_bytes() == saved[experiment / sweep.RECORD]
    for copy in (experiment / sweep.STATE_BACKUP).iterdir():  # Tune's state as resume may need it
        assert sweep._readable(copy), copy

    sweep.resume(experiment)
    trial_dir, = experiment.glob("train_*")
    assert list(sweep.recorded_statuses(experiment).values()) == ["TERMINATED"]
    assert result_epochs(trial_dir) == list(range(1, epochs + 1))
