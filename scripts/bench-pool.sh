#!/usr/bin/env bash
# Fork latency with and without a warm pool, one run, same source.
# Usage: sudo scripts/bench-pool.sh [N] (N sequential forks each; default 10)
set -euo pipefail
N=${1:-10}
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
before_cleanup() { "$TINE" pool rm src >/dev/null 2>&1; }
# No NICs: the daemon claims no bridge, so benchmarks run beside any daemon.
export TINE_NETWORK=none
start_daemon tine-bpool
"$TINE" run --name src --network none >/dev/null
"$TINE" standby src >/dev/null

fork_times() { # $1 prefix → prints "running_ms ready_ms" per fork
    for i in $(seq "$N"); do
        "$TINE" --json fork src --name "$1-$i" | python3 -c \
            'import json,sys; f=json.load(sys.stdin)["forks"][0]; print(f["running_ms"], f["ready_ms"])'
        "$TINE" rm -f "$1-$i" >/dev/null
        sleep 1 # let a pool refill between forks
    done
}
stats() { # stdin: "running ready" lines
    python3 -c '
import sys, statistics as s
r = [tuple(map(float, l.split())) for l in sys.stdin if l.strip()]
run = sorted(x[0] for x in r); rdy = sorted(x[1] for x in r)
p = lambda v, q: v[min(len(v) - 1, int(q * len(v)))]
print(f"{sys.argv[1]:<6} n={len(r):<3} running p50 {s.median(run):7.1f} ms  p95 {p(run, .95):7.1f}  max {run[-1]:7.1f} | ready p50 {s.median(rdy):7.1f} ms  p95 {p(rdy, .95):7.1f}")
' "$1"
}
cold=$(fork_times cold)
"$TINE" pool set src --size 2 >/dev/null
for _ in $(seq 300); do
    [ "$("$TINE" --json pool ls | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["ready"])')" = 2 ] && break
    sleep 0.2
done
warm=$(fork_times warm)
echo "$cold" | stats cold
echo "$warm" | stats warm
"$TINE" pool ls
