#!/usr/bin/env bash
# Command 2: the whole test suite (unit + integration with real QEMU guests,
# real loop-mounted filesystems). Run as root after scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test.sh must run as root (loop mounts, QEMU)" >&2; exit 1; }
export TINE_IMAGES_DIR=${TINE_IMAGES_DIR:-/var/lib/tine/images}
[ -f "$TINE_IMAGES_DIR/default/manifest.json" ] || {
    echo "no guest image in $TINE_IMAGES_DIR: run scripts/setup.sh first" >&2; exit 1; }
# Formatting first: cheap, and a diff is a failure like any other.
cargo fmt --all --check
status=0
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast --features tine-cli/failpoints "$@" || status=$?
else
    cargo test --workspace --locked --no-fail-fast --features tine-cli/failpoints "$@" || status=$?
fi
# Every fuzz target for a fixed budget from the checked-in seeds (installs
# cargo-fuzz if missing; works on the stable toolchain). Skipped only when
# the caller narrowed the run to some tests.
if [ $# -eq 0 ]; then
    scripts/fuzz.sh || status=$?
fi
exit $status
