# Sourced by scripts/install-*.sh: finds a server binary, installing its Debian package when
# none is found, without leaving the package's service running.
#
# install_deb TOOL BINARY SERVICE PACKAGE HINT [OPTIONAL_PACKAGE]
#   Prints the path of BINARY (on PATH, or in /usr/bin). Without one, installs PACKAGE with
#   apt-get (as root, or through `sudo -n`), with service starts forbidden by a policy-rc.d
#   while it installs, stops SERVICE if it started anyway, and prints the path then. TOOL
#   names the script in errors; HINT says how to get the binary by hand. OPTIONAL_PACKAGE is
#   installed too when it can be, and nothing fails if it cannot.

find_binary() {
  if command -v "$1" >/dev/null 2>&1; then
    command -v "$1"
  elif [ -x "/usr/bin/$1" ]; then
    echo "/usr/bin/$1"
  else
    return 1
  fi
}

install_deb() {
  local tool="$1" binary="$2" service="$3" package="$4" hint="$5" optional="${6:-}" path
  if path=$(find_binary "$binary"); then
    echo "$path"
    return 0
  fi

  if ! command -v apt-get >/dev/null 2>&1; then
    echo "$tool: no $binary on PATH and no apt-get to install Debian's $package; $hint" >&2
    return 1
  fi

  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      SUDO=(sudo -n)
    else
      echo "$tool: no $binary, and installing $package needs root (no sudo found)" >&2
      return 1
    fi
  fi

  # The package starts its service when it can. Forbid service starts during the install
  # with a policy-rc.d (only when none is already there), and remove it after.
  policy=/usr/sbin/policy-rc.d
  added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    added_policy=1
  fi
  trap 'if [ "$added_policy" -eq 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi' EXIT

  export DEBIAN_FRONTEND=noninteractive
  {
    "${SUDO[@]}" apt-get update -q || true
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$package"
    if [ -n "$optional" ]; then
      "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$optional" || true
    fi
  } >&2 || {
    echo "$tool: apt-get could not install $package" >&2
    return 1
  }

  # Where a service was started anyway (a policy-rc.d was already there and allowed it),
  # stop it.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    "${SUDO[@]}" systemctl stop "$service" >&2 || true
    "${SUDO[@]}" systemctl disable "$service" >&2 || true
  fi
  if command -v service >/dev/null 2>&1; then
    "${SUDO[@]}" service "$service" stop >/dev/null 2>&1 || true
  fi

  if path=$(find_binary "$binary"); then
    echo "$path"
  else
    echo "$tool: $package installed but no $binary binary was found" >&2
    return 1
  fi
}
