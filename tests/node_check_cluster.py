"""A two-node cluster on this machine whose worker node cannot see what the driver sees, for
test_cluster.py: ``python node_check_cluster.py STORAGE WORKER_DATA``.

The worker node runs in a mount namespace of its own with an empty tmpfs over STORAGE (a node-local
folder, as on a machine without the shared mount) and SEARCHLAB_DATA=WORKER_DATA. Prints one JSON
line: {case: the sweep's UserError, or "ok: EXPERIMENT"}. Needs root (mount) and util-linux unshare.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from searchlab import cli

storage, worker_data = sys.argv[1], sys.argv[2]
cli.ray_environment("cluster")  # a driver of a multi-node cluster: Ray on the node's address

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from searchlab import sweep  # noqa: E402
from searchlab.errors import UserError  # noqa: E402

SPACES = Path(__file__).parent / "spaces"
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
worker = subprocess.Popen(
    ["unshare", "--mount", "--propagation", "private", "sh", "-c",
     f"mount -t tmpfs tmpfs '{storage}' && exec ray start --address={cluster.address} --num-cpus=1 --block"],
    env={**os.environ, "SEARCHLAB_DATA": worker_data}, process_group=0,
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
done = {}
try:
    ray.init(address=cluster.address, log_to_driver=False)
    deadline = time.time() + 120
    while sum(n["Alive"] for n in ray.nodes()) < 2:
        if time.time() > deadline or worker.poll() is not None:
            raise SystemExit(f"the worker node did not join (exit {worker.poll()})")
        time.sleep(0.5)
    for case, space, args in [("storage", "gpu_tiny.py", {"gpu": 0.0}), ("data", "tiny_cifar.py", {})]:
        where = storage if case == "storage" else os.path.join(storage, "..", "visible")
        try:
            done[case] = f"ok: {sweep.run(str(SPACES / space), args, name=case, storage=where, address=cluster.address)}"
        except UserError as e:
            done[case] = str(e)
finally:
    ray.shutdown()
    os.killpg(worker.pid, signal.SIGTERM)  # ray start --block stops its node's processes
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
    cluster.shutdown()
print(json.dumps(done))
