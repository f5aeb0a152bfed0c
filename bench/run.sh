#!/usr/bin/env bash
# The runtime benchmark, in one command: `bash bench/run.sh`.
#
# Installs what it needs into bench/.tools/ (wasmtime-cli 48.0.8 via cargo;
# wrk via apt-get if missing), builds shoal (release) and, with
# examples/wasm-apps/build.sh, the JS and Python wasi:http components, then runs
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

# --- shoal -------------------------------------------------------------------
# The working tree by default; BENCH_SHOAL_REV builds that commit instead,
# and BENCH_BASE=REV runs the whole benchmark with shoal at REV first
# (bench/results/runtime-base.md): both through lib.sh's build_shoal_at,
# which leaves the work tree, the index and Cargo.lock alone.
SHOAL_GIT_DESC=""
if [[ -n "${BENCH_SHOAL_REV:-}" ]]; then
  SHOAL_GIT_DESC="$(git -C "$REPO" rev-parse --short "${BENCH_SHOAL_REV}^{commit}") (committed tree, BENCH_SHOAL_REV=$BENCH_SHOAL_REV)"
fi

# --- the JS and Python wasi:http components ----------------------------------
# Built by examples/wasm-apps/build.sh (componentize-js and componentize-py,
# against the wasi:http WIT of the wasmtime-wasi-http crate shoal runs on),
# again only when a source is newer than its output.
APPS_DIR="$REPO/examples/wasm-apps"
JS_WASM="$APPS_DIR/js-app.wasm"
PY_WASM="$APPS_DIR/python-app.wasm"
stale=()
[[ -f "$JS_WASM" && ! "$APPS_DIR/js-app/app.js" -nt "$JS_WASM" ]] || stale+=(js-app)
[[ -f "$PY_WASM" && ! "$APPS_DIR/python-app/app.py" -nt "$PY_WASM" ]] || stale+=(python-app)
if ((${#stale[@]})); then
  log "building ${stale[*]} (examples/wasm-apps/build.sh)"
  "$APPS_DIR/build.sh" "${stale[@]}"
fi

# --- the C component ----------------------------------------------------------
if [[ ! -f "$C_WASM" ]]; then
  log "WARNING: $C_WASM is missing (build it with examples/wasm-apps/build.sh); only the JS and Python components are measured"
fi

# --- run ---------------------------------------------------------------------
bench_run() {
  SHOAL_BIN="$1" WASMTIME_BIN="$WASMTIME" WRK_BIN="$WRK" \
    C_COMPONENT="$C_WASM" JS_COMPONENT="$JS_WASM" PY_COMPONENT="$PY_WASM" SHOAL_GIT_DESC="${2:-$SHOAL_GIT_DESC}" \
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
