# Shared settings of the local cluster scripts (sourced, not run).
#
# Everything can be overridden from the environment. The defaults keep all traffic on loopback:
# Ray rewrites 127.0.0.1 to the host's external address, 127.0.0.2 it leaves alone.

SCALETOK_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# Ray's token auth must be the same in every Ray process (head, worker, driver, `ray job submit`).
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"

RAY_NODE_IP="${RAY_NODE_IP:-127.0.0.2}"
RAY_HEAD_PORT="${RAY_HEAD_PORT:-6390}"
RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
RAY_CPUS_PER_NODE="${RAY_CPUS_PER_NODE:-1}"
RAY_OBJECT_STORE_BYTES="${RAY_OBJECT_STORE_BYTES:-300000000}"
S3_PORT="${S3_PORT:-5077}"
S3_BUCKET="${S3_BUCKET:-scaletok}"

# Pids, logs, Ray's session files and the env file live here; one directory per cluster.
SCALETOK_LOCAL_DIR="${SCALETOK_LOCAL_DIR:-/tmp/scaletok-local-$RAY_HEAD_PORT}"

# The ray / python of the active environment, else the repository's .venv.
if [[ -z "${SCALETOK_BIN:-}" ]]; then
    if command -v ray >/dev/null 2>&1; then
        SCALETOK_BIN="$(dirname "$(command -v ray)")"
    else
        SCALETOK_BIN="$SCALETOK_REPO/.venv/bin"
    fi
fi

# Job entrypoints (`ray job submit -- python -m jobs.x`) run with the raylets' PATH: this `python`.
export PATH="$SCALETOK_BIN:$PATH"

die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }

# Stop the process groups we started (one pid file each, the pid is the group's leader): TERM all
# of them, wait up to STOP_GRACE_S, then KILL what is left.
stop_groups() {
    local grace="${STOP_GRACE_S:-15}" pids=() pidfile pid
    for pidfile in "$@"; do
        [[ -f "$pidfile" ]] || continue
        pid="$(cat "$pidfile")"
        if kill -0 -- "-$pid" 2>/dev/null; then   # any process left in the group
            kill -TERM -- "-$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
        rm -f "$pidfile"
    done
    for _ in $(seq $((grace * 4))); do
        local alive=0
        for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && return 0
        sleep 0.25
    done
    for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
