#!/usr/bin/env bash
# The runtime benchmark, in one command: `bash bench/run.sh`.
#
# Installs what it needs into bench/.tools/ (wasmtime-cli 48.0.8 via cargo,
# componentize-py via pip into a venv; wrk via apt-get if missing), builds
# shoal (release) and the Python wasi:http component, then runs
# bench/runtime_bench.py, which writes bench/results/runtime.md and prints it.
#
# Knobs (environment): BENCH_DURATION (10s), BENCH_WARMUP (2s),
# BENCH_CONNECTIONS (1,16,64), BENCH_COLD_REPEATS (5). A quick smoke run:
#   BENCH_DURATION=2s BENCH_COLD_REPEATS=2 bash bench/run.sh
# BENCH_SHOAL_REV (unset): build shoal from that git commit (e.g. HEAD)
# instead of the working tree, so that edits in progress elsewhere in the
# tree cannot break or leak into the measured binary. BENCH_BASE (unset):
# run it all with shoal at that commit first (runtime-base.md).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WASMTIME_VERSION=48.0.8

# --- wasmtime-cli (the baseline), pinned to the version shoal embeds -------
WASMTIME="$TOOLS/bin/wasmtime"
if [[ -x "$WASMTIME" ]] && "$WASMTIME" --version | grep -q " $WASMTIME_VERSION\b"; then
  log "wasmtime $WASMTIME_VERSION present"
else
  log "installing wasmtime-cli $WASMTIME_VERSION into $TOOLS (slow: compiles wasmtime)"
  # Without CARGO_TARGET_DIR cargo install builds in a temporary directory
  # of its own, leaving the workspace's target/ alone.
  env -u CARGO_TARGET_DIR \
    cargo install wasmtime-cli --version "$WASMTIME_VERSION" --locked --root "$TOOLS"
fi

# --- wrk ------------------------------------------------------------------
need_packages wrk
WRK="$(command -v wrk)"

# --- componentize-py in a venv ---------------------------------------------
VENV="$TOOLS/venv"
if [[ ! -x "$VENV/bin/componentize-py" ]]; then
  log "installing componentize-py into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q componentize-py
fi

# --- shoal -------------------------------------------------------------------
# The working tree by default; BENCH_SHOAL_REV builds that commit instead,
# and BENCH_BASE=REV runs the whole benchmark with shoal at REV first
# (bench/results/runtime-base.md): both through lib.sh's build_shoal_at,
# which leaves the work tree, the index and Cargo.lock alone.
SHOAL_GIT_DESC=""
if [[ -n "${BENCH_SHOAL_REV:-}" ]]; then
  SHOAL_GIT_DESC="$(git -C "$REPO" rev-parse --short "${BENCH_SHOAL_REV}^{commit}") (committed tree, BENCH_SHOAL_REV=$BENCH_SHOAL_REV)"
fi

# --- the Python wasi:http component -----------------------------------------
# componentize-py needs the WIT of the world it targets: take wasi:http 0.2
# from the wasmtime-wasi-http crate shoal builds against (in cargo's registry
# after the build above), never from a copy in the repo.
PY_WASM="$TOOLS/python-app.wasm"
WIT_DIR=""
for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/wasmtime-wasi-http-"$WASMTIME_VERSION"/wit; do
  [[ -d "$d" ]] && WIT_DIR="$d"
done
if [[ -z "$WIT_DIR" ]]; then
  (cd "$REPO" && cargo fetch --quiet)
  for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/wasmtime-wasi-http-"$WASMTIME_VERSION"/wit; do
    [[ -d "$d" ]] && WIT_DIR="$d"
  done
fi
[[ -n "$WIT_DIR" ]] || { log "wasmtime-wasi-http $WASMTIME_VERSION WIT not found"; exit 1; }
# The world name carries the wasi:http version that crate ships (0.2.x).
PROXY_WORLD="$(grep -ohE 'wasi:http/proxy@0\.2\.[0-9]+' "$WIT_DIR/world.wit" | head -n1)"
[[ -n "$PROXY_WORLD" ]] || PROXY_WORLD="wasi:http/proxy@0.2.0"
if [[ ! -f "$PY_WASM" || "$BENCH_DIR/python-app/app.py" -nt "$PY_WASM" ]]; then
  log "building $PY_WASM ($PROXY_WORLD, WIT from $WIT_DIR)"
  (cd "$BENCH_DIR/python-app" &&
    PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/componentize-py" -d "$WIT_DIR" -w "$PROXY_WORLD" \
      componentize app -o "$PY_WASM.tmp")
  mv "$PY_WASM.tmp" "$PY_WASM"
  rm -rf "$BENCH_DIR/python-app/__pycache__"
fi

# --- the C component ----------------------------------------------------------
if [[ ! -f "$C_WASM" ]]; then
  log "WARNING: $C_WASM is missing (build it with examples/wasm-apps/build.sh); only the Python component is measured"
fi

# --- run ---------------------------------------------------------------------
bench_run() {
  SHOAL_BIN="$1" WASMTIME_BIN="$WASMTIME" WRK_BIN="$WRK" \
    C_COMPONENT="$C_WASM" PY_COMPONENT="$PY_WASM" SHOAL_GIT_DESC="${2:-$SHOAL_GIT_DESC}" \
    BENCH_COMMAND="bash bench/run.sh" \
    python3 "$BENCH_DIR/runtime_bench.py"
}
if [[ -n "${BENCH_SHOAL_REV:-}" ]]; then
  build_shoal_at shoal "$BENCH_SHOAL_REV"
  log "running the benchmark"
  bench_run "$SHOAL" ""
else
  bench_with_base shoal runtime
fi
