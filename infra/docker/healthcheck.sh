#!/usr/bin/env bash
# Container health (Dockerfile HEALTHCHECK): Lacquer and Ray import, and where a Ray node runs
# in this container (a raylet process), the cluster's GCS at the address that node joined
# (/tmp/ray/ray_current_cluster, written by `ray start` on heads and workers) answers, with
# Ray's token from RAY_AUTH_TOKEN / ~/.ray/auth_token when token authentication is on.
set -euo pipefail
python -c "import lacquer.cli, mastering.chain, ray" >/dev/null
raylet_running() {
  local comm
  for comm in /proc/[0-9]*/comm; do
    [[ "$(cat "$comm" 2>/dev/null)" == raylet ]] && return 0
  done
  return 1
}
if raylet_running; then
  ray health-check --address "$(cat /tmp/ray/ray_current_cluster)" --skip-version-check
fi
