#!/usr/bin/env bash
# Prints the path of a redis-server binary, installing Debian's redis-server when none is found.
# Tests that run a real Redis, and `shoal up`, call this; it must not leave a Redis daemon running.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/install-deb.sh"
install_deb install-redis redis-server redis-server redis-server "install Redis (or Valkey) by hand"
