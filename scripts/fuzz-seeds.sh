#!/usr/bin/env bash
# Regenerate the checked-in fuzz seeds (fuzz/corpus/<target>/) from a real
# daemon run: boot a VM, snapshot it (zstd), park it, fork it, promote a
# template, set a pool, then copy the files tine wrote. Needs root, QEMU and
# the default guest image (scripts/setup.sh). Takes a few minutes under TCG.
#
#   sudo scripts/fuzz-seeds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
C=$ROOT/fuzz/corpus
IMAGES=${TINE_IMAGES_DIR:-/var/lib/tine/images}
cargo build -q -p tine-cli
TINE=${CARGO_TARGET_DIR:-$ROOT/target}/debug/tine

D=$(mktemp -d /tmp/tine-seeds.XXXXXX)
export TINE_DATA_DIR=$D
# Its own subnet and bridge: other daemons on this host keep theirs.
"$TINE" serve --images-dir "$IMAGES" --subnet 10.231.0.0/24 --bridge tinefz0 >"$D.log" 2>&1 &
DAEMON=$!
cleanup() {
    "$TINE" pool rm web2 --template >/dev/null 2>&1 || true
    "$TINE" rm -f web w >/dev/null 2>&1 || true
    "$TINE" system cleanup >/dev/null 2>&1 || true
    kill "$DAEMON" 2>/dev/null || true
    wait "$DAEMON" 2>/dev/null || true
    rm -rf "$D" "$D.log"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$D/tine.sock" ] && break; sleep 0.1; done

"$TINE" run --name web --memory 128M
"$TINE" exec web -- sh -c 'echo hello > /root/seed; sync'
"$TINE" snapshot create web --name s1 --compress zstd:3
"$TINE" snapshot inspect s1 --wait >/dev/null
"$TINE" standby web
"$TINE" fork web --name w --target standby
"$TINE" snapshot restore s1 --into web2
"$TINE" template promote web2
"$TINE" pool set web2 --template --size 1

mkdir -p "$C"/{instance_record,snapshot_record,pools_json,network_json,image_manifest,memory_zst,state_digest}
n=0
for f in "$D"/instances/*/instance.json; do cp "$f" "$C/instance_record/seed-$((n += 1)).json"; done
n=0
for f in "$D"/snapshots/*/snapshot.json; do cp "$f" "$C/snapshot_record/seed-$((n += 1)).json"; done
cp "$D/pools.json" "$C/pools_json/seed-1.json"
cp "$D/network.json" "$C/network_json/seed-1.json"
cp "$IMAGES/default/manifest.json" "$C/image_manifest/seed-1.json"
# Device state: its first 4 KiB (tine only sizes and checksums it).
web=$(dirname "$(grep -l '"name": "web"' "$D"/instances/*/instance.json)")
head -c 4096 "$web/vmstate" >"$C/state_digest/seed-1.bin"
# Memory: 64 KiB of web's real guest RAM (the memory_zst target expects that
# size, the first block with data), compressed with zstd level 3 like
# `--compress zstd:3`; and 64 KiB of zeros.
mem=$web/memory
for skip in $(seq 16 4096); do
    dd if="$mem" bs=64K skip="$skip" count=1 status=none | zstd -3 -q -c >"$C/memory_zst/seed-1.zst"
    [ "$(stat -c %s "$C/memory_zst/seed-1.zst")" -gt 4096 ] && break
done
head -c 65536 /dev/zero | zstd -3 -q -c >"$C/memory_zst/seed-2.zst"
echo "seeds written under $C"
