#!/usr/bin/env bash
# The cold-start benchmark, in one command: `bash bench/coldstart.sh`.
#
# Builds the componentize-js example (examples/wasm-apps/build.sh js-app,
# which installs its toolchain from npm the first time) if it is missing,
# builds shoal (release), then runs bench/coldstart_bench.py: scale from
# zero through the gateway onto a node that never ran the app (the control
# plane's signed artifact), onto one that did (compiled code in memory), and
# onto one that compiles for itself; and `shoal apply` to 3 ready replicas
# on 3 fresh nodes, compiled once by the control plane or by every node. It
# writes bench/results/coldstart.md and prints it.
#
# Knobs (environment): BENCH_CYCLES (10), BENCH_LOCAL_CYCLES (3),
# BENCH_SPREAD_REPEATS (3), BENCH_SETTLE_MS (300). A quick smoke run:
#   BENCH_CYCLES=2 BENCH_LOCAL_CYCLES=1 BENCH_SPREAD_REPEATS=1 bash bench/coldstart.sh
# CARGO_TARGET_DIR picks the build directory (default: the repo's target/).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

JS_WASM="$REPO/examples/wasm-apps/js-app.wasm"
[[ -f "$JS_WASM" ]] || "$REPO/examples/wasm-apps/build.sh" js-app
build_shoal shoal-coldstart-bench
env SHOAL_BIN="$SHOAL" COMPONENT="$JS_WASM" \
  BENCH_COMMAND="bash bench/coldstart.sh" python3 "$BENCH_DIR/coldstart_bench.py"
