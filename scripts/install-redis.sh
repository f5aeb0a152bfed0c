#!/usr/bin/env bash
# Prints the path of a redis-server binary, installing Debian's redis-server when none is found.
# Tests that run a real Redis, and `shoal up`, call this; it must not leave a Redis daemon running.
set -euo pipefail

find_redis() {
  if command -v redis-server >/dev/null 2>&1; then
    command -v redis-server
  elif [ -x /usr/bin/redis-server ]; then
    echo /usr/bin/redis-server
  else
    return 1
  fi
}

if path=$(find_redis); then
  echo "$path"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-redis: no redis-server on PATH and no apt-get to install Debian's redis-server; install Redis (or Valkey) by hand" >&2
  exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
  else
    echo "install-redis: no redis-server, and installing it needs root (no sudo found)" >&2
    exit 1
  fi
fi

# The package starts a Redis service on 127.0.0.1:6379 when it can. Forbid service starts
# during the install with a policy-rc.d (only when none is already there), and remove it after.
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
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends redis-server
} >&2 || {
  echo "install-redis: apt-get could not install redis-server" >&2
  exit 1
}

# Where a service was started anyway (a policy-rc.d was already there and allowed it), stop it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
  "${SUDO[@]}" systemctl stop redis-server >&2 || true
  "${SUDO[@]}" systemctl disable redis-server >&2 || true
fi
if command -v service >/dev/null 2>&1; then
  "${SUDO[@]}" service redis-server stop >/dev/null 2>&1 || true
fi

if path=$(find_redis); then
  echo "$path"
else
  echo "install-redis: redis-server installed but no redis-server binary was found" >&2
  exit 1
fi
