#!/usr/bin/env bash
# Fork from a running source: how long the source is paused. The source maps
# its RAM file shared, so each fork's memory is a copy taken while it is
# paused (a reflink on XFS/btrfs, a sparse copy on ext4). The data dir's
# filesystem decides which (default: /tmp).
# Usage: sudo scripts/bench-from-running.sh [MEMORY] [N] [FILL_MIB]
#   (defaults 1G, 5 forks, 128 MiB filled in the guest before forking)
# TINE=path/to/tine picks the binary (compare builds side by side).
set -euo pipefail
MEM=${1:-1G}; N=${2:-5}; FILL=${3:-128}
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# No NICs: the daemon claims no bridge, so benchmarks run beside any daemon.
export TINE_NETWORK=none
start_daemon tine-bfr "${DATA_PARENT:-/tmp}"
median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.stdin.read().split()]; print(round(statistics.median(v),1))'; }

"$TINE" run --name src --memory "$MEM" --network none >/dev/null
"$TINE" exec src -- sh -c "mount -o remount,size=90% /run && dd if=/dev/urandom of=/run/fill bs=1M count=$FILL 2>/dev/null && sync"
pause=""; running=""; alloc=""
# Fork 0 warms up and is not counted.
for i in $(seq 0 "$N"); do
    out=$("$TINE" --json fork src --from-running --name f$i | python3 -c '
import json,sys; r=json.load(sys.stdin); f=r["forks"][0]
assert r["ok"] == 1, r
print(r["source_pause_ms"], f["running_ms"])')
    dir=$("$TINE" --json inspect f$i | python3 -c 'import json,sys; print(json.load(sys.stdin)["dir"])')
    mib=$(( $(stat -c %b "$dir/memory") * 512 >> 20 ))
    "$TINE" rm -f f$i >/dev/null
    if [ "$i" -gt 0 ]; then
        pause="$pause ${out% *}"; running="$running ${out#* }"; alloc="$alloc $mib"
    fi
done
fs=$(stat -f -c %T "$DATA")
echo "$MEM source on $fs, $FILL MiB filled, $N forks: source pause median $(echo $pause | median) ms [$pause ]," \
    "fork running median $(echo $running | median) ms, fork memory file allocates [$alloc ] MiB"
