#!/usr/bin/env bash
# Added fork latency from network reconfiguration (BENCHMARKS.md, "Network").
#
#   scripts/bench-network.sh [N]      (root; N forks per side, default 10)
#
# In a private network namespace (nothing of the host is touched), one daemon
# parks two sources of the same image: one with a NIC, one with --network none.
# It then alternates single forks of each (one at a time, each removed before
# the next, so load stays the same for both sides) and prints the p50/p90 of
# request -> ready for both, their difference, and the daemon's own timing of
# the network step (agent configure_network + TAP onto the bridge).
#
# Environment: TINE (binary, default ${CARGO_TARGET_DIR:-target}/release/tine), TINE_IMAGES_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "must run as root (network namespace, QEMU)" >&2; exit 1; }
N=${1:-10}
TINE=${TINE:-${CARGO_TARGET_DIR:-target}/release/tine}
IMAGES=${TINE_IMAGES_DIR:-/var/lib/tine/images}
[ -x "$TINE" ] || { echo "no $TINE: cargo build --release -p tine-cli (or set TINE)" >&2; exit 1; }

NS=tine-bench-net-$$
DATA=$(mktemp -d /tmp/tine-bn.XXXXXX)
DAEMON=
cleanup() {
    [ -n "$DAEMON" ] && "$TINE" --data-dir "$DATA" rm -f src-net src-none >/dev/null 2>&1 || true
    [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
ip netns exec "$NS" sysctl -q -w net.ipv4.ip_forward=0

t() { "$TINE" --data-dir "$DATA" "$@"; }
ip netns exec "$NS" "$TINE" serve --data-dir "$DATA" --images-dir "$IMAGES" >"$DATA/daemon.log" 2>&1 &
DAEMON=$!
for _ in $(seq 200); do t ps >/dev/null 2>&1 && break; sleep 0.05; done

t run --name src-net >/dev/null
t run --name src-none --network none >/dev/null
t standby src-net >/dev/null
t standby src-none >/dev/null

field() { python3 -c "import json,sys; print(json.load(sys.stdin)['forks'][0]['$1'])"; }
: >"$DATA/net" && : >"$DATA/none"
for i in $(seq "$N"); do
    for side in net none; do
        t --json fork "src-$side" --name "f-$side-$i" | field ready_ms >>"$DATA/$side"
        t rm -f "f-$side-$i" >/dev/null
    done
done

stats() { # file -> "p50 p90 min max" in ms
    sort -n "$1" | awk '{ v[NR] = $1 } END {
        p50 = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        i = int(0.9 * NR + 0.999); if (i < 1) i = 1
        printf "%.1f %.1f %.1f %.1f", p50, v[i], v[1], v[NR] }'
}
read -r n50 n90 nmin nmax <<<"$(stats "$DATA/net")"
read -r x50 x90 xmin xmax <<<"$(stats "$DATA/none")"
sed 's/\x1b\[[0-9;]*m//g' "$DATA/daemon.log" | grep 'network up' | grep 'name="f-net-' >"$DATA/steps"
grep -o 'total_ms=[0-9.]*' "$DATA/steps" | cut -d= -f2 >"$DATA/step"
grep -o 'guest_ms=[0-9.]*' "$DATA/steps" | cut -d= -f2 >"$DATA/guest"
paste -d' ' "$DATA/step" "$DATA/guest" | awk '{ print $1 - $2 }' >"$DATA/attach"
read -r s50 s90 smin smax <<<"$(stats "$DATA/step")"
read -r g50 g90 gmin gmax <<<"$(stats "$DATA/guest")"
read -r a50 a90 amin amax <<<"$(stats "$DATA/attach")"
echo "forks per side: $N (sequential, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%-34s %8s %8s %8s %8s\n' "request -> ready (ms)" p50 p90 min max
printf '%-34s %8s %8s %8s %8s\n' "fork of a source with a NIC" "$n50" "$n90" "$nmin" "$nmax"
printf '%-34s %8s %8s %8s %8s\n' "fork of a source without" "$x50" "$x90" "$xmin" "$xmax"
printf '%-34s %8s\n' "added (p50 difference)" "$(awk -v a="$n50" -v b="$x50" 'BEGIN { printf "%.1f", a - b }')"
printf '%-34s %8s %8s %8s %8s\n' "network step (daemon log)" "$s50" "$s90" "$smin" "$smax"
printf '%-34s %8s %8s %8s %8s\n' "  agent configure_network" "$g50" "$g90" "$gmin" "$gmax"
printf '%-34s %8s %8s %8s %8s\n' "  TAP onto the bridge (ip)" "$a50" "$a90" "$amin" "$amax"
