#!/usr/bin/env bash
# Start an S3-protocol server (moto) on 127.0.0.1:S3_PORT with the bucket S3_BUCKET, for trying
# the s3:// workflow on one machine. Writes $SCALETOK_LOCAL_DIR/s3.env (endpoint and keys).
#
#   infra/local/start-s3.sh && source /tmp/scaletok-local-6390/s3.env
#   python -m jobs.tokenize --input "s3://$S3_BUCKET/shards/*.tar" --output "s3://$S3_BUCKET/tokens" \
#       --storage-options endpoint_url=$AWS_ENDPOINT_URL ...
#   infra/local/stop-s3.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

PY="$SCALETOK_BIN/python"
[[ -x "$PY" ]] || die "no python at $PY (activate the venv or set SCALETOK_BIN)"
[[ -f "$SCALETOK_LOCAL_DIR/s3.pid" ]] && kill -0 "$(cat "$SCALETOK_LOCAL_DIR/s3.pid")" 2>/dev/null \
    && die "an S3 server from $SCALETOK_LOCAL_DIR is running; run stop-s3.sh first"
mkdir -p "$SCALETOK_LOCAL_DIR"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
ENDPOINT="http://127.0.0.1:$S3_PORT"

setsid "$PY" -m moto.server -H 127.0.0.1 -p "$S3_PORT" >"$SCALETOK_LOCAL_DIR/s3.log" 2>&1 </dev/null &
echo $! >"$SCALETOK_LOCAL_DIR/s3.pid"
# Creating the bucket doubles as the readiness check (retried until the server answers).
"$PY" - "$ENDPOINT" "$S3_BUCKET" <<'PY' || { stop_groups "$SCALETOK_LOCAL_DIR/s3.pid"; die "S3 server did not start; see $SCALETOK_LOCAL_DIR/s3.log"; }
import sys, time
import boto3, botocore.exceptions
endpoint, bucket = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint)
for _ in range(120):
    try:
        s3.create_bucket(Bucket=bucket)
        break
    except botocore.exceptions.EndpointConnectionError:
        time.sleep(0.25)
else:
    sys.exit(1)
PY
cat >"$SCALETOK_LOCAL_DIR/s3.env" <<ENV
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export AWS_DEFAULT_REGION=$AWS_DEFAULT_REGION
export AWS_ENDPOINT_URL=$ENDPOINT
export S3_BUCKET=$S3_BUCKET
ENV
echo "S3 server up: $ENDPOINT, bucket s3://$S3_BUCKET"
echo "  source $SCALETOK_LOCAL_DIR/s3.env"
