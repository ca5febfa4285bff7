#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests (tests/e2e/test_browser_chat.py) when it is absent.
# Playwright (playwright-core) drives it at /usr/bin/chromium; nothing is downloaded by Playwright itself.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
run_as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    run_as_root=(sudo -n)
  else
    echo "note: the browser tests need Debian's chromium at /usr/bin/chromium: run 'apt-get install -y chromium' as root" >&2
    exit 0  # everything else works without it; tests/e2e/test_browser_chat.py says what is missing
  fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! { "${run_as_root[@]}" apt-get update -qq &&
  "${run_as_root[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; then
  echo "note: could not install chromium; the browser tests need it at /usr/bin/chromium" >&2
fi
