#!/usr/bin/env bash
# The main job: start a daemon, boot a VM, run commands in it, clean up.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
start_daemon tine-demo

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
