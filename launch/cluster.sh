#!/usr/bin/env bash
# A Ray cluster of your own machines, started by hand: one head, any number of workers. Each command
# runs its node in the foreground (`ray start --block`): Ctrl-C or SIGTERM stops that node and only it
# (run it in tmux, or as a service). Then run sweeps from the head.
#
#   launch/cluster.sh head                  # on the head machine; prints the address
#   launch/cluster.sh worker HEAD_IP:6379   # on each worker machine
#   searchlab sweep cka_study --address HEAD_IP:6379 --storage /shared/results   # on the head
#
# Every node and the driver must agree on authentication: this script sets RAY_AUTH_MODE=token for
# the node, and the driver must set it too (the searchlab CLI does). They must also hold the same
# token: create it once (`ray get-auth-token --generate` writes ~/.ray/auth_token) and copy that file
# to the same place on every machine (mode 600), or point RAY_AUTH_TOKEN_PATH at one file on a shared
# file system.
# --storage must be a folder every node sees at the same path (NFS), and the datasets must be
# readable at the same $SEARCHLAB_DATA on every node.
# The dashboard listens on the head's 127.0.0.1 only: reach it with ssh -L 8265:127.0.0.1:8265 HEAD.
# The machines must reach each other on the head's port (6379) and on Ray's other ports; keep them
# off the public internet. For a cluster on one machine, use launch/local_cluster.sh instead.
set -euo pipefail
export RAY_AUTH_MODE=token
case "${1:-}" in
  head)   exec ray start --block --head --port=6379 --dashboard-host=127.0.0.1 --disable-usage-stats ;;
  worker) exec ray start --block --address="${2:?usage: launch/cluster.sh worker HEAD_IP:6379}" \
            --disable-usage-stats ;;
  *)      echo "usage: launch/cluster.sh head | worker HEAD_IP:6379" >&2; exit 2 ;;
esac
