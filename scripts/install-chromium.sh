#!/usr/bin/env bash
# Prints the paths of a Chromium and a ChromeDriver binary (one a line), installing Debian's
# chromium and chromium-driver when they are not found. The dashboard's browser tests (tests/ui.rs)
# and .ci/run call this; it fails, rather than prints nothing, when either cannot be had.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/install-deb.sh"
hint="install Debian's chromium and chromium-driver (or put chromium and chromedriver on PATH)"
chromium=$(install_deb install-chromium chromium chromium chromium "$hint")
chromedriver=$(install_deb install-chromium chromedriver chromedriver chromium-driver "$hint")
echo "$chromium"
echo "$chromedriver"
