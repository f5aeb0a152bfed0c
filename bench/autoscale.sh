#!/usr/bin/env bash
# The autoscaling benchmark, in one command: `bash bench/autoscale.sh`.
#
# Builds shoal (release) and runs bench/autoscale_bench.py: a control plane,
# two nodes and the gateway on 127.0.0.1, the C demo component deployed as an
# app that scales to zero and as one that idles at one instance. It times
# scale from zero through the gateway over repeated cycles, and the time
# from a step in load to 10 ready instances. It writes
# bench/results/autoscale.md and prints it. wrk is installed with apt-get
# if missing (used only when the component has no /sleep route).
#
# Knobs (environment): BENCH_CYCLES (25), BENCH_WARMUP_CYCLES (1),
# BENCH_SETTLE_MS (300), BENCH_STEP_REPEATS (10), BENCH_STEP_CLIENTS (15),
# BENCH_SLEEP_MS (200), BENCH_STEP_TIMEOUT (60 s), BENCH_ISOLATION
# (per-request). A quick smoke run:
#   BENCH_CYCLES=5 BENCH_STEP_REPEATS=1 bash bench/autoscale.sh
# CARGO_TARGET_DIR picks the build directory (default: the repo's target/).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_packages wrk
need_c_component
# BENCH_BASE=REV first runs it with shoal at git revision REV
# (bench/results/autoscale-base.md), for before and after in one session.
# The Python script starts every process in its own process group and stops
# them all on exit, on error and on SIGINT/SIGTERM/SIGHUP.
bench_run() {
  env SHOAL_BIN="$1" WRK_BIN="$(command -v wrk)" COMPONENT="$C_WASM" \
    BENCH_COMMAND="bash bench/autoscale.sh${2:+ ($2)}" \
    python3 "$BENCH_DIR/autoscale_bench.py"
}
bench_with_base shoal-autoscale-bench autoscale
