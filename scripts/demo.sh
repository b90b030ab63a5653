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
    "$TINE" rm -f demo >/dev/null 2>&1 || true
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
"$TINE" rm -f demo
set +x
echo "main job OK"
