#!/usr/bin/env bash
# What trust costs, in one command: `bash bench/trust.sh`.
#
# Installs nginx and wrk with apt-get if they are missing, builds shoal
# (release), then runs bench/trust_bench.py: the gateway to a node over
# mutual TLS against plain HTTP, nginx doing the same two hops (TLS to the
# node with a client certificate of the cluster CA), and the API's latency
# with tokens checked against not. It writes bench/results/trust.md and
# prints it.
#
# Knobs (environment): BENCH_DURATION (10s), BENCH_WARMUP (2s),
# BENCH_CONNECTIONS (1,16), BENCH_ROUNDS (3), BENCH_THREADS (2).
# CARGO_TARGET_DIR picks the build directory (default: the repo's target/).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_packages wrk nginx
WRK="$(command -v wrk)"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
need_c_component
build_shoal shoal-trust-bench
env SHOAL_BIN="$SHOAL" WRK_BIN="$WRK" NGINX_BIN="$NGINX" COMPONENT="$C_WASM" \
  BENCH_COMMAND="bash bench/trust.sh" python3 "$BENCH_DIR/trust_bench.py"
