"""The cluster path: resource requests checked before a sweep starts, declared GPUs shared as Ray
assigns them, storage and data checked on every node, Ray listening on loopback."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from searchlab import cluster
from searchlab.errors import UserError

HERE = Path(__file__).parent


def node(cpus, gpus=0, alive=True):
    return {"Alive": alive, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}


def spec(resources, cka=None):
    return {"resources": resources, "cka": cka}


def test_requests_name_each_kind_and_the_cka_actors():
    assert cluster.requests(spec({"cpu": 2, "gpu": 0.25})) == {"trials": {"cpu": 2, "gpu": 0.25}}
    assert cluster.requests(spec({"deepaa_layer": {"gpu": 1}, "train": {"cpu": 4}}, cka={"gpu": 0.5, "actors": 2})) == {
        "deepaa_layer trials": {"cpu": 1, "gpu": 1}, "train trials": {"cpu": 4, "gpu": 0},
        "CKA actors": {"cpu": 1, "gpu": 0.5}}


def test_a_request_must_fit_on_one_live_node():
    nodes = [node(8, 4), node(16, 8, alive=False), node(32)]
    cluster.check_resources(spec({"cpu": 8, "gpu": 4}), nodes)
    cluster.check_resources(spec({"cpu": 32}), nodes)
    # 8 GPUs exist only on a dead node; 32 CPUs and a GPU on no single node.
    for resources in ({"cpu": 1, "gpu": 8}, {"cpu": 32, "gpu": 1}):
        with pytest.raises(UserError, match="more than any node of this cluster has") as e:
            cluster.check_resources(spec(resources), nodes)
        assert "32 CPU + 0 GPU, 8 CPU + 4 GPU" in str(e.value)
    with pytest.raises(UserError, match="^CKA actors ask for 1 CPU \\+ 5 GPU"):
        cluster.check_resources(spec({"cpu": 1}, cka={"gpu": 5}), nodes)


def intervals(experiment):
    """[(start, end, gpu ids, CUDA_VISIBLE_DEVICES)] of the experiment's trials, from their records."""
    found = []
    for record in Path(experiment).glob("*/searchlab_trial.json"):
        placement = json.loads(record.read_text())["placement"]
        rows = [json.loads(line) for line in (record.parent / "result.json").read_text().splitlines()]
        # Tune's clock starts before the trial's own set-up: count from the first epoch instead.
        busy = rows[0]["epoch_time"] + rows[-1]["time_total_s"] - rows[0]["time_total_s"]
        found.append((placement["started"], placement["started"] + busy,
                      placement["gpu_ids"], placement["cuda_visible_devices"]))
    return found


def overlapping(found):
    """For each trial, the trials (itself included) running at its start."""
    return [[other for other in found if other[0] <= start < other[1]] for start, *_ in found]


def test_declared_gpus_are_shared_as_ray_assigns_them(tmp_path, cifar_data):
    # 2 declared GPUs and 6 CPUs: half-GPU trials pack 2 to a GPU (4 at once, not the 6 the CPUs
    # allow); whole-GPU trials run 2 at once on disjoint GPUs; 3 GPUs fit on no node.
    run = subprocess.run([sys.executable, str(HERE / "declared_gpus.py"), str(tmp_path), "2",
                          "half:6:0.5", "whole:4:1", "too_many:1:3"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    done = json.loads(run.stdout.splitlines()[-1])
    assert done["too_many"].startswith("UserError: trials ask for 1 CPU + 3 GPU, more than any node")
    assert not list((tmp_path / "too_many").glob("*/result.json"))  # nothing started

    half, whole = intervals(done["half"]), intervals(done["whole"])
    assert len(half) == 6 and len(whole) == 4
    for start, end, ids, visible in half + whole:
        # A trial sees exactly the GPU Ray gave it: CUDA_VISIBLE_DEVICES is that id.
        assert len(ids) == 1 and visible == str(ids[0])
    for running in overlapping(half):
        assert len(running) <= 4  # 2 GPUs / 0.5
        for gpu in (0, 1):
            assert sum(ids == [gpu] for _, _, ids, _ in running) <= 2
    assert max(len(running) for running in overlapping(half)) >= 2  # GPUs were shared at all
    for running in overlapping(whole):
        assert len(running) <= 2
        assert len({ids[0] for _, _, ids, _ in running}) == len(running)  # disjoint


def listening(pids):
    """{(process name, address)} of the TCP sockets ``pids`` and their children listen on."""
    import psutil

    found = set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in processes:
            try:
                for c in process.net_connections(kind="inet"):
                    if c.status == psutil.CONN_LISTEN:
                        found.add((process.name(), c.laddr.ip))
            except psutil.Error:
                pass
    return found


def test_the_ray_that_searchlab_starts_listens_on_loopback_only(tmp_path):
    # The command line's environment, then the sweep's own ray.init; the Ray processes are children.
    code = ("from searchlab import cli; cli.ray_environment(None); from searchlab import sweep; "
            "sweep._init_ray(None); import ray, os, sys, time; ray.get(ray.remote(lambda: 1).remote()); "
            "print(os.getpid(), flush=True); sys.stdin.read()")
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(process.stdout.readline())
        sockets = listening([pid])
    finally:
        process.stdin.close()
        process.wait(timeout=60)
    assert any(name.startswith("gcs_server") for name, _ in sockets) and any(n == "raylet" for n, _ in sockets)
    assert all(address in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for _, address in sockets), sockets


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare: the worker node gets a mount namespace of its own")
def test_a_node_that_cannot_see_the_storage_or_the_data_stops_the_sweep_before_it_starts(tmp_path, cifar_data):
    storage, empty = tmp_path / "node_local", tmp_path / "no_data"
    storage.mkdir()
    empty.mkdir()
    run = subprocess.run([sys.executable, str(HERE / "node_check_cluster.py"), str(storage), str(empty)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    done = json.loads(run.stdout.splitlines()[-1])
    assert done["storage"].startswith(f"storage {storage} is not visible on 1 of the cluster's 2 nodes")
    assert "on node " in done["data"] and f"{empty}/cifar10" in done["data"]
    assert not list(tmp_path.glob("*/*/*/result.json"))  # no trial started


def test_an_object_store_uri_as_storage_is_a_clear_error():
    from searchlab import sweep

    with pytest.raises(UserError, match=r"^--storage s3://bucket/results: object-store URIs are not supported"):
        sweep.run(str(HERE / "spaces" / "gpu_tiny.py"), {"gpu": 0.0}, storage="s3://bucket/results")
