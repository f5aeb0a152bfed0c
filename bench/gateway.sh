#!/usr/bin/env bash
# The gateway benchmark, in one command: `bash bench/gateway.sh`.
#
# Installs nginx and wrk with apt-get if they are missing, builds shoal
# (release), then runs bench/gateway_bench.py: a control plane, one node and
# the gateway on 127.0.0.1, the C demo component deployed with one replica,
# nginx as a reverse proxy to the same node, and wrk against the node
# directly, through nginx and through the gateway. It writes
# bench/results/gateway.md and prints it.
#
# Knobs (environment): BENCH_DURATION (10s), BENCH_WARMUP (2s),
# BENCH_CONNECTIONS (1,16,64), BENCH_THREADS (2), BENCH_ROUNDS (3),
# BENCH_ISOLATION (reuse,per-request; the first is the main case),
# BENCH_NGINX_WORKERS (auto), BENCH_BASE (a git revision to compare
# against, below). A quick smoke run:
#   BENCH_DURATION=2s BENCH_WARMUP=1s BENCH_ISOLATION=reuse bash bench/gateway.sh
# CARGO_TARGET_DIR picks the build directory (default: the repo's target/).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# --- nginx and wrk from Debian's packages ------------------------------------
need_packages wrk nginx
WRK="$(command -v wrk)"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

# --- shoal and the run -------------------------------------------------------
# BENCH_BASE=REV first runs the same benchmark with shoal built from git
# revision REV (report: bench/results/gateway-base.md), for a before/after
# comparison in one session.
need_c_component
bench_run() {
  env SHOAL_BIN="$1" WRK_BIN="$WRK" NGINX_BIN="$NGINX" COMPONENT="$C_WASM" \
    BENCH_COMMAND="bash bench/gateway.sh${2:+ ($2)}" \
    python3 "$BENCH_DIR/gateway_bench.py"
}
bench_with_base shoal-gateway-bench gateway
