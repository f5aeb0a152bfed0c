#!/usr/bin/env bash
# Prints the path of an etcd binary, installing Debian's etcd-server when none is found.
# Tests that run a real etcd call this; it must not leave an etcd daemon running.
set -euo pipefail

find_etcd() {
  if command -v etcd >/dev/null 2>&1; then
    command -v etcd
  elif [ -x /usr/bin/etcd ]; then
    echo /usr/bin/etcd
  else
    return 1
  fi
}

if path=$(find_etcd); then
  echo "$path"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-etcd: no etcd binary on PATH and no apt-get to install Debian's etcd-server; install etcd 3.4 by hand" >&2
  exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
  else
    echo "install-etcd: no etcd binary, and installing etcd-server needs root (no sudo found)" >&2
    exit 1
  fi
fi

# The package starts an etcd service on 127.0.0.1:2379 when it can. Forbid service starts
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
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends etcd-server
  # etcdctl is handy for debugging, not needed by the tests.
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends etcd-client || true
} >&2 || {
  echo "install-etcd: apt-get could not install etcd-server" >&2
  exit 1
}

# Where a service was started anyway (a policy-rc.d was already there and allowed it), stop it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  "${SUDO[@]}" systemctl stop etcd >&2 || true
  "${SUDO[@]}" systemctl disable etcd >&2 || true
fi
if command -v service >/dev/null 2>&1; then
  "${SUDO[@]}" service etcd stop >/dev/null 2>&1 || true
fi

if path=$(find_etcd); then
  echo "$path"
else
  echo "install-etcd: etcd-server installed but no etcd binary was found" >&2
  exit 1
fi
