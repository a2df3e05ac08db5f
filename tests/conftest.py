import os
from pathlib import Path

import pytest

CIFAR10 = Path(os.environ.get("SEARCHLAB_DATA", "")) / "cifar10"


@pytest.fixture(scope="session")
def cifar_data():
    """$SEARCHLAB_DATA, holding the real CIFAR-10; CI must have it, elsewhere the tests skip."""
    if not (CIFAR10 / "train_x.npy").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs CIFAR-10 at $SEARCHLAB_DATA/cifar10 ({CIFAR10})")
        pytest.skip("set SEARCHLAB_DATA to a folder holding cifar10/*.npy")
    return str(CIFAR10.parent)


@pytest.fixture(scope="session")
def ray_session():
    """One Ray instance for the whole test session (DESIGN.md section 5)."""
    import ray

    # "local": a Ray of the suite's own, never a cluster that `ray start` left on the machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2,
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def prompt_results(monkeypatch):
    """A trial's result.json reaches the experiment folder with Tune's snapshots, every 10 s or more:
    for a test that watches it during a sweep run in this process, snapshot at every step."""
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")


@pytest.fixture
def kill_worker_at(prompt_results):
    """``kill_worker_at(experiment, epoch)`` starts a watcher that SIGKILLs, once, the worker of the
    first trial of ``experiment`` whose result.json reaches ``epoch`` (by the pid Tune records in
    each result); it returns a list that then holds (trial folder name, epoch, pid)."""
    import json
    import signal
    import threading
    import time

    stop, watchers = threading.Event(), []

    def start(experiment, epoch):
        killed = []

        def watch():
            while not stop.is_set():
                for result in Path(experiment).glob("train_*/result.json"):
                    try:
                        rows = [json.loads(line) for line in result.read_text().splitlines()]
                    except (FileNotFoundError, json.JSONDecodeError):
                        continue
                    if rows and rows[-1]["epoch"] >= epoch:
                        os.kill(rows[-1]["pid"], signal.SIGKILL)
                        killed.append((result.parent.name, rows[-1]["epoch"], rows[-1]["pid"]))
                        return
                time.sleep(0.05)

        watchers.append(threading.Thread(target=watch, daemon=True))
        watchers[-1].start()
        return killed

    yield start
    stop.set()
    for watcher in watchers:
        watcher.join()
