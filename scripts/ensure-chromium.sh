#!/usr/bin/env bash
# The browser test drives Debian's chromium. Install it when missing and we can (root + apt-get);
# otherwise say why: the browser test then skips with that reason.
if [ -x /usr/bin/chromium ] || [ -n "${LABKIT_SKIP_BROWSER:-}" ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's chromium for the browser test (once)..."
  mkdir -p build
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >build/chromium-install.log 2>&1 \
    && exit 0
  echo "could not install chromium (see build/chromium-install.log); the browser test will be skipped."
else
  echo "no /usr/bin/chromium and no root apt-get here; the browser test will be skipped."
fi
exit 0
