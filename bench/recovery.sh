#!/usr/bin/env bash
# The recovery benchmark, in one command: `bash bench/recovery.sh`.
#
# Builds shoal (release) and runs bench/recovery_bench.py, which starts a
# control plane and three nodes on 127.0.0.1, kills one node per cycle and
# times how long its instances take to run elsewhere. It writes
# bench/results/recovery.md and prints it.
#
# Knobs (environment): RECOVERY_CYCLES (10), RECOVERY_REPLICAS (30),
# RECOVERY_NODES (3), RECOVERY_TIMEOUT (60 s), RECOVERY_POLL_MS (20),
# RECOVERY_SEED (1);
# CARGO_TARGET_DIR picks the build directory (default: the repo's target/).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
mkdir -p "$BENCH_DIR/results"

log() { printf '[recovery.sh] %s\n' "$*" >&2; }

log "building shoal (release)"
(cd "$REPO" && cargo build --release)

C_WASM="$REPO/examples/wasm-apps/http-component.wasm"
[[ -f "$C_WASM" ]] || { log "$C_WASM is missing (build it with examples/wasm-apps/build.sh)"; exit 1; }

log "running the benchmark"
SHOAL_BIN="$CARGO_TARGET_DIR/release/shoal" COMPONENT="$C_WASM" \
  BENCH_COMMAND="bash bench/recovery.sh" \
  python3 "$BENCH_DIR/recovery_bench.py"
