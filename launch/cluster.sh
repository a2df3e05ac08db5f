#!/usr/bin/env bash
# Start a Ray cluster for searchlab sweeps by hand (one head, any number of workers).
#
#   launch/cluster.sh head                 # on the head node; prints the address
#   launch/cluster.sh worker HEAD_IP:6379  # on each worker node
#   searchlab sweep baseline --address HEAD_IP:6379 --storage /shared/results
#
# Every node and every driver must agree on RAY_AUTH_MODE (token or disabled; Ray 2.60 turns token
# authentication on for local clusters): export the same value everywhere before running this.
# --storage must be a folder all nodes see (NFS) or object storage, and the datasets must be
# readable at the same $SEARCHLAB_DATA on every worker.
set -euo pipefail
echo "RAY_AUTH_MODE=${RAY_AUTH_MODE:-<unset: Ray's default>}"
case "${1:-}" in
  head)   ray start --head --port=6379 --include-dashboard=false ;;
  worker) ray start --address="${2:?usage: launch/cluster.sh worker HEAD_IP:6379}" ;;
  stop)   ray stop ;;
  *)      echo "usage: launch/cluster.sh head | worker HEAD_IP:6379 | stop" >&2; exit 2 ;;
esac
