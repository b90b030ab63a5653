#!/usr/bin/env bash
# The main job: start a daemon, boot a VM, run commands in it, clean up.
set -euo pipefail
TINE=${TINE:-tine}
DATA=$(mktemp -d /tmp/tine-demo.XXXXXX)
export TINE_DATA_DIR=$DATA
export TINE_IMAGES_DIR=${TINE_IMAGES_DIR:-/var/lib/tine/images}

"$TINE" serve >"$DATA/daemon.log" 2>&1 &
DAEMON=$!
cleanup() {
    # Remove every VM this run made, even after a failure half-way.
    "$TINE" ps 2>/dev/null | awk 'NR>1 {print $2}' | xargs -r "$TINE" rm -f >/dev/null 2>&1 || true
    kill "$DAEMON" 2>/dev/null || true
    wait "$DAEMON" 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT
for _ in $(seq 100); do "$TINE" ps >/dev/null 2>&1 && break; sleep 0.1; done

set -x
time "$TINE" run --name demo
"$TINE" exec demo -- uname -sr
"$TINE" exec demo -- sh -c 'echo hello from $(hostname); free -m | head -2'
"$TINE" ps
"$TINE" stop demo
"$TINE" start demo
"$TINE" exec demo -- cat /proc/uptime
"$TINE" exec demo -- sh -c "echo parked-state > /run/state"
"$TINE" standby demo
"$TINE" fork demo --name demo-fork --count 3
"$TINE" exec demo-fork-2 -- sh -c "cat /run/state; hostname"
"$TINE" restore demo
"$TINE" ps
"$TINE" rm -f demo-fork-1 demo-fork-2 demo-fork-3
"$TINE" rm -f demo
set +x
echo "main job OK"
