#!/usr/bin/env bash
# Builds the example apps from source and copies each result next to this
# script as <name>.wasm. Safe to run again: the toolchain is installed once
# under .toolchain/ (git-ignored) and reused.
#
# Toolchain (all from the registries this project may use), each installed
# only when an app that needs it is built:
#   - zig, as the C compiler for wasm32-wasi (the `ziglang` package on PyPI)
#   - wasm-tools and wit-bindgen-cli (crates.io, `cargo install --root`)
#   - the WASI preview 1 -> preview 2 adapters, written out by tools/adapter
#     from the `wasi-preview1-component-adapter-provider` crate (crates.io)
#   - the wasi:http WIT, read from the wasmtime-wasi-http crate (crates.io)
#     that Shoal runs on, found through tools/wit-deps; never copied here;
#     likewise the wasi:config and wasi:keyvalue WIT, from the
#     wasmtime-wasi-config and wasmtime-wasi-keyvalue crates
#   - componentize-py (PyPI), for python-app
#   - componentize-js and jco (npm), for js-app; jco also checks the
#     exports of js-app and python-app
#
# Usage: ./build.sh [APP...]   (no APP: all of them)
#   e.g. ./build.sh js-app python-app
# Needs python3 and cargo (and node/npm for js-app, python-app), and network
# to the registries.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
tc="$here/.toolchain"
out="$tc/out"
export CARGO_TARGET_DIR="$tc/target"

ZIG_VERSION=0.17.1
WASM_TOOLS_VERSION=1.263.0
WIT_BINDGEN_VERSION=0.63.0
COMPONENTIZE_PY_VERSION=0.25.1
COMPONENTIZE_JS_VERSION=0.23.0
JCO_VERSION=1.35.0
WASI_HTTP_WORLD="wasi:http/proxy@0.2.12"
# The packages the capability components import besides wasi:http; their
# worlds (<app>/world.wit) name these versions.
WASI_CONFIG="wasi:config@0.2.0-rc.1"
WASI_KEYVALUE="wasi:keyvalue@0.2.0-draft"

log() { printf '== %s\n' "$*"; }

# --- which apps ------------------------------------------------------------

core_modules=(hello work echo probe crash spin memhog worker)
small_components=(worker-component http-component)
# wasi:http/proxy components in C that also import wasi:config/store and
# wasi:keyvalue/{store,atomics,batch}; each has its own world in
# <app>/world.wit and its code in <app>/main.c.
cap_components=(capabilities)
big_components=(js-app python-app)
all_apps=("${core_modules[@]}" "${small_components[@]}" "${cap_components[@]}" "${big_components[@]}")

if (($# == 0)); then
  apps=("${all_apps[@]}")
else
  apps=()
  for a in "$@"; do
    a="${a%.wasm}"
    if [[ " ${all_apps[*]} " != *" $a "* ]]; then
      echo "build.sh: unknown app '$a' (known: ${all_apps[*]})" >&2
      exit 2
    fi
    apps+=("$a")
  done
fi
want() { [[ " ${apps[*]} " == *" $1 "* ]]; }
want_any() { local a; for a in "$@"; do want "$a" && return 0; done; return 1; }

mkdir -p "$tc" "$out"

# --- toolchain -------------------------------------------------------------

# One venv for the PyPI tools (zig, componentize-py), each installed when
# first needed.
venv="$tc/venv"
pip_need() { # pip_need PACKAGE VERSION CHECK-COMMAND...
  local pkg="$1" ver="$2"
  shift 2
  if ! "$@" 2>/dev/null | grep -q "$ver"; then
    log "installing $pkg $ver (PyPI) into .toolchain/venv"
    [[ -x "$venv/bin/pip" ]] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "$pkg==$ver"
  fi
}
zigcc() { "$venv/bin/python" -m ziglang cc "$@"; }
if want_any echo probe crash spin memhog worker worker-component http-component "${cap_components[@]}"; then
  pip_need ziglang "$ZIG_VERSION" "$venv/bin/python" -m ziglang version
fi
if want python-app; then
  pip_need componentize-py "$COMPONENTIZE_PY_VERSION" "$venv/bin/componentize-py" --version
fi

wasm_tools="$tc/bin/wasm-tools"
wit_bindgen="$tc/bin/wit-bindgen"
if want_any "${core_modules[@]}" "${small_components[@]}" "${cap_components[@]}"; then
  if ! "$wasm_tools" --version 2>/dev/null | grep -q "^wasm-tools $WASM_TOOLS_VERSION\b" ||
     ! "$wit_bindgen" --version 2>/dev/null | grep -q "^wit-bindgen-cli $WIT_BINDGEN_VERSION\b"; then
    log "installing wasm-tools $WASM_TOOLS_VERSION and wit-bindgen-cli $WIT_BINDGEN_VERSION into .toolchain"
    cargo install --locked --root "$tc" \
      "wasm-tools@$WASM_TOOLS_VERSION" "wit-bindgen-cli@$WIT_BINDGEN_VERSION"
  fi
fi

adapters="$tc/adapters"
if want_any worker-component http-component "${cap_components[@]}" &&
   { [ ! -s "$adapters/command.wasm" ] || [ ! -s "$adapters/reactor.wasm" ]; }; then
  log "writing the WASI preview 1 adapters (tools/adapter)"
  cargo run --quiet --release --manifest-path "$here/tools/adapter/Cargo.toml" -- "$adapters"
fi

# componentize-js and jco from npm, pinned, in .toolchain/js (their own
# package.json there, so nothing npm writes lands in the repository).
js="$tc/js"
jco="$js/node_modules/.bin/jco"
componentize_js="$js/node_modules/.bin/componentize-js"
if want_any js-app python-app; then
  if [[ "$("$componentize_js" --version 2>/dev/null)" != "$COMPONENTIZE_JS_VERSION" ]] ||
     [[ "$("$jco" --version 2>/dev/null)" != "$JCO_VERSION" ]]; then
    log "installing componentize-js $COMPONENTIZE_JS_VERSION and jco $JCO_VERSION (npm) into .toolchain/js"
    mkdir -p "$js"
    echo '{"private": true}' > "$js/package.json"
    (cd "$js" && npm install --no-audit --no-fund --save-exact --loglevel=error \
      "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION" \
      "@bytecodealliance/jco@$JCO_VERSION")
  fi
fi

# The WIT packages (wasi:http, wasi:cli, wasi:io, ...) of the wasmtime-wasi-http
# crate Shoal is built with, so the component matches the host exactly; and
# the wasi:config and wasi:keyvalue packages of the wasmtime-wasi-config and
# wasmtime-wasi-keyvalue crates.
wit_dir=""
config_wit=""
keyvalue_wit=""
if want_any http-component js-app python-app "${cap_components[@]}"; then
  log "locating the wasi:http, wasi:config and wasi:keyvalue WIT (tools/wit-deps)"
  host_triple="$(rustc -vV | sed -n 's/^host: //p')"
  cargo fetch --quiet --manifest-path "$here/tools/wit-deps/Cargo.toml" --target "$host_triple"
  crate_wit="$(cargo metadata --format-version 1 --manifest-path "$here/tools/wit-deps/Cargo.toml" |
    python3 -c '
import json, os, sys
meta = json.load(sys.stdin)
wit = {p["name"]: os.path.join(os.path.dirname(p["manifest_path"]), "wit") for p in meta["packages"]}
for name in ("wasmtime-wasi-http", "wasmtime-wasi-config", "wasmtime-wasi-keyvalue"):
    print(wit.get(name, ""))
')"
  { read -r wit_dir; read -r config_wit; read -r keyvalue_wit; } <<<"$crate_wit"
  if [ ! -d "$wit_dir/deps" ]; then
    echo "build.sh: no WIT found in the wasmtime-wasi-http crate (looked in '$wit_dir')" >&2
    exit 1
  fi
  if want_any "${cap_components[@]}" &&
     { [ ! -d "$config_wit/deps/config" ] || [ ! -d "$keyvalue_wit/deps/keyvalue" ]; }; then
    echo "build.sh: no wasi:config or wasi:keyvalue WIT found (looked in '$config_wit/deps/config' and '$keyvalue_wit/deps/keyvalue')" >&2
    exit 1
  fi
fi

# --- apps ------------------------------------------------------------------

# C flags for every module: small code, and a 128 KiB stack instead of zig's
# 16 MiB default, so an app starts with a few pages of linear memory and the
# host's memory limit is only reached when an app really allocates.
CFLAGS=(--target=wasm32-wasi -Os -Wall -Werror -Wl,-z,stack-size=131072)

if want hello; then
  log "hello (hand-written WAT)"
  "$wasm_tools" parse "$here/hello/hello.wat" -o "$out/hello.wasm"
fi
if want work; then
  log "work (hand-written WAT)"
  "$wasm_tools" parse "$here/work/work.wat" -o "$out/work.wasm"
fi

for app in echo probe crash spin memhog worker; do
  want "$app" || { [[ $app == worker ]] && want worker-component; } || continue
  log "$app (C, WASI preview 1 command module)"
  zigcc "${CFLAGS[@]}" -o "$out/$app.raw.wasm" "$here/$app/$app.c"
  "$wasm_tools" strip --all "$out/$app.raw.wasm" -o "$out/$app.wasm"
done

if want worker-component; then
  log "worker-component (the worker as a wasi:cli/run component)"
  "$wasm_tools" component new "$out/worker.wasm" \
    --adapt "wasi_snapshot_preview1=$adapters/command.wasm" -o "$out/worker-component.wasm"
fi

if want http-component; then
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
fi

# The capability components: the app's own world (<app>/world.wit) next to
# the crates' packages as deps/ (symbolic links), in .toolchain/gen/<app>/wit;
# otherwise built exactly as http-component.
for app in "${cap_components[@]}"; do
  want "$app" || continue
  log "$app (C, wit-bindgen bindings for shoal:$app/$app: $WASI_HTTP_WORLD, $WASI_CONFIG, $WASI_KEYVALUE)"
  gen="$tc/gen/$app"
  rm -rf "$gen" && mkdir -p "$gen/wit/deps"
  cp "$here/$app/world.wit" "$gen/wit/world.wit"
  for dep in "$wit_dir"/deps/*; do ln -s "$dep" "$gen/wit/deps/"; done
  ln -s "$config_wit/deps/config" "$gen/wit/deps/config"
  ln -s "$keyvalue_wit/deps/keyvalue" "$gen/wit/deps/keyvalue"
  "$wit_bindgen" c "$gen/wit" --world "shoal:$app/$app" --no-object-file --out-dir "$gen" >/dev/null
  echo "void __component_type_object_force_link_${app}(void) {}" > "$gen/no_type_object.c"
  zigcc "${CFLAGS[@]}" -mexec-model=reactor -I "$gen" -o "$out/$app.raw.wasm" \
    "$here/$app/main.c" "$gen/$app.c" "$gen/no_type_object.c"
  "$wasm_tools" strip --all "$out/$app.raw.wasm" -o "$out/$app.core.wasm"
  "$wasm_tools" component embed "$gen/wit" --world "shoal:$app/$app" \
    "$out/$app.core.wasm" -o "$out/$app.embedded.wasm"
  "$wasm_tools" component new "$out/$app.embedded.wasm" \
    --adapt "wasi_snapshot_preview1=$adapters/reactor.wasm" -o "$out/$app.wasm"
done

if want js-app; then
  log "js-app (JavaScript, componentize-js $COMPONENTIZE_JS_VERSION, $WASI_HTTP_WORLD)"
  # componentize-js takes one WIT directory: a world of our own that includes
  # the proxy world, with deps/ pointing at the crate's WIT packages.
  gen="$tc/gen/js-app"
  rm -rf "$gen" && mkdir -p "$gen"
  ln -s "$wit_dir/deps" "$gen/deps"
  printf 'package shoal:js-app;\n\nworld js-app {\n  include %s;\n}\n' "$WASI_HTTP_WORLD" > "$gen/world.wit"
  "$componentize_js" "$here/js-app/app.js" --wit "$gen" --world-name js-app \
    -o "$out/js-app.wasm" >/dev/null
fi

if want python-app; then
  log "python-app (Python, componentize-py $COMPONENTIZE_PY_VERSION, $WASI_HTTP_WORLD)"
  (cd "$here/python-app" &&
    PYTHONDONTWRITEBYTECODE=1 "$venv/bin/componentize-py" -d "$wit_dir" -w "$WASI_HTTP_WORLD" \
      componentize app -o "$out/python-app.wasm" >/dev/null)
  rm -rf "$here/python-app/__pycache__" "$here/python-app/wit_world" "$here/python-app/componentize_py_"*
fi

# --- check and publish -----------------------------------------------------

for app in "${core_modules[@]}"; do
  want "$app" || continue
  "$wasm_tools" validate "$out/$app.wasm"
  if "$wasm_tools" print "$out/$app.wasm" | grep '(import ' | grep -qv '(import "wasi_snapshot_preview1" '; then
    echo "build.sh: $app.wasm imports something other than wasi_snapshot_preview1" >&2
    exit 1
  fi
done
for app in "${small_components[@]}" "${cap_components[@]}"; do
  want "$app" || continue
  "$wasm_tools" validate --features component-model "$out/$app.wasm"
done
for app in "${cap_components[@]}"; do
  want "$app" || continue
  app_wit="$("$wasm_tools" component wit "$out/$app.wasm")"
  for line in "export ${WASI_HTTP_WORLD/proxy/incoming-handler};" \
              "import ${WASI_HTTP_WORLD/proxy/outgoing-handler};" \
              "import ${WASI_CONFIG/@//store@};" \
              "import ${WASI_KEYVALUE/@//store@};" \
              "import ${WASI_KEYVALUE/@//atomics@};" \
              "import ${WASI_KEYVALUE/@//batch@};"; do
    grep -qF "$line" <<<"$app_wit" ||
      { echo "build.sh: $app.wasm lacks '$line'" >&2; exit 1; }
  done
done
if want worker-component; then
  "$wasm_tools" component wit "$out/worker-component.wasm" | grep -q 'export wasi:cli/run@' ||
    { echo "build.sh: worker-component.wasm does not export wasi:cli/run" >&2; exit 1; }
fi
if want http-component; then
  "$wasm_tools" component wit "$out/http-component.wasm" | grep -q 'export wasi:http/incoming-handler@' ||
    { echo "build.sh: http-component.wasm does not export wasi:http/incoming-handler" >&2; exit 1; }
fi
for app in "${big_components[@]}"; do
  want "$app" || continue
  "$jco" wit "$out/$app.wasm" | grep -q "export ${WASI_HTTP_WORLD/proxy/incoming-handler};" ||
    { echo "build.sh: $app.wasm does not export ${WASI_HTTP_WORLD/proxy/incoming-handler}" >&2; exit 1; }
done

for app in "${apps[@]}"; do
  size=$(stat -c %s "$out/$app.wasm")
  # The small apps are committed and must stay small; js-app and python-app
  # carry a language runtime (about 13 and 18 MB) and are git-ignored.
  if [[ " ${big_components[*]} " != *" $app "* ]] && [ "$size" -ge 1048576 ]; then
    echo "build.sh: $app.wasm is $size bytes, over the 1 MiB budget" >&2
    exit 1
  fi
  cp "$out/$app.wasm" "$here/$app.wasm.tmp"
  mv "$here/$app.wasm.tmp" "$here/$app.wasm"
  printf '%-22s %8d bytes\n' "$app.wasm" "$size"
done
