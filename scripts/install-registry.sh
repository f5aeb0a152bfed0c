#!/usr/bin/env bash
# Prints the path of a docker-registry binary (the CNCF distribution registry, Debian's
# docker-registry package), installing the package when none is found.
# Tests that push and pull modules through a real registry call this; it must not leave a
# registry daemon running.
set -euo pipefail

find_registry() {
  if command -v docker-registry >/dev/null 2>&1; then
    command -v docker-registry
  elif [ -x /usr/bin/docker-registry ]; then
    echo /usr/bin/docker-registry
  else
    return 1
  fi
}

if path=$(find_registry); then
  echo "$path"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-registry: no docker-registry binary on PATH and no apt-get to install Debian's docker-registry; install the distribution registry 2.8 by hand" >&2
  exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
  else
    echo "install-registry: no docker-registry binary, and installing it needs root (no sudo found)" >&2
    exit 1
  fi
fi

# The package starts a registry service on port 5000 when it can. Forbid service starts during
# the install with a policy-rc.d (only when none is already there), and remove it after.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
  "${SUDO[@]}" chmod 755 "$policy"
  added_policy=1
fi
cleanup() {
  if [ "$added_policy" -eq 1 ]; then
    "${SUDO[@]}" rm -f "$policy"
  fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
{
  "${SUDO[@]}" apt-get update -q || true
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends docker-registry
} >&2 || {
  echo "install-registry: apt-get could not install docker-registry" >&2
  exit 1
}

# Where a service was started anyway (a policy-rc.d was already there and allowed it), stop it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  "${SUDO[@]}" systemctl stop docker-registry >&2 || true
  "${SUDO[@]}" systemctl disable docker-registry >&2 || true
fi
if command -v service >/dev/null 2>&1; then
  "${SUDO[@]}" service docker-registry stop >/dev/null 2>&1 || true
fi

if path=$(find_registry); then
  echo "$path"
else
  echo "install-registry: docker-registry installed but no docker-registry binary was found" >&2
  exit 1
fi
