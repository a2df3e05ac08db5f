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


# On an overloaded machine a Ray node can fail to start: its raylet gives up after about 15 s waiting
# for its Python agents (Ray 2.60, not configurable). The scripts then stop and say so; the tests run
# them once more in that case, and only in that case.
NODE_DID_NOT_START = ("did not start", "srun step ended")


def run_watched(args, env, before=lambda: None):
    """Run a launch script twice at most (see NODE_DID_NOT_START), calling ``before`` first each time;
    return (returncode, output, seen, listening) of the last run, watched as in watch_tree."""
    for attempt in range(2):
        before()
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        output, seen, listening = [], {}, set()
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
        if proc.returncode == 0 or not any(m in log for m in NODE_DID_NOT_START):
            break
        print(f"a node did not start (attempt {attempt + 1}); running the script again")
    return proc.returncode, log, seen, listening


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_local_cluster_runs_a_sweep_on_several_nodes_and_stops_what_it_started(tmp_path):
    code, log, seen, listening = run_watched(
        ["bash", str(LAUNCH / "local_cluster.sh"), "--workers", "2", "--cpus-per-node", "1",
         "--storage", str(tmp_path), "--name", "quick", "--", "quickstart", "--arg", "epochs=1"],
        env_for_scripts(), before=lambda: shutil.rmtree(tmp_path / "quick", ignore_errors=True))
    assert code == 0, log[-3000:]

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


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_local_cluster_stops_its_nodes_on_ctrl_c_while_starting(tmp_path):
    """Ctrl-C (SIGINT to the script's process group, as a terminal sends it) once the head is up and
    a worker is starting: exit 130, and nothing the script started is left."""
    import signal

    proc = subprocess.Popen(
        ["bash", str(LAUNCH / "local_cluster.sh"), "--workers", "2", "--storage", str(tmp_path), "--",
         "quickstart", "--arg", "epochs=1"],
        env=env_for_scripts(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    output, seen, listening = [], {}, set()

    def read():
        for line in proc.stdout:
            output.append(line)
            if line.startswith("local_cluster: worker 1"):
                os.killpg(proc.pid, signal.SIGINT)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        watch_tree(proc, seen, listening)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    log = "".join(output)
    kept = [line.split()[-1] for line in output if line.startswith("local_cluster: logs kept in")]
    token_left = [folder for folder in kept if (Path(folder) / "auth_token").exists()]
    for folder in kept:
        shutil.rmtree(folder, ignore_errors=True)
    assert proc.returncode == 130, log[-3000:]
    assert kept and not token_left, (kept, token_left)
    assert "stopping the cluster" in log and "local_cluster: sweep" not in log, log[-3000:]
    assert any(name == "raylet" for _, name in seen.values()), seen  # the head had started
    deadline = time.time() + 5
    while still_alive(seen) and time.time() < deadline:
        time.sleep(0.5)
    assert not still_alive(seen), still_alive(seen)


def test_local_cluster_refuses_options_it_sets():
    out = subprocess.run(["bash", str(LAUNCH / "local_cluster.sh"), "--", "quickstart", "--address", "x:1"],
                         env=env_for_scripts(), capture_output=True, text=True)
    assert out.returncode == 2 and "sets --address" in out.stderr, out.stderr


@pytest.mark.parametrize("script", ["local_cluster.sh", "slurm.sbatch", "cluster.sh"])
def test_shell_scripts_parse_and_pass_shellcheck(script):
    subprocess.run(["bash", "-n", str(LAUNCH / script)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    out = subprocess.run(["shellcheck", "--severity=warning", str(LAUNCH / script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


# ---- SLURM: the batch script's logic, under a fake SLURM on this machine ---------------------------
# The fakes run every step here: srun runs its command, scontrol names two nodes (so the script
# starts a head and one worker), and `ray` and `searchlab` keep 127.0.0.1 as given (as
# local_cluster.sh's on_loopback does), so that the fake cluster stays on loopback.
LOOPBACK_PY = """import runpy, sys
import ray._private.services as services
services.resolve_ip_for_localhost = lambda host: host
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)"""

FAKES = {
    "srun": """#!/bin/bash
# srun [options] COMMAND...: run COMMAND here
while [ $# -gt 0 ]; do
  case "$1" in -w|--nodelist|-N|-n) shift 2 ;; -*) shift ;; *) break ;; esac
done
echo "$*" >> "$FAKE_SLURM_LOG"
exec "$@"
""",
    "scontrol": """#!/bin/bash
[ "$1 $2" = "show hostnames" ] || { echo "fake scontrol: only 'show hostnames'" >&2; exit 2; }
printf '%s\\n' fakenode1 fakenode2
""",
    "hostname": """#!/bin/bash
[ "${1:-}" = --ip-address ] && { echo 127.0.0.1; exit 0; }
exec /bin/hostname "$@"
""",
    "ray": f"""#!/bin/bash
exec "{sys.executable}" -c '{LOOPBACK_PY}' ray.scripts.scripts "$@"
""",
    "searchlab": f"""#!/bin/bash
exec "{sys.executable}" -c '{LOOPBACK_PY}' searchlab.cli "$@"
""",
}


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_slurm_script_starts_head_and_worker_runs_the_sweep_and_stops_its_steps(tmp_path):
    fakes = tmp_path / "bin"
    fakes.mkdir()
    for name, text in FAKES.items():
        (fakes / name).write_text(text)
        (fakes / name).chmod(0o755)
    storage = tmp_path / "results"
    job = str(os.getpid())  # the script's Ray folder on each node is /tmp/ray-JOB
    env = env_for_scripts()
    env.update({"PATH": os.pathsep.join([str(fakes), env["PATH"]]), "FAKE_SLURM_LOG": str(tmp_path / "srun.log"),
                "SLURM_JOB_ID": job, "SLURM_JOB_NODELIST": "fakenode[1-2]", "SLURM_CPUS_PER_TASK": "1",
                "SLURM_GPUS_PER_NODE": "gpu:0", "SEARCHLAB_RESULTS": str(storage),
                "SEARCHLAB_RAY_PORT": str(free_port())})
    srun_log = tmp_path / "srun.log"

    def fresh():
        srun_log.unlink(missing_ok=True)
        shutil.rmtree(storage, ignore_errors=True)
        shutil.rmtree(f"/tmp/ray-{job}", ignore_errors=True)

    try:
        code, log, seen, listening = run_watched(
            ["bash", str(LAUNCH / "slurm.sbatch"), "quickstart", "--arg", "epochs=1", "--name", "quick"], env, fresh)
    finally:
        shutil.rmtree(f"/tmp/ray-{job}", ignore_errors=True)
    assert code == 0, log[-3000:]

    steps = srun_log.read_text().splitlines()
    assert steps[0] == "hostname --ip-address"
    assert steps[1].startswith("ray start --head --block --node-ip-address=127.0.0.1"), steps
    assert steps[2].startswith(f"ray start --block --address=127.0.0.1:{env['SEARCHLAB_RAY_PORT']}"), steps
    assert len(steps) == 3, steps

    from searchlab import sweep

    rows = sweep.trial_table(storage / "quick")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"TERMINATED"}, rows
    nodes = {json.loads(p.read_text())["placement"]["node_id"] for p in (storage / "quick").glob("*/searchlab_trial.json")}
    assert len(nodes) == 2, nodes
    assert sum(name == "raylet" for _, name in seen.values()) == 2, seen
    assert not [s for s in listening if s[0] not in LOOPBACK], listening
    assert not (storage / f".ray_auth_token.{job}").exists()  # the job's token goes with the job
    deadline = time.time() + 5
    while still_alive(seen) and time.time() < deadline:
        time.sleep(0.5)
    assert not still_alive(seen), still_alive(seen)


# ---- ray up: the cluster YAML against Ray's own autoscaler schema -----------------------------------

def load_cluster_yaml():
    import yaml

    return yaml.safe_load((LAUNCH / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_autoscaler_schema():
    import jsonschema
    import ray
    from ray.autoscaler._private.util import validate_config

    config = load_cluster_yaml()
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(config)  # the schema and Ray's own cross-checks (head_node_type, min/max workers)

    # The same check refuses a key Ray does not know: it is not vacuous.
    broken = {**config, "available_node_types": {**config["available_node_types"],
                                                 "gpu_worker": {**config["available_node_types"]["gpu_worker"],
                                                                "gpus": 1}}}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


def test_cluster_yaml_installs_the_project_and_agrees_on_auth_everywhere():
    import ray

    config = load_cluster_yaml()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert any(t["resources"].get("GPU", 0) >= 1 and t.get("min_workers", 0) >= 1 for t in types.values())

    setup = " ".join(config["setup_commands"])
    assert "torch==2.14.1" in setup and "torchvision==0.29.1" in setup
    assert f"ray[default]=={ray.__version__}" in setup  # the nodes run the driver's Ray
    assert "pip install -q -e ~/searchlab" in setup and config["file_mounts"]["~/searchlab"] == "."
    assert "export RAY_AUTH_MODE=token" in setup  # also for `ray exec` (the driver)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # one token on every node

    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts), starts
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in json.dumps(config)

    # Shared storage: mounted before setup on every node, and the sweep's default --storage is on it.
    init = " ".join(config["initialization_commands"])
    assert "mount -t nfs4" in init and "/shared" in init
    assert "export SEARCHLAB_RESULTS=/shared/results" in setup
