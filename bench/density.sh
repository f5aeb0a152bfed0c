#!/usr/bin/env bash
# The density benchmark, in one command: `bash bench/density.sh`.
#
# Builds shoal (release) and runs bench/density_bench.py: for each N of
# BENCH_DENSITY_N (100,1000,10000) a control plane, one node and a gateway
# on 127.0.0.1 with N distinct apps made from a template (hello.wasm, each
# with a body text of its own). It reports the node's resident memory
# (empty and with N idle apps, and per idle app), the time to register all
# of them, p50/p99 of requests to random apps through the gateway,
# `shoal get apps` with N rows, and the control plane's and gateway's
# memory and CPU. Beside it, in the same run, N `wasmtime serve` processes
# (one per app) against Shoal with the same N components, for
# BENCH_DENSITY_PEER_N (100). It writes bench/results/density.md and
# prints it.
#
# wasmtime-cli 48.0.8 (the version shoal embeds) is installed into
# bench/.tools/ with cargo if missing (slow: it compiles wasmtime).
#
# Knobs (environment): BENCH_DENSITY_N, BENCH_DENSITY_PEER_N (empty: no
# wasmtime run), BENCH_DENSITY_BATCH (200 apps a POST),
# BENCH_DENSITY_REQUESTS (1000), BENCH_DENSITY_GAP_MS (2),
# BENCH_DENSITY_IDLE_S (10), BENCH_DENSITY_READY_S (1200). A quick run:
#   BENCH_DENSITY_N=100 BENCH_DENSITY_PEER_N= bash bench/density.sh
# The node holds N instances: the open-file limit is raised to what the
# hard limit allows. CARGO_TARGET_DIR picks the build directory.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_c_component
WASMTIME_VERSION=48.0.8
WASMTIME="$TOOLS/bin/wasmtime"
if [[ -n "${BENCH_DENSITY_PEER_N-100}" ]] &&
  ! "$WASMTIME" --version 2>/dev/null | grep -q "^wasmtime $WASMTIME_VERSION"; then
  log "installing wasmtime-cli $WASMTIME_VERSION into $TOOLS (slow: compiles wasmtime)"
  env -u CARGO_TARGET_DIR nice -n 10 cargo install wasmtime-cli --version "$WASMTIME_VERSION" --locked --root "$TOOLS"
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

build_shoal shoal-density-bench
env SHOAL_BIN="$SHOAL" WASMTIME_BIN="$WASMTIME" \
  BENCH_COMMAND="bash bench/density.sh" \
  python3 "$BENCH_DIR/density_bench.py"
