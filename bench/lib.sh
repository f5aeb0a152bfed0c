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
# repository (unpacked under $TOOLS), for a before/after comparison. It
# builds into a target dir of its own ($TOOLS/target-NAME; the first build
# compiles every dependency): cargo names the artifacts of path packages
# the same from any checkout, so sharing one would mix the revisions.
build_shoal_at() {
  local name="$1" rev="$2" dir="$TOOLS/src-$1"
  rm -rf "$dir" && mkdir -p "$dir"
  git -C "$REPO" archive "$rev" | tar -x -C "$dir"
  CARGO_TARGET_DIR="$TOOLS/target-$name" build_shoal "$name" "$dir"
}

need_c_component() {
  [[ -f "$C_WASM" ]] || { log "$C_WASM is missing (build it with examples/wasm-apps/build.sh)"; exit 1; }
}
