#!/usr/bin/env bash
# Quick lifecycle figures in one run: boot (median of N), idle QEMU RSS,
# standby/restore for 256 MiB and 1 GiB guests (median of N), single fork,
# fork-from-running source pause, and a 10-fork burst.
# Usage: sudo scripts/bench-basic.sh [N]   (default 5)
set -euo pipefail
N=${1:-5}
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# No NICs: the daemon claims no bridge, so benchmarks run beside any daemon.
export TINE_NETWORK=none
start_daemon tine-bbasic
now() { date +%s.%N; }
ms() { python3 -c "print(round(($2-$1)*1000,1))"; }
median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.stdin.read().split()]; print(round(statistics.median(v),1))'; }

boots=""; rss=""
for i in $(seq "$N"); do
    t=$(now); "$TINE" run --name b$i --network none >/dev/null; boots="$boots $(ms "$t" "$(now)")"
done
sleep 5
for i in $(seq "$N"); do
    pid=$("$TINE" --json inspect b$i | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
    rss="$rss $(awk '/VmRSS/ {print $2/1024}' /proc/$pid/status)"
done
echo "boot (run -> agent answers) median of $N: $(echo $boots | median) ms  [$boots ]"
echo "idle QEMU RSS median: $(echo $rss | median) MiB  [$rss ]"
for i in $(seq "$N"); do "$TINE" rm -f b$i >/dev/null; done

for mem in ${MEMS:-256M 1G}; do
    n=s-$(echo $mem | tr A-Z a-z); "$TINE" run --name $n --memory $mem --network none >/dev/null
    "$TINE" exec $n -- sh -c 'dd if=/dev/urandom of=/run/fill bs=1M count=64 2>/dev/null'
    sb=""; rs=""
    for i in $(seq "$N"); do
        t=$(now); "$TINE" standby $n >/dev/null; sb="$sb $(ms "$t" "$(now)")"
        t=$(now); "$TINE" restore $n >/dev/null; rs="$rs $(ms "$t" "$(now)")"
    done
    echo "$mem guest (64 MiB dirtied): standby median $(echo $sb | median) ms [$sb ], restore (-> agent) median $(echo $rs | median) ms [$rs ]"
    "$TINE" rm -f $n >/dev/null
done

"$TINE" run --name src --network none >/dev/null
"$TINE" exec src -- sh -c 'dd if=/dev/urandom of=/run/fill bs=1M count=64 2>/dev/null'
"$TINE" --json fork src --from-running --name live | python3 -c '
import json,sys; r=json.load(sys.stdin); f=r["forks"][0]
p, a, b = r["source_pause_ms"], f["running_ms"], f["ready_ms"]
print(f"fork --from-running: source paused {p:.1f} ms, fork running {a:.1f} ms, ready {b:.1f} ms")'
"$TINE" standby src >/dev/null
"$TINE" --json fork src --name one | python3 -c '
import json,sys; r=json.load(sys.stdin); f=r["forks"][0]
a, b = f["running_ms"], f["ready_ms"]
print(f"single fork from standby: running {a:.1f} ms, ready {b:.1f} ms")'
"$TINE" --json fork src --name burst --count 10 | python3 -c '
import json,sys,statistics as s; r=json.load(sys.stdin)
run=sorted(f["running_ms"] for f in r["forks"] if f["running_ms"]); rdy=sorted(f["ready_ms"] for f in r["forks"] if f["ready_ms"])
ok, wall = r["ok"], r["wall_ms"]
print(f"10-fork burst (parallel 4): ok {ok}, wall {wall:.0f} ms, running p50 {s.median(run):.0f} max {run[-1]:.0f} ms, ready p50 {s.median(rdy):.0f} max {rdy[-1]:.0f} ms")'
