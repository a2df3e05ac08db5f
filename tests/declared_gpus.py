"""Sweeps on a Ray instance with declared GPUs (none is real): ``python declared_gpus.py STORAGE
GPUS CASE...`` where each CASE is ``name:trials:gpu``; prints {name: experiment or error} as JSON.

test_cluster.py runs it in a process of its own, since its test session shares one Ray instance
that has no GPUs.
"""
import json
import sys
from pathlib import Path

from searchlab import cli

cli.ray_environment(None)  # before Ray is imported, as the command line does

import ray  # noqa: E402

from searchlab import sweep  # noqa: E402
from searchlab.errors import UserError  # noqa: E402

SPACE = str(Path(__file__).parent / "spaces" / "gpu_tiny.py")

storage, gpus, cases = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
ray.init(num_cpus=6, num_gpus=gpus, include_dashboard=False, object_store_memory=200 * 1024**2,
         log_to_driver=False)
done = {}
for case in cases:
    name, trials, gpu = case.split(":")
    try:
        done[name] = str(sweep.run(SPACE, {"trials": int(trials), "gpu": float(gpu)}, name=name, storage=storage))
    except UserError as e:
        done[name] = f"UserError: {e}"
ray.shutdown()
print(json.dumps(done))
