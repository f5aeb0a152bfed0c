#!/usr/bin/env bash
# The placement benchmark, in one command: `bash bench/placement.sh`.
#
# Runs scheduler/examples/placement_bench.rs in release mode (the reconcile
# decision on 1,000 simulated nodes and 100,000 instances, in one process)
# and writes its table to bench/results/placement.md.
#
# Knobs (environment): PLACEMENT_BENCH_RUNS (5, repeats per measurement),
# PLACEMENT_BENCH_NODES (1000), PLACEMENT_BENCH_LOST (1, nodes lost at once),
# BENCH_BASE (a git revision: runs the same example at that revision first,
# bench/results/placement-base.md, for before and after in one session).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

placement() {
  local src="$1" report="$2"
  log "running the placement example in $src"
  (cd "$src" && nice -n 10 cargo run --release --quiet -p shoal-scheduler --example placement_bench) \
    >"$BENCH_DIR/results/$report.md"
  cat "$BENCH_DIR/results/$report.md"
}

if [[ -n "${BENCH_BASE:-}" ]]; then
  # Unpacks the revision into $TOOLS/src-base (and builds shoal there, which
  # also builds the example's dependencies in $TOOLS/target-base).
  build_shoal_at shoal-placement-base "$BENCH_BASE"
  CARGO_TARGET_DIR="$TOOLS/target-base" placement "$TOOLS/src-base" placement-base
fi
placement "$REPO" placement
