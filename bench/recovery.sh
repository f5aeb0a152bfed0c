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
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build_shoal shoal-recovery-bench
need_c_component

log "running the benchmark"
SHOAL_BIN="$SHOAL" COMPONENT="$C_WASM" \
  BENCH_COMMAND="bash bench/recovery.sh" \
  python3 "$BENCH_DIR/recovery_bench.py"
