#!/usr/bin/env bash
# The noisy-neighbour benchmark, in one command: `bash bench/noisy.sh`.
#
# Installs wrk with apt-get if it is missing, builds shoal (release), then
# runs bench/noisy_bench.py: for `shoal node --fair-share on` (the node's
# defaults), `--guest-threads off` and `--fair-share off`, a control plane,
# one node and a gateway on 127.0.0.1, tenant B's light app (hello.wasm, namespace
# b) at a steady rate alone, tenant A's CPU-heavy app (work.wasm, about
# 50 ms a request, namespace a) flooded by wrk alone, then both at once.
# It writes bench/results/noisy.md and prints it.
#
# Knobs (environment): BENCH_DURATION (15s), BENCH_RATE (B's requests a
# second, 50), BENCH_FLOOD (A's wrk connections, 32), BENCH_MODES
# (on,on-nothreads,off), BENCH_PIN (unset: every process on every core;
# `shoal`: Shoal's processes on one core, wrk and B's client on another;
# `node`: the node alone on one core). A quick smoke run:
#   BENCH_DURATION=3s bash bench/noisy.sh
# CARGO_TARGET_DIR picks the build directory (default: the repo's target/).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_packages wrk
WRK="$(command -v wrk)"
build_shoal shoal-noisy-bench
# The report names the command with the knobs it was given.
COMMAND=()
for knob in BENCH_PIN BENCH_DURATION BENCH_RATE BENCH_FLOOD BENCH_HOT BENCH_MODES; do
  if [[ -n "${!knob:-}" ]]; then COMMAND+=("$knob=${!knob}"); fi
done
COMMAND+=(bash bench/noisy.sh)
env SHOAL_BIN="$SHOAL" WRK_BIN="$WRK" \
  QUIET_WASM="$REPO/examples/wasm-apps/hello.wasm" WORK_WASM="$REPO/examples/wasm-apps/work.wasm" \
  BENCH_COMMAND="${COMMAND[*]}" python3 "$BENCH_DIR/noisy_bench.py"
