#!/usr/bin/env bash
# Install headless Chromium and its WebDriver for the review page's browser tests
# (tests/faceprep/test_review_browser.py) and bench/review_page.py. Idempotent: does nothing when both
# are already there. Debian/Ubuntu only (apt-get); elsewhere it says so and exits 0, and the browser
# tests skip with the reason. Selenium itself comes from the project's test extra.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if have chromium && have chromedriver; then
    echo "install_browser: $(chromium --version 2>/dev/null | head -n1); $(chromedriver --version | head -n1)"
    exit 0
fi
if ! have apt-get; then
    echo "install_browser: no apt-get here; install chromium and chromedriver yourself (browser tests skip)" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if have sudo; then SUDO="sudo"; else
        echo "install_browser: not root and no sudo; cannot install chromium (browser tests skip)" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
echo "install_browser: $(chromium --version 2>/dev/null | head -n1); $(chromedriver --version | head -n1)"
