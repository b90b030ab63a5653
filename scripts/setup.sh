#!/usr/bin/env bash
# Command 1: install everything tine needs on Debian/Ubuntu, build tine and
# the default guest, then run the main job end to end (boot a VM, exec in it).
# Idempotent; run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }
die() { echo "setup.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "setup.sh must run as root (sudo $0)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

. /etc/os-release
QEMU_TARGET=()
if [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
    # QEMU 10 from bookworm-backports: file: migration URIs, mapped-ram.
    if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
        log "adding bookworm-backports"
        echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/tine-backports.list
    fi
    QEMU_TARGET=(-t bookworm-backports)
fi

log "installing packages"
apt-get update -qq
apt-get install -y -qq "${QEMU_TARGET[@]}" qemu-system-x86 qemu-utils >/dev/null
apt-get install -y -qq \
    xfsprogs btrfs-progs e2fsprogs util-linux \
    busybox-static cpio lz4 zstd file \
    iproute2 nftables gcc libc6-dev pkg-config >/dev/null
qemu-system-x86_64 --version | head -1
# Forks map the shared memory file read-only and copy-on-write
# (memory-backend-file readonly=on,rom=off): QEMU 8.2 or newer.
backend_props=$(qemu-system-x86_64 -object memory-backend-file,help 2>&1 || true)
grep -q '^  rom=' <<<"$backend_props" ||
    die "QEMU is too old: tine needs QEMU >= 8.2 (memory-backend-file rom=); on Debian bookworm use bookworm-backports"

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install a Rust toolchain (>= 1.80, e.g. via rustup) and re-run" >&2
    exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    log "cargo-nextest not found; scripts/test.sh will use cargo test"
fi

log "building tine"
cargo build --release --locked -p tine-cli
install -m 0755 target/release/tine /usr/local/bin/tine

log "building the default guest"
guest/build.sh /var/lib/tine/images/default

log "main job"
scripts/demo.sh
