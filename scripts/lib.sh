# Shared by the demo and bench scripts: a `tine serve` on a fresh temporary
# data dir that is torn down (every VM removed) when the script exits.
# Usage: . scripts/lib.sh; start_daemon PREFIX [PARENT_DIR]
# Sets TINE, DATA, DAEMON; a script may define `before_cleanup` to run first.
TINE=${TINE:-tine}

start_daemon() {
    DATA=$(mktemp -d "${2:-/tmp}/$1.XXXXXX")
    export TINE_DATA_DIR=$DATA TINE_IMAGES_DIR=${TINE_IMAGES_DIR:-/var/lib/tine/images}
    "$TINE" serve >"$DATA/daemon.log" 2>&1 &
    DAEMON=$!
    trap cleanup EXIT
    for _ in $(seq 100); do
        "$TINE" ps >/dev/null 2>&1 && return 0
        kill -0 "$DAEMON" 2>/dev/null || break
        sleep 0.1
    done
    # Say why instead of a later "cannot reach the daemon".
    echo "tine serve did not come up; its log:" >&2
    cat "$DATA/daemon.log" >&2
    exit 1
}

cleanup() {
    if declare -F before_cleanup >/dev/null; then before_cleanup || true; fi
    # Remove every VM this run made, even after a failure half-way.
    "$TINE" ps 2>/dev/null | awk 'NR>1 {print $2}' | xargs -r "$TINE" rm -f >/dev/null 2>&1 || true
    kill "$DAEMON" 2>/dev/null || true
    wait "$DAEMON" 2>/dev/null || true
    rm -rf "$DATA"
}
