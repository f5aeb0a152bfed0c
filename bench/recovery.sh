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

need_c_component
# BENCH_BASE=REV first runs it with shoal at git revision REV
# (bench/results/recovery-base.md), for before and after in one session.
bench_run() {
  SHOAL_BIN="$1" COMPONENT="$C_WASM" \
    BENCH_COMMAND="bash bench/recovery.sh${2:+ ($2)}" \
    python3 "$BENCH_DIR/recovery_bench.py"
}
bench_with_base shoal-recovery-bench recovery
