#!/usr/bin/env bash
# Stop the cluster started by start-cluster.sh (the same RAY_HEAD_PORT / SCALETOK_LOCAL_DIR).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
stop_groups "$SCALETOK_LOCAL_DIR/worker.pid" "$SCALETOK_LOCAL_DIR/head.pid"
rm -f "$SCALETOK_LOCAL_DIR/cluster.env"
echo "ray cluster stopped ($SCALETOK_LOCAL_DIR)"
