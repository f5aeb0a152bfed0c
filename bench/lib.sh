# What the bench/*.sh wrappers share. Source it, after `set -euo pipefail`:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# It sets BENCH_DIR (bench/), REPO (the repository), TOOLS (bench/.tools/,
# git-ignored) and C_WASM (the C demo component), exports CARGO_TARGET_DIR
# (default: the repo's target/), creates bench/results/ and bench/.tools/,
# and defines:
#
#   log MSG...              "[<wrapper>.sh] MSG" on stderr
#   need_packages CMD...    installs with apt-get those of the commands (wrk,
#                           nginx: package and command share the name) that
#                           are neither on PATH nor in /usr/sbin
#   build_shoal NAME [SRC]  builds shoal (release) from SRC (default: the
#                           work tree) into $CARGO_TARGET_DIR, copies the
#                           binary to $TOOLS/NAME and sets SHOAL to that path
#   build_shoal_at NAME REV the same from git revision REV
#   bench_with_base NAME R  runs the wrapper's bench_run with the work tree's
#                           shoal, and first with BENCH_BASE's (report R-base)
#   need_c_component        exits unless $C_WASM exists

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
TOOLS="$BENCH_DIR/.tools"
C_WASM="$REPO/examples/wasm-apps/http-component.wasm"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
mkdir -p "$TOOLS" "$BENCH_DIR/results"

BENCH_SCRIPT="$(basename "${BASH_SOURCE[1]:-$0}")"
log() { printf '[%s] %s\n' "$BENCH_SCRIPT" "$*" >&2; }

need_packages() {
  local need=() cmd
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]] || need+=("$cmd")
  done
  ((${#need[@]})) || return 0
  log "installing ${need[*]} (apt-get)"
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  # Only the binaries are used: the benchmarks run their own servers (nginx
  # in the foreground, with its own configuration under a temporary directory).
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
}

build_shoal() {
  local name="$1" src="${2:-$REPO}"
  log "building shoal (release) in $src into $CARGO_TARGET_DIR"
  (cd "$src" && nice -n 10 cargo build --release)
  # Run a copy: another build into the same target dir must not swap the
  # binary under the benchmark.
  SHOAL="$TOOLS/$name"
  cp "$CARGO_TARGET_DIR/release/shoal" "$SHOAL.tmp"
  mv "$SHOAL.tmp" "$SHOAL"
}

# build_shoal_at NAME REV: like build_shoal, from git revision REV of this
# repository, unpacked into $TOOLS/src-base (again only when REV changes),
# for a before/after comparison. It builds into a target dir of its own
# ($TOOLS/target-base; the first build compiles every dependency): cargo
# names the artifacts of path packages the same from any checkout, so
# sharing one with the work tree would mix the revisions.
build_shoal_at() {
  local name="$1" rev dir="$TOOLS/src-base"
  rev="$(git -C "$REPO" rev-parse --verify "$2^{commit}")"
  if [[ "$(cat "$dir/.bench-rev" 2>/dev/null || true)" != "$rev" ]]; then
    rm -rf "$dir" && mkdir -p "$dir"
    git -C "$REPO" archive "$rev" | tar -x -C "$dir"
    echo "$rev" >"$dir/.bench-rev"
  fi
  CARGO_TARGET_DIR="$TOOLS/target-base" build_shoal "$name" "$dir"
}

# bench_with_base NAME REPORT: runs `bench_run BINARY LABEL` (a function
# the wrapper defines) with shoal built from the work tree; with
# BENCH_BASE=REV set, first with shoal built from git revision REV, and
# keeps that run's bench/results/REPORT.md as REPORT-base.md: before and
# after in one session, on the same machine.
bench_with_base() {
  local name="$1" report="$2"
  if [[ -n "${BENCH_BASE:-}" ]]; then
    build_shoal_at "$name-base" "$BENCH_BASE"
    log "running the benchmark with shoal at $BENCH_BASE"
    bench_run "$SHOAL" "base run, shoal at $BENCH_BASE"
    mv "$BENCH_DIR/results/$report.md" "$BENCH_DIR/results/$report-base.md"
  fi
  build_shoal "$name"
  log "running the benchmark"
  bench_run "$SHOAL" ""
}

need_c_component() {
  [[ -f "$C_WASM" ]] || { log "$C_WASM is missing (build it with examples/wasm-apps/build.sh)"; exit 1; }
}
