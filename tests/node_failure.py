"""Kill the worker node that runs a trial (its raylet, by PID) on a local 3-node Ray cluster.

    python tests/node_failure.py STORAGE

A head with no CPUs and two worker nodes of 1 CPU each (ray.cluster_utils.Cluster: separate
raylets on this machine). One trial of tests/spaces/digits_one.py (8 epochs, max_failures 2) runs
through sweep.run; once it has reported epoch 2, the raylet of the node it runs on (the node id its
searchlab_trial.json names) is SIGKILLed. Tune retries the trial from its checkpoint on the other
worker node. Prints one line, OUTCOME and JSON: the killed node, the node the trial finished on
(its record is rewritten when the trial starts again), the epochs in result.json. Run in its own process: it
starts and stops its own Ray cluster, and only that one.
"""
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import ray
from ray._private import ray_constants
from ray.cluster_utils import Cluster

from searchlab import sweep

SPACE = str(Path(__file__).parent / "spaces" / "digits_one.py")
KILL_AT_EPOCH = 2


def raylet_pid(node):
    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def main(storage):
    # Health checks every second, 3 misses: the head declares the killed node dead in about 3 s.
    system_config = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                     "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, connect=True,
                      head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": system_config,
                                      "object_store_memory": 100 * 1024**2})
    workers = [cluster.add_node(num_cpus=1, object_store_memory=100 * 1024**2) for _ in range(2)]
    cluster.wait_for_nodes()
    killed = {}
    # result.json reaches the experiment folder with Tune's snapshots (every 10 s or more): snapshot
    # at every step, so that the watcher below sees each epoch as it is reported.
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "0"

    def watch(experiment):
        while not killed:
            for result in Path(experiment).glob("train_*/result.json"):
                rows = []
                for line in result.read_text().splitlines():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:  # still being written
                        pass
                if rows and rows[-1]["epoch"] >= KILL_AT_EPOCH:
                    node_id = json.loads((result.parent / "searchlab_trial.json").read_text())["placement"]["node_id"]
                    node, = [w for w in workers if w.node_id == node_id]
                    os.kill(raylet_pid(node), signal.SIGKILL)
                    # The node is gone, its processes with it: a worker outlives its raylet for a while
                    # and, with short epochs, would finish the trial before the node is declared dead.
                    os.kill(rows[-1]["pid"], signal.SIGKILL)
                    killed.update(node_id=node_id, at_epoch=rows[-1]["epoch"], raylet_pid=raylet_pid(node))
                    return
            time.sleep(0.05)

    experiment = Path(storage) / "node_failure"
    watcher = threading.Thread(target=watch, args=(experiment,), daemon=True)
    watcher.start()
    began = time.time()
    try:
        sweep.run(SPACE, {}, name=experiment.name, storage=storage)
        trial_dir, = experiment.glob("train_*")
        rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
        print("OUTCOME", json.dumps({"killed": killed, "finished_on": json.loads(
            (trial_dir / "searchlab_trial.json").read_text())["placement"]["node_id"],
            "worker_nodes": [w.node_id for w in workers], "epochs": [r["epoch"] for r in rows],
            "status": sweep.recorded_statuses(experiment), "seconds": round(time.time() - began, 1)}))
    finally:
        killed.setdefault("never", True)  # stops the watcher
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
