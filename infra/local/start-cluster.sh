#!/usr/bin/env bash
# Start a two-node Ray cluster on this machine: a head raylet and a worker raylet, each with
# RAY_CPUS_PER_NODE CPUs, the dashboard (job submission API) on 127.0.0.1:RAY_DASHBOARD_PORT.
#
#   infra/local/start-cluster.sh              # prints the addresses; writes $SCALETOK_LOCAL_DIR/cluster.env
#   source /tmp/scaletok-local-6390/cluster.env   # RAY_API_SERVER_ADDRESS (job submit), RAY_ADDRESS (drivers)
#   ray job submit --working-dir . -- python -m jobs.tokenize ...
#   infra/local/stop-cluster.sh
#
# Each raylet runs under `ray start --block` in its own process group, so stop-cluster.sh stops
# exactly these processes (never `ray stop`, which kills every Ray on the machine).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

RAY="$SCALETOK_BIN/ray"
[[ -x "$RAY" ]] || die "no ray executable at $RAY (activate the venv or set SCALETOK_BIN)"
[[ -f "$SCALETOK_LOCAL_DIR/head.pid" ]] && kill -0 "$(cat "$SCALETOK_LOCAL_DIR/head.pid")" 2>/dev/null \
    && die "a cluster from $SCALETOK_LOCAL_DIR is running; run stop-cluster.sh first"
mkdir -p "$SCALETOK_LOCAL_DIR"
# A start that fails half way leaves nothing running.
cleanup_on_failure() {
    [[ $? == 0 ]] || STOP_GRACE_S=5 stop_groups "$SCALETOK_LOCAL_DIR/worker.pid" "$SCALETOK_LOCAL_DIR/head.pid"
}
trap cleanup_on_failure EXIT
GCS="$RAY_NODE_IP:$RAY_HEAD_PORT"
# Ray's unix sockets must fit in 107 bytes, so its session files go to a short path of their own.
RAY_TMP="/tmp/stray-$RAY_HEAD_PORT"
common=(--block --node-ip-address="$RAY_NODE_IP" --num-cpus="$RAY_CPUS_PER_NODE"
        --object-store-memory="$RAY_OBJECT_STORE_BYTES")

wait_for() {  # wait_for SECONDS DESCRIPTION PIDFILE COMMAND...
    local seconds="$1" what="$2" pidfile="$3"; shift 3
    for _ in $(seq $((seconds * 2))); do
        "$@" >/dev/null 2>&1 && return 0
        kill -0 "$(cat "$pidfile")" 2>/dev/null || die "$what exited; see $SCALETOK_LOCAL_DIR/*.log"
        sleep 0.5
    done
    die "$what not ready after ${seconds}s; see $SCALETOK_LOCAL_DIR/*.log"
}
alive_nodes() {
    "$RAY" status --address="$GCS" 2>/dev/null | grep -c '^ 1 node_' || true
}

# The dashboard agents' HTTP ports are set apart from each other (default 52365 for every node
# would make the second raylet retry and collide with any other Ray on the machine).
setsid "$RAY" start --head --port="$RAY_HEAD_PORT" "${common[@]}" --temp-dir="$RAY_TMP" \
    --dashboard-host=127.0.0.1 --dashboard-port="$RAY_DASHBOARD_PORT" \
    --dashboard-agent-listen-port=$((RAY_DASHBOARD_PORT + 1)) \
    --ray-client-server-port=$((RAY_HEAD_PORT + 20000)) \
    >"$SCALETOK_LOCAL_DIR/head.log" 2>&1 </dev/null &
echo $! >"$SCALETOK_LOCAL_DIR/head.pid"
wait_for "${START_TIMEOUT_S:-120}" "ray head" "$SCALETOK_LOCAL_DIR/head.pid" "$RAY" status --address="$GCS"

setsid "$RAY" start --address="$GCS" "${common[@]}" \
    --dashboard-agent-listen-port=$((RAY_DASHBOARD_PORT + 2)) \
    >"$SCALETOK_LOCAL_DIR/worker.log" 2>&1 </dev/null &
echo $! >"$SCALETOK_LOCAL_DIR/worker.pid"
two_nodes() { [[ "$(alive_nodes)" == 2 ]]; }
wait_for "${START_TIMEOUT_S:-120}" "ray worker" "$SCALETOK_LOCAL_DIR/worker.pid" two_nodes

cat >"$SCALETOK_LOCAL_DIR/cluster.env" <<ENV
export RAY_AUTH_MODE=$RAY_AUTH_MODE
export RAY_USAGE_STATS_ENABLED=$RAY_USAGE_STATS_ENABLED
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$RAY_DASHBOARD_PORT
export RAY_ADDRESS=$GCS
ENV
echo "ray cluster up: 2 nodes x $RAY_CPUS_PER_NODE CPU, GCS $GCS, dashboard http://127.0.0.1:$RAY_DASHBOARD_PORT"
echo "  source $SCALETOK_LOCAL_DIR/cluster.env   # sets RAY_API_SERVER_ADDRESS, RAY_ADDRESS, RAY_AUTH_MODE"
