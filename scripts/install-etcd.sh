#!/usr/bin/env bash
# Prints the path of an etcd binary, installing Debian's etcd-server when none is found.
# Tests that run a real etcd call this; it must not leave an etcd daemon running.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/install-deb.sh"
# etcdctl (etcd-client) is handy for debugging, not needed by the tests.
install_deb install-etcd etcd etcd etcd-server "install etcd 3.4 by hand" etcd-client
