#!/usr/bin/env bash
# Builds every example app from source and copies each result next to this
# script as <name>.wasm. Safe to run again: the toolchain is installed once
# under .toolchain/ (git-ignored) and reused.
#
# Toolchain (all from the registries this project may use):
#   - zig, as the C compiler for wasm32-wasi (the `ziglang` package on PyPI)
#   - wasm-tools and wit-bindgen-cli (crates.io, `cargo install --root`)
#   - the WASI preview 1 -> preview 2 adapters, written out by tools/adapter
#     from the `wasi-preview1-component-adapter-provider` crate (crates.io)
#   - the wasi:http WIT, read from the wasmtime-wasi-http crate (crates.io)
#     that Shoal runs on, found through tools/wit-deps; never copied here
#
# Usage: ./build.sh        (needs python3, cargo and network to the registries)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
tc="$here/.toolchain"
out="$tc/out"
export CARGO_TARGET_DIR="$tc/target"

ZIG_VERSION=0.17.1
WASM_TOOLS_VERSION=1.263.0
WIT_BINDGEN_VERSION=0.63.0
WASI_HTTP_WORLD="wasi:http/proxy@0.2.12"

mkdir -p "$tc" "$out"
log() { printf '== %s\n' "$*"; }

# --- toolchain -------------------------------------------------------------

if ! "$tc/venv/bin/python" -m ziglang version 2>/dev/null | grep -qx "$ZIG_VERSION"; then
  log "installing zig $ZIG_VERSION (PyPI ziglang) into .toolchain/venv"
  python3 -m venv "$tc/venv"
  "$tc/venv/bin/pip" install --quiet "ziglang==$ZIG_VERSION"
fi
zigcc() { "$tc/venv/bin/python" -m ziglang cc "$@"; }

wasm_tools="$tc/bin/wasm-tools"
wit_bindgen="$tc/bin/wit-bindgen"
if ! "$wasm_tools" --version 2>/dev/null | grep -q "^wasm-tools $WASM_TOOLS_VERSION\b" ||
   ! "$wit_bindgen" --version 2>/dev/null | grep -q "^wit-bindgen-cli $WIT_BINDGEN_VERSION\b"; then
  log "installing wasm-tools $WASM_TOOLS_VERSION and wit-bindgen-cli $WIT_BINDGEN_VERSION into .toolchain"
  cargo install --locked --root "$tc" \
    "wasm-tools@$WASM_TOOLS_VERSION" "wit-bindgen-cli@$WIT_BINDGEN_VERSION"
fi

adapters="$tc/adapters"
if [ ! -s "$adapters/command.wasm" ] || [ ! -s "$adapters/reactor.wasm" ]; then
  log "writing the WASI preview 1 adapters (tools/adapter)"
  cargo run --quiet --release --manifest-path "$here/tools/adapter/Cargo.toml" -- "$adapters"
fi

# The WIT packages (wasi:http, wasi:cli, wasi:io, ...) of the wasmtime-wasi-http
# crate Shoal is built with, so the component matches the host exactly.
log "locating the wasi:http WIT (tools/wit-deps)"
host_triple="$(rustc -vV | sed -n 's/^host: //p')"
cargo fetch --quiet --manifest-path "$here/tools/wit-deps/Cargo.toml" --target "$host_triple"
wit_dir="$(cargo metadata --format-version 1 --manifest-path "$here/tools/wit-deps/Cargo.toml" |
  python3 -c '
import json, os, sys
meta = json.load(sys.stdin)
for p in meta["packages"]:
    if p["name"] == "wasmtime-wasi-http":
        print(os.path.join(os.path.dirname(p["manifest_path"]), "wit"))
        break
')"
if [ ! -d "$wit_dir/deps" ]; then
  echo "build.sh: no WIT found in the wasmtime-wasi-http crate (looked in '$wit_dir')" >&2
  exit 1
fi

# --- apps ------------------------------------------------------------------

# C flags for every module: small code, and a 128 KiB stack instead of zig's
# 16 MiB default, so an app starts with a few pages of linear memory and the
# host's memory limit is only reached when an app really allocates.
CFLAGS=(--target=wasm32-wasi -Os -Wall -Werror -Wl,-z,stack-size=131072)

log "hello (hand-written WAT)"
"$wasm_tools" parse "$here/hello/hello.wat" -o "$out/hello.wasm"
log "work (hand-written WAT)"
"$wasm_tools" parse "$here/work/work.wat" -o "$out/work.wasm"

for app in echo probe crash spin memhog worker; do
  log "$app (C, WASI preview 1 command module)"
  zigcc "${CFLAGS[@]}" -o "$out/$app.raw.wasm" "$here/$app/$app.c"
  "$wasm_tools" strip --all "$out/$app.raw.wasm" -o "$out/$app.wasm"
done

log "worker-component (the worker as a wasi:cli/run component)"
"$wasm_tools" component new "$out/worker.wasm" \
  --adapt "wasi_snapshot_preview1=$adapters/command.wasm" -o "$out/worker-component.wasm"

log "http-component (C, wit-bindgen bindings for $WASI_HTTP_WORLD)"
gen="$tc/gen/http-component"
rm -rf "$gen"
"$wit_bindgen" c "$wit_dir" --world "$WASI_HTTP_WORLD" --no-object-file --out-dir "$gen" >/dev/null
# The component's type information is added below by `wasm-tools component
# embed` rather than by wit-bindgen's prebuilt object file, but proxy.c still
# references that object's marker symbol: define it empty.
echo 'void __component_type_object_force_link_proxy(void) {}' > "$gen/no_type_object.c"
zigcc "${CFLAGS[@]}" -mexec-model=reactor -I "$gen" -o "$out/http-component.raw.wasm" \
  "$here/http-component/main.c" "$gen/proxy.c" "$gen/no_type_object.c"
"$wasm_tools" strip --all "$out/http-component.raw.wasm" -o "$out/http-component.core.wasm"
"$wasm_tools" component embed "$wit_dir" --world "$WASI_HTTP_WORLD" \
  "$out/http-component.core.wasm" -o "$out/http-component.embedded.wasm"
"$wasm_tools" component new "$out/http-component.embedded.wasm" \
  --adapt "wasi_snapshot_preview1=$adapters/reactor.wasm" -o "$out/http-component.wasm"

# --- check and publish -----------------------------------------------------

core_modules=(hello work echo probe crash spin memhog worker)
components=(worker-component http-component)

for app in "${core_modules[@]}"; do
  "$wasm_tools" validate "$out/$app.wasm"
  if "$wasm_tools" print "$out/$app.wasm" | grep '(import ' | grep -qv '(import "wasi_snapshot_preview1" '; then
    echo "build.sh: $app.wasm imports something other than wasi_snapshot_preview1" >&2
    exit 1
  fi
done
for app in "${components[@]}"; do
  "$wasm_tools" validate --features component-model "$out/$app.wasm"
done
"$wasm_tools" component wit "$out/worker-component.wasm" | grep -q 'export wasi:cli/run@' ||
  { echo "build.sh: worker-component.wasm does not export wasi:cli/run" >&2; exit 1; }
"$wasm_tools" component wit "$out/http-component.wasm" | grep -q 'export wasi:http/incoming-handler@' ||
  { echo "build.sh: http-component.wasm does not export wasi:http/incoming-handler" >&2; exit 1; }

for app in "${core_modules[@]}" "${components[@]}"; do
  size=$(stat -c %s "$out/$app.wasm")
  if [ "$size" -ge 1048576 ]; then
    echo "build.sh: $app.wasm is $size bytes, over the 1 MiB budget" >&2
    exit 1
  fi
  cp "$out/$app.wasm" "$here/$app.wasm"
  printf '%-22s %8d bytes\n' "$app.wasm" "$size"
done
