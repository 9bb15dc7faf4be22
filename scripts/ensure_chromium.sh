#!/bin/sh
# Debian's headless Chromium for the browser tests (tests/browser/), installed when missing.
# Idempotent and quiet when it is already there; `make install` and `make test` run it. Playwright's own
# browser downloads are never used: the tests drive this system Chromium.
set -eu
CHROMIUM=/usr/bin/chromium
[ -x "$CHROMIUM" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests" >&2
    # Another apt run (a sibling checkout's install) may hold the lock: wait for it instead of failing.
    apt-get -qq -o DPkg::Lock::Timeout=600 update
    DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=600 install -y \
        --no-install-recommends chromium fonts-liberation >/dev/null
else
    echo "no $CHROMIUM and no root apt-get to install it: the browser tests will be skipped (failed in CI)" >&2
fi
