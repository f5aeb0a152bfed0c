#!/usr/bin/env bash
# Prints the path of a docker-registry binary (the CNCF distribution registry, Debian's
# docker-registry package), installing the package when none is found.
# Tests that push and pull modules through a real registry call this; it must not leave a
# registry daemon running.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/install-deb.sh"
install_deb install-registry docker-registry docker-registry docker-registry \
  "install the distribution registry 2.8 by hand"
