#!/usr/bin/env bash
# Run every fuzz target (fuzz/fuzz_targets) for a fixed budget: FUZZ_RUNS
# inputs from a fixed FUZZ_SEED, starting from the checked-in seeds in
# fuzz/corpus/<target>/ (real files tine wrote; see scripts/fuzz-seeds.sh).
# Any panic or failed assertion fails the script; the input that caused it is
# saved under fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh                                   # CI budget
#   FUZZ_RELEASE=1 FUZZ_RUNS=5000000 scripts/fuzz.sh  # a longer hunt
#   scripts/fuzz.sh agent_stream                      # one target
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${FUZZ_RUNS:-50000}
SEED=${FUZZ_SEED:-1}

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes nightly-only flags (-Zsanitizer, -Cpasses=sancov); only
# the stable toolchain is installed, and RUSTC_BOOTSTRAP lets it accept them.
export RUSTC_BOOTSTRAP=1
# No sanitizer: the targets are safe Rust, whose bugs are panics, and the C
# in zstd-sys would not be instrumented anyway; this halves build and run time.
FLAGS=(--sanitizer none)
# Unoptimized by default: half the build time, and a short budget runs fast
# enough. Overflow checks and debug assertions are on either way.
[ -n "${FUZZ_RELEASE:-}" ] || FLAGS+=(--dev)

# A separate target dir: different flags from the workspace's builds.
unset CARGO_TARGET_DIR
cargo fuzz build "${FLAGS[@]}"

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
    seeds=fuzz/corpus/$t
    if ! compgen -G "$seeds/*" >/dev/null; then
        echo "fuzz: no seeds in $seeds" >&2
        exit 1
    fi
    mkdir -p "$work/$t"
    start=$SECONDS
    # New inputs go to the scratch dir; the checked-in seeds stay as they are.
    if ! cargo fuzz run "${FLAGS[@]}" "$t" "$work/$t" "$seeds" -- \
        -runs="$RUNS" -seed="$SEED" >"$work/$t.log" 2>&1; then
        cat "$work/$t.log" >&2
        echo "fuzz: $t FAILED (input saved under fuzz/artifacts/$t/)" >&2
        exit 1
    fi
    echo "fuzz: $t ok ($RUNS runs, seed $SEED, $((SECONDS - start)) s)"
done
