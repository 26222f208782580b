#!/usr/bin/env bash
# Stop the S3 server started by start-s3.sh (the same SCALETOK_LOCAL_DIR).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
STOP_GRACE_S=5 stop_groups "$SCALETOK_LOCAL_DIR/s3.pid"
rm -f "$SCALETOK_LOCAL_DIR/s3.env"
echo "S3 server stopped ($SCALETOK_LOCAL_DIR)"
