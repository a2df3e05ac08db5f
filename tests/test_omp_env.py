"""Trials' OpenMP wait policy (sweep._init_ray): PASSIVE unless the user set one, in every worker.

Each case starts its own Ray cluster the way a sweep does, so it runs in a subprocess (the suite's
shared Ray instance must not be the one connected)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What a worker sees: a Ray task with one CPU (a trial's worker gets the same runtime_env).
SCRIPT = """
import os, ray
from searchlab import sweep
sweep._init_ray(None)
@ray.remote(num_cpus=1)
def seen():
    return os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT")
print("SEEN", *ray.get(seen.remote()))
ray.shutdown()
"""


def seen_by_worker(**user_env):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    # RAY_ADDRESS=local: the subprocess starts its own cluster, as a sweep without --address does on
    # a machine where no `ray start` cluster runs.
    env.update(user_env, PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}", RAY_ADDRESS="local")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("SEEN ")]
    return tuple(line.split()[1:])


@pytest.mark.parametrize("user_env, expected", [
    ({}, ("PASSIVE", "None")),                                  # searchlab's choice
    ({"OMP_WAIT_POLICY": "ACTIVE"}, ("ACTIVE", "None")),        # the user's own policy stays
    ({"GOMP_SPINCOUNT": "1000"}, ("None", "1000")),             # so does a spin count, alone
])
def test_trial_workers_get_the_openmp_wait_policy(user_env, expected):
    assert seen_by_worker(**user_env) == expected
