#!/usr/bin/env bash
# The simulated-fleet benchmark, in one command: `bash bench/fleet.sh`.
#
# Builds shoal (release) and runs bench/fleet_bench.py: for each store
# (redb; etcd, one member started here, installed by
# scripts/install-etcd.sh) and each fleet size, one control plane and
# `shoal fleet-sim` (thousands of simulated nodes in one process, running
# no wasm), 100,000 instances placed, the leader's CPU and the heartbeat
# latency measured, then 1% of the nodes silenced and the time until their
# instances run elsewhere. It writes bench/results/fleet.md and prints it.
#
# Knobs (environment): FLEET_STORES (redb,etcd), FLEET_NODES (1000,5000),
# FLEET_INSTANCES (100000), FLEET_REPLICAS (100 an app),
# FLEET_CAPACITY_FACTOR (2), FLEET_SILENCE_PERCENT (1), FLEET_WINDOW (15s),
# FLEET_TIMEOUT (900s), FLEET_HEARTBEAT and FLEET_LEASE (the control
# plane's defaults); a quick run:
#   FLEET_NODES=200 FLEET_INSTANCES=5000 FLEET_WINDOW=5s bash bench/fleet.sh
# CARGO_TARGET_DIR picks the build directory (default: the repo's target/).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ",${FLEET_STORES:-redb,etcd}," == *,etcd,* && -z "${ETCD_BIN:-}" ]]; then
  ETCD_BIN="$(bash "$REPO/scripts/install-etcd.sh" | tail -n 1)"
  export ETCD_BIN
fi
# Every simulated node holds two connections, and the control plane one
# for each: the default limit of open files (often 1024) is far too low.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
build_shoal shoal-fleet-bench
SHOAL_BIN="$SHOAL" BENCH_COMMAND="${BENCH_COMMAND:-bash bench/fleet.sh}" \
  python3 "$BENCH_DIR/fleet_bench.py"
