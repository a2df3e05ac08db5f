#!/usr/bin/env bash
# Run a searchlab sweep on a Ray cluster of several nodes on this machine: one head and N workers,
# each a separate `ray start` with its own CPUs and GPUs, all on 127.0.0.1. It tries the multi-node
# path (placement across nodes, --address, shared --storage) without a real cluster, then stops the
# processes it started, and only those, by PID, also on an error or Ctrl-C.
#
#   launch/local_cluster.sh [--workers 2] [--cpus-per-node 1] [--gpus-per-node 0] [--head-cpus N]
#                           [--storage DIR] [--name NAME] [--dashboard] -- SPACE [--arg NAME=VALUE ...]
#
#   launch/local_cluster.sh --workers 2 -- quickstart --arg epochs=4
#
# GPUs given here are declared to Ray, not detected: on a machine without one they test scheduling
# (fractional requests, CUDA_VISIBLE_DEVICES), and a trial then trains on the CPU.
#
# Security: token authentication (RAY_AUTH_MODE=token) with a token made for this cluster alone
# (RAY_AUTH_TOKEN_PATH, in the cluster's folder), exported for every `ray start` and for the sweep,
# so all of them agree. Every node's address is 127.0.0.1, and the dashboard, when --dashboard asks
# for it, listens on 127.0.0.1 only.
#
# Ray 2.60 replaces a loopback address given to it (--node-ip-address, --address, ray.init(address))
# by the machine's network address, and then listens there. To keep the cluster on loopback, every
# Ray command here runs through on_loopback, which turns that replacement off in its own process;
# given 127.0.0.1, the GCS, raylets and workers listen on 127.0.0.1.
set -euo pipefail

usage() {
  sed -n '7,8p' "$0" | sed 's/^#   //' >&2
  exit 2
}

workers=2 cpus=1 gpus=0 head_cpus="" storage="${SEARCHLAB_RESULTS:-$HOME/searchlab_results}" name="" dashboard=0
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers="$2"; shift 2 ;;
    --cpus-per-node) cpus="$2"; shift 2 ;;
    --gpus-per-node) gpus="$2"; shift 2 ;;
    --head-cpus) head_cpus="$2"; shift 2 ;;
    --storage) storage="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    --dashboard) dashboard=1; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "local_cluster: unknown option $1 (options: --workers --cpus-per-node --gpus-per-node" \
            "--head-cpus --storage --name --dashboard, then -- SPACE [sweep options])" >&2; exit 2 ;;
  esac
done
[ $# -ge 1 ] || usage
space="$1"; shift
for a in "$@"; do
  case "$a" in --address*|--storage*|--name*)
    echo "local_cluster: give $a before the --: this script sets --address, --storage and --name" >&2; exit 2 ;;
  esac
done
head_cpus="${head_cpus:-$cpus}"
name="${name:-$(basename "${space%.py}")-$(date +%Y%m%d-%H%M%S)}"
storage="$(mkdir -p "$storage" && cd "$storage" && pwd)"  # absolute: every node resolves it alike
python="${PYTHON:-python}"

# Everything of this cluster lives in one fresh folder: Ray's sessions, logs and sockets, the token,
# and each node's output. A short path under /tmp: Ray's Unix sockets live under it, and a socket
# path may not exceed 107 characters.
cluster_dir="$(mktemp -d /tmp/searchlab-cluster.XXXXXX)"
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$cluster_dir/auth_token"
# Ray prefers RAY_AUTH_TOKEN to the file; RAY_ADDRESS names another cluster; Ray's single-node switch
# (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) would stop every worker node from joining.
unset RAY_AUTH_TOKEN RAY_ADDRESS RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
(umask 077 && "$python" -c 'import secrets; print(secrets.token_hex(32))' > "$RAY_AUTH_TOKEN_PATH")

# `python -c "$on_loopback" MODULE ARGS...` runs MODULE as `python -m` would, keeping 127.0.0.1 as given.
on_loopback='
import runpy, sys
import ray._private.services as services
services.resolve_ip_for_localhost = lambda host: host
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)'

# ---- stopping: by PID, whatever happens ------------------------------------------------------------
node_pids=()  # the `ray start --block` processes: every Ray process of a node descends from one

# shellcheck disable=SC2317  # the functions below run from the EXIT trap
marked() {  # PIDs whose environment names this cluster's token file: whatever this script started
  # (its Ray processes inherit the variable), also those left without a parent when a node fails
  # while starting. Not this script itself.
  grep -lsxzF "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH" /proc/[0-9]*/environ | cut -d/ -f3 | grep -vx "$$" || true
}

descendants() {  # PID...: those PIDs and all their descendants that are alive now
  ps -eo pid=,ppid= | awk -v roots="$*" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
    { parent[$1] = $2 }
    END { do { grew = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; grew = 1 } } while (grew)
          for (p in keep) if (p in parent) print p }'
}

stop_cluster() {
  local code=$? pids left i
  trap - EXIT INT TERM
  if [ ${#node_pids[@]} -gt 0 ]; then
    # Every process of the cluster now: once a `ray start` is gone, its children are no longer found
    # under it (marked finds them on Linux).
    pids="$(descendants "${node_pids[@]}") $(marked)"
    echo "local_cluster: stopping the cluster" >&2
    # SIGTERM to `ray start --block` stops that node's processes gracefully; wait up to 20 s.
    kill -TERM "${node_pids[@]}" 2>/dev/null || true
    for i in $(seq 40); do
      left="$(for p in $pids; do kill -0 "$p" 2>/dev/null && echo "$p"; done)" || true
      [ -z "$left" ] && break
      sleep 0.5
    done
    # What ignored it (a worker still dialling its head, an agent winding down) is killed.
    # shellcheck disable=SC2086  # a list of PIDs
    if [ -n "$left" ]; then kill -KILL $left 2>/dev/null || true; fi
  fi
  rm -f "$RAY_AUTH_TOKEN_PATH"  # the cluster is gone, and its token with it
  if [ "$code" -eq 0 ]; then rm -rf "$cluster_dir"; else echo "local_cluster: logs kept in $cluster_dir" >&2; fi
  exit "$code"
}
trap stop_cluster EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  echo "local_cluster: $*" >&2
  exit 1
}

# ---- starting --------------------------------------------------------------------------------------
# Free ports, chosen here: Ray's fixed defaults (client server 10001, dashboard agent 52365) would
# clash with any other Ray cluster on this machine.
free_ports() {  # N: N free TCP ports on 127.0.0.1
  "$python" -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])' "$1"
}
read -r -a ports <<< "$(free_ports $((workers + 4)))"
gcs_port="${ports[0]}" client_port="${ports[1]}" dashboard_port="${ports[2]}"
address="127.0.0.1:$gcs_port"

start_node() {  # LABEL RAY-START-ARGS...: start one node in the background and wait until it is up
  local label="$1" log="$cluster_dir/$1.log" i
  shift
  "$python" -c "$on_loopback" ray.scripts.scripts start --block --disable-usage-stats --temp-dir="$cluster_dir" "$@" \
    > "$log" 2>&1 &
  node_pids+=("$!")
  for i in $(seq 240); do
    grep -q "Ray runtime started" "$log" && return 0
    kill -0 "$!" 2>/dev/null || fail "$label did not start; its output ($log):
$(tail -n 20 "$log")"
    sleep 0.5
  done
  fail "$label did not start within 120 s; see $log"
}

if [ "$dashboard" -eq 1 ]; then
  dashboard_args=(--include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$dashboard_port")
else
  dashboard_args=(--include-dashboard=false)
fi
echo "local_cluster: head (cpus $head_cpus, gpus $gpus) at $address; cluster folder $cluster_dir"
start_node head --head --node-ip-address=127.0.0.1 --port="$gcs_port" --ray-client-server-port="$client_port" \
  --dashboard-agent-listen-port="${ports[3]}" --num-cpus="$head_cpus" --num-gpus="$gpus" "${dashboard_args[@]}"
[ "$dashboard" -eq 1 ] && echo "local_cluster: dashboard on http://127.0.0.1:$dashboard_port"
for i in $(seq "$workers"); do
  echo "local_cluster: worker $i (cpus $cpus, gpus $gpus)"
  start_node "worker$i" --address="$address" --node-ip-address=127.0.0.1 \
    --dashboard-agent-listen-port="${ports[$((i + 3))]}" --num-cpus="$cpus" --num-gpus="$gpus"
done

# ---- the sweep -------------------------------------------------------------------------------------
started=$(date +%s)
set +e
"$python" -c "$on_loopback" searchlab.cli sweep "$space" --address "$address" --storage "$storage" --name "$name" "$@"
code=$?
set -e
echo "local_cluster: sweep exited $code after $(($(date +%s) - started)) s"

# Where the trials ran: each trial's searchlab_trial.json names its Ray node.
"$python" - "$storage/$name" <<'EOF' || true
import collections, glob, json, os, sys
nodes = collections.Counter()
for path in glob.glob(os.path.join(sys.argv[1], "*", "searchlab_trial.json")):
    with open(path) as f:
        nodes[json.load(f).get("placement", {}).get("node_id")] += 1
print(f"local_cluster: {sum(nodes.values())} trial(s) on {len(nodes)} node(s)")
for node, count in sorted(nodes.items(), key=lambda kv: -kv[1]):
    print(f"  node {str(node)[:12]}  {count} trial(s)")
EOF
exit "$code"
