"""Checks a sweep makes of the Ray cluster before it starts, so that a mistake is one clear line
rather than a hang or a failure hours in.

- Every resource request (a trial of each kind, a CKA actor) fits on some node. Ray would otherwise
  leave such a trial pending for ever, with only a warning in the log.
- On a cluster (``--address``), every node that can run trials sees the experiment folder and the
  datasets: Tune writes results and checkpoints from every node into ``--storage``, and each trial
  loads its data on the node it runs on, from that node's ``$SEARCHLAB_DATA``. Each node answers
  with a task pinned to it.
"""
import secrets
from pathlib import Path

from searchlab import spaces
from searchlab.errors import UserError

MARKER = ".searchlab_node_check"


def bundle(resources):
    """A resource request with its defaults: {"cpu": 1, "gpu": 0, ...} -> {"cpu", "gpu"}."""
    resources = {"cpu": 1, "gpu": 0, **resources}
    return {"cpu": resources["cpu"], "gpu": resources["gpu"]}


def requests(spec):
    """{what asks: its bundle} for the sweep's trials (per kind when the space gives a table) and
    its CKA actors."""
    resources = spec["resources"]
    if resources and all(isinstance(v, dict) for v in resources.values()):
        found = {f"{kind} trials": bundle(r) for kind, r in resources.items()}
    else:
        found = {"trials": bundle(resources)}
    if spec["cka"]:
        found["CKA actors"] = bundle({k: v for k, v in spec["cka"].items() if k != "actors"})
    return found


def check_resources(spec, nodes):
    """UserError when a request of ``spec`` fits on none of ``nodes`` (ray.nodes() entries)."""
    have = [(n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0)) for n in nodes if n["Alive"]]
    for what, asked in requests(spec).items():
        if not any(cpus >= asked["cpu"] and gpus >= asked["gpu"] for cpus, gpus in have):
            largest = ", ".join(f"{c:g} CPU + {g:g} GPU" for c, g in sorted(set(have), reverse=True))
            raise UserError(f"{what} ask for {asked['cpu']:g} CPU + {asked['gpu']:g} GPU, more than any node "
                            f"of this cluster has (nodes: {largest}); lower the space's resources or add a "
                            f"node that large")


def check_nodes(spec, experiment, nodes):
    """UserError unless every node with CPUs sees ``experiment`` (shared storage) and the data."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    workers = [n for n in nodes if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    # No CPU asked: the check must run even while another sweep's trials fill the node.
    check = ray.remote(num_cpus=0)(_check)
    token = secrets.token_hex(8)
    marker = Path(experiment) / MARKER
    marker.write_text(token)
    try:
        configs = spaces.example_configs(spec)
        answers = ray.get([
            check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(str(marker), token, configs) for n in workers])
    finally:
        marker.unlink()
    blind = [_name(n) for n, (sees, _) in zip(workers, answers) if not sees]
    if blind:
        raise UserError(f"storage {Path(experiment).parent} is not visible on {len(blind)} of the cluster's "
                        f"{len(workers)} nodes ({', '.join(blind)}): on a cluster --storage must be a folder "
                        f"every node mounts at the same path (e.g. NFS)")
    for n, (_, data_error) in zip(workers, answers):
        if data_error:
            raise UserError(f"on node {_name(n)}: {data_error}")


def _name(node):
    return f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})"  # nodes of one machine share the address


def _check(marker, token, configs):
    """(does this node see the marker with the token, the data error here or None)."""
    path = Path(marker)
    sees = path.is_file() and path.read_text() == token
    try:
        spaces.check_configs_data(configs)
        return sees, None
    except (UserError, FileNotFoundError) as e:
        return sees, str(e)
