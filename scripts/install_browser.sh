#!/usr/bin/env bash
# Install the headless browser the browser test (tests/test_browser.py) drives: Debian's Chromium.
# Idempotent: does nothing when /usr/bin/chromium is already there. Needs root (or sudo) and the
# Debian package mirror; nothing else is downloaded. Never run `playwright install` instead: the
# test drives this Chromium through Playwright's `executable_path`.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    echo "install_browser: $(/usr/bin/chromium --version 2>/dev/null || echo chromium) already installed"
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium fonts-dejavu-core
echo "install_browser: installed $(/usr/bin/chromium --version)"
