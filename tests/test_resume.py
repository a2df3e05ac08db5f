"""Interrupt a sweep's driver (SIGINT, SIGKILL) and finish it with `searchlab resume`.

The driver runs as a child process with its own Ray instance; after a SIGKILL the test stops the
processes that driver left behind, found by walking its process tree, never by name.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

TINY = str(Path(__file__).parent / "spaces" / "tiny_cifar.py")
EPOCHS = 6


def searchlab(*args, **kw):
    return [sys.executable, "-m", "searchlab.cli", *args]


def descendants(pid):
    """PIDs of every process below ``pid``, from /proc."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def epochs_done(experiment):
    done = {}
    for result in Path(experiment).glob("train_*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        done[result.parent.name] = [r["epoch"] for r in lines]
    return done


def tiny_sweep(epochs, storage):
    """The command of a sweep of two small CNNs on 2,048 CIFAR-10 images, named "sweep" in ``storage``."""
    return searchlab("sweep", TINY, "--arg", f"epochs={epochs}", "--arg", "model=small_cnn",
                     "--arg", "train_size=2048", "--name", "sweep", "--storage", str(storage))


# Trial results reach the experiment folder with Tune's snapshots, every 10 s or more: drivers whose
# results a test watches snapshot every SNAPSHOT_S. Each sync rewrites the files in place, and a kill
# during one leaves them empty, results lost (a limit of Tune's sync, not what these tests are about):
# interrupt() sends its signal SETTLE_S after ready(), once the sync that showed the moment is over.
SNAPSHOT_S, SETTLE_S = "1", 0.3


def interrupt(command, env, ready, how, seconds, waiting_for, whole_group=False):
    """Start the driver ``command`` in a session of its own, wait until ``ready()``, then send it (or
    with ``whole_group`` its process group) ``how``. Afterwards stop what is still running below it,
    and after a SIGKILL the Ray processes it had started, found by walking its process tree."""
    driver = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    def ready_now():
        try:
            return ready()
        except ValueError:  # a JSON file caught while Tune copies it to the experiment: look again
            return False

    try:
        deadline = time.time() + seconds
        while not ready_now():
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            assert time.time() < deadline, f"the driver never got to {waiting_for} in {seconds} s"
            time.sleep(0.02)
        time.sleep(SETTLE_S)
        left_behind = descendants(driver.pid)
        os.killpg(driver.pid, how) if whole_group else driver.send_signal(how)
        driver.wait(timeout=120)
    finally:
        for pid in [driver.pid, *descendants(driver.pid)]:
            _kill(pid)
    if how == signal.SIGKILL:
        for pid in left_behind:
            _kill(pid)


# A plain SIGKILL mid-training: test_a_driver_killed_while_its_snapshot_names_deleted_checkpoints_resumes.
@pytest.mark.parametrize("how, cut", [(signal.SIGINT, False), (signal.SIGKILL, True)],
                         ids=["sigint", "sigkill_state_cut_short"])
def test_interrupted_sweep_resumes_without_redoing_epochs(cifar_data, tmp_path, how, cut):
    """``cut``: the kill also left Tune's experiment state cut short, as when it lands while Tune
    writes it; resume puts back the last readable copy."""
    experiment = tmp_path / "sweep"
    env = {**os.environ, "SEARCHLAB_DATA": cifar_data, "TUNE_GLOBAL_CHECKPOINT_S": SNAPSHOT_S}
    # Interrupt once some trial has finished two epochs and none has finished all.
    interrupt(tiny_sweep(EPOCHS, tmp_path), env,
              lambda: any(len(e) >= 2 for e in epochs_done(experiment).values()), how,
              seconds=240, waiting_for="two epochs of a trial")
    before = epochs_done(experiment)
    assert any(len(e) < EPOCHS for e in before.values()), "interrupted too late to test resume"
    if cut:
        for state in [*experiment.glob("experiment_state-*.json"), *experiment.glob("basic-variant-state-*.json")]:
            state.write_bytes(state.read_bytes()[:len(state.read_bytes()) // 2])
        status = subprocess.run(searchlab("status", str(experiment)), capture_output=True, text=True)
        assert status.returncode != 0 and "is cut short" in status.stderr and "searchlab resume" in status.stderr

    resumed = subprocess.run(searchlab("resume", str(experiment)), env=env, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ("restored its last readable copy" in resumed.stdout) == cut
    after = epochs_done(experiment)
    assert set(after) == {"train_" + n.split("_", 1)[1] for n in after} and len(after) == 2
    for trial, epochs in after.items():
        # Every epoch exactly once: trials continued from their last checkpoint.
        assert epochs == list(range(1, EPOCHS + 1)), (trial, before.get(trial), epochs)
    status = subprocess.run(searchlab("status", str(experiment)), capture_output=True, text=True)
    assert status.returncode == 0 and status.stdout.count("TERMINATED") == 2


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_the_state_backup_copies_the_bytes_it_found_whole(tmp_path, monkeypatch):
    """Tune rewrites its state files in place, as often as every step: the backup must copy what it
    checked, and keep that copy when it next finds the file cut short, for repair_state to put back."""
    from searchlab import sweep

    state = tmp_path / "experiment_state-2026-01-01_00-00-00.json"
    whole = json.dumps({"trial_data": [["trial", {"epoch": e}] for e in range(500)]}).encode()
    state.write_bytes(whole)
    read_bytes = Path.read_bytes

    def rewritten_after_each_read(path):
        data = read_bytes(path)
        if path == state:  # Tune starts writing it again: on disk only the first half so far
            path.write_bytes(whole[:len(whole) // 2])
        return data

    monkeypatch.setattr(Path, "read_bytes", rewritten_after_each_read)
    copied = {}
    sweep.backup_state(tmp_path, copied)  # finds it whole
    sweep.backup_state(tmp_path, copied)  # finds it cut short
    monkeypatch.undo()

    copy = tmp_path / sweep.STATE_BACKUP / state.name
    assert copy.read_bytes() == whole
    assert state.read_bytes() != whole
    sweep.repair_state(tmp_path)
    assert state.read_bytes() == whole


def test_the_state_backup_covers_every_file_tune_restores_from():
    """A resume reads each of these; one cut short by a kill and not backed up fails the restore."""
    from ray.tune.callback import CallbackList
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search import BasicVariantGenerator, SearchGenerator, Searcher

    from searchlab import sweep

    for owner in (TuneController, BasicVariantGenerator, SearchGenerator, Searcher, CallbackList):
        assert owner.CKPT_FILE_TMPL.format("*") in sweep.STATE_FILES, owner


def test_resume_forgets_checkpoints_that_tune_deleted_after_its_last_snapshot(tmp_path):
    """Tune snapshots on its own clock, not at every checkpoint (sweep._snapshot_on_tunes_clock), so
    the snapshot a resume starts from can name checkpoints that CheckpointConfig(num_to_keep=2)
    deleted since; Tune's own restore refuses those. What is left on storage must be what remains."""
    from ray import tune
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    from searchlab.sweep import forget_deleted_checkpoints

    def snapshot_naming(names):
        """A trial as Tune's snapshot restores it: its checkpoint manager after registering ``names``."""
        metadata = _TrainingRunMetadata()
        metadata.checkpoint_manager = _CheckpointManager(tune.CheckpointConfig(num_to_keep=2))
        for name in names:
            (tmp_path / name).mkdir(exist_ok=True)
            metadata.checkpoint_manager.register_checkpoint(
                _TrainingResult(checkpoint=tune.Checkpoint.from_directory(str(tmp_path / name)), metrics={}))
        return SimpleNamespace(run_metadata=metadata)

    def named(trial):
        manager = trial.run_metadata.checkpoint_manager
        latest = manager.latest_checkpoint_result
        return ([Path(r.checkpoint.path).name for r in manager.best_checkpoint_results],
                latest and Path(latest.checkpoint.path).name)

    trial = snapshot_naming(["checkpoint_000000", "checkpoint_000001", "checkpoint_000002"])
    assert named(trial) == (["checkpoint_000001", "checkpoint_000002"], "checkpoint_000002")
    stale_json = trial.run_metadata.get_json_state()

    # Untouched while everything it names exists.
    forget_deleted_checkpoints(trial)
    assert named(trial) == (["checkpoint_000001", "checkpoint_000002"], "checkpoint_000002")

    # The trial went on after the snapshot: checkpoint 3 arrived and Tune deleted 1.
    (tmp_path / "checkpoint_000001").rmdir()
    (tmp_path / "checkpoint_000003").mkdir()
    forget_deleted_checkpoints(trial)
    assert named(trial) == (["checkpoint_000002"], "checkpoint_000002")
    assert trial.run_metadata.get_json_state() != stale_json  # the next snapshot says so too

    # Then checkpoint 4 arrived and 2 went: the snapshot names nothing that is left.
    (tmp_path / "checkpoint_000002").rmdir()
    forget_deleted_checkpoints(trial)
    assert named(trial) == ([], None)


def snapshot_names_a_deleted_checkpoint(experiment):
    """Whether Tune's experiment state on storage names, for some trial, a newest checkpoint that is gone."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    for state in Path(experiment).glob("experiment_state-*.json"):
        try:
            trials = json.loads(state.read_text())["trial_data"]
        except (OSError, ValueError):  # being written
            continue
        for _, metadata in trials:
            latest = _TrainingRunMetadata.from_json_state(metadata).checkpoint_manager.latest_checkpoint_result
            if latest is not None and not os.path.exists(latest.checkpoint.path):
                return True
    return False


def test_a_driver_killed_while_its_snapshot_names_deleted_checkpoints_resumes(cifar_data, tmp_path):
    """The sweep is killed at a moment when Tune's last snapshot names checkpoints that Tune has
    rotated out since (it snapshots every 2 s here, checkpoints come every epoch); the resume must
    continue every trial from storage and log every epoch once. Without forget_deleted_checkpoints
    Tune refuses to restore such a trial ("does not exist on storage anymore") and the resume fails."""
    experiment, epochs = tmp_path / "sweep", 12
    env = {**os.environ, "SEARCHLAB_DATA": cifar_data, "TUNE_GLOBAL_CHECKPOINT_S": "2"}
    interrupt(tiny_sweep(epochs, tmp_path), env,
              lambda: snapshot_names_a_deleted_checkpoint(experiment), signal.SIGKILL,
              seconds=300, waiting_for="a snapshot naming a deleted checkpoint")

    resumed = subprocess.run(searchlab("resume", str(experiment)), env=env, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = epochs_done(experiment)
    assert len(after) == 2 and all(e == list(range(1, epochs + 1)) for e in after.values()), after
    status = subprocess.run(searchlab("status", str(experiment)), capture_output=True, text=True)
    assert status.returncode == 0 and status.stdout.count("TERMINATED") == 2
