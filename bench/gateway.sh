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
# BENCH_CONNECTIONS (1,16,64), BENCH_THREADS (2),
# BENCH_ISOLATION (reuse,per-request; the first is the main case),
# BENCH_NGINX_WORKERS (auto). A quick smoke run:
#   BENCH_DURATION=2s BENCH_WARMUP=1s BENCH_ISOLATION=reuse bash bench/gateway.sh
# CARGO_TARGET_DIR picks the build directory (default: the repo's target/).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
mkdir -p "$BENCH_DIR/results"

log() { printf '[gateway.sh] %s\n' "$*" >&2; }

# --- nginx and wrk from Debian's packages ------------------------------------
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
if ((${#need[@]})); then
  log "installing ${need[*]} (apt-get)"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  # Only the binary is used: the benchmark runs its own nginx, in the
  # foreground, with its own configuration under a temporary directory.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
WRK="$(command -v wrk)"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

# --- shoal -------------------------------------------------------------------
log "building shoal (release) into $CARGO_TARGET_DIR"
(cd "$REPO" && nice -n 10 cargo build --release)
# Run a copy (in the git-ignored bench/.tools/): another build into the same
# target dir must not swap the binary under the benchmark.
SHOAL="$BENCH_DIR/.tools/shoal-gateway-bench"
mkdir -p "$BENCH_DIR/.tools"
cp "$CARGO_TARGET_DIR/release/shoal" "$SHOAL.tmp"
mv "$SHOAL.tmp" "$SHOAL"

C_WASM="$REPO/examples/wasm-apps/http-component.wasm"
[[ -f "$C_WASM" ]] || { log "$C_WASM is missing (build it with examples/wasm-apps/build.sh)"; exit 1; }

# --- run ---------------------------------------------------------------------
# The Python script starts every process in its own process group and stops
# them all on exit, on error and on SIGINT/SIGTERM/SIGHUP (exec: a signal
# sent to this script's pid reaches it).
log "running the benchmark"
exec env SHOAL_BIN="$SHOAL" WRK_BIN="$WRK" NGINX_BIN="$NGINX" COMPONENT="$C_WASM" \
  BENCH_COMMAND="bash bench/gateway.sh" \
  python3 "$BENCH_DIR/gateway_bench.py"
