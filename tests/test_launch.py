"""launch/: the local multi-node cluster script runs a sweep across its nodes and stops what it
started; the SLURM script runs under a fake SLURM; the `ray up` YAML passes Ray's own schema.

The local cluster is watched from outside: the test walks the script's process tree while it runs
(every Ray process of a node descends from its `ray start --block`, a child of the script), so what
it checks does not depend on the script's own bookkeeping.
"""
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch"
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def env_for_scripts():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYTHON": sys.executable}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def watch_tree(proc, seen, listening):
    """Until ``proc`` ends: note every process below it ({pid: (create_time, name)}) and its listening
    sockets."""
    import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
    import psutil

    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            children = root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for p in children:
            try:
                seen.setdefault(p.pid, (p.create_time(), p.name()))
                for c in p.net_connections("inet"):
                    if c.status == psutil.CONN_LISTEN:
                        listening.add((c.laddr.ip, c.laddr.port, p.name()))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        time.sleep(0.5)


def still_alive(seen):
    import ray  # noqa: F401
    import psutil

    alive = []
    for pid, (created, _) in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {p.name()}")
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_local_cluster_runs_a_sweep_on_several_nodes_and_stops_what_it_started(tmp_path):
    proc = subprocess.Popen(
        ["bash", str(LAUNCH / "local_cluster.sh"), "--workers", "2", "--cpus-per-node", "1",
         "--storage", str(tmp_path), "--name", "quick", "--", "quickstart", "--arg", "epochs=1"],
        env=env_for_scripts(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    seen, listening = {}, set()
    output = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        watch_tree(proc, seen, listening)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    log = "".join(output)
    assert proc.returncode == 0, log[-3000:]

    # Every trial finished, on more than one node (what each trial's record says).
    from searchlab import sweep

    rows = sweep.trial_table(tmp_path / "quick")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"TERMINATED"}, rows
    nodes = Counter(json.loads(p.read_text())["placement"]["node_id"]
                    for p in (tmp_path / "quick").glob("*/searchlab_trial.json"))
    assert sum(nodes.values()) == 4 and len(nodes) >= 2, nodes
    assert f"4 trial(s) on {len(nodes)} node(s)" in log

    # Three nodes: each its own raylet, around one GCS.
    assert sum(name == "raylet" for _, name in seen.values()) == 3, seen
    assert len({port for ip, port, name in listening if name == "gcs_server"}) == 1, listening
    # Every port the cluster's processes listened on is on loopback.
    assert listening, "no listening socket seen"
    exposed = sorted(s for s in listening if s[0] not in LOOPBACK)
    assert not exposed, exposed

    # Nothing the script started outlives it (the test's own view of its process tree).
    deadline = time.time() + 5
    while still_alive(seen) and time.time() < deadline:
        time.sleep(0.5)
    assert not still_alive(seen), still_alive(seen)
    assert "local_cluster: logs kept" not in log  # on success the cluster's folder is removed


def test_local_cluster_refuses_options_it_sets():
    out = subprocess.run(["bash", str(LAUNCH / "local_cluster.sh"), "--", "quickstart", "--address", "x:1"],
                         env=env_for_scripts(), capture_output=True, text=True)
    assert out.returncode == 2 and "sets --address" in out.stderr, out.stderr


@pytest.mark.parametrize("script", ["local_cluster.sh", "slurm.sbatch"])
def test_shell_scripts_parse_and_pass_shellcheck(script):
    subprocess.run(["bash", "-n", str(LAUNCH / script)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    out = subprocess.run(["shellcheck", "--severity=warning", str(LAUNCH / script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
