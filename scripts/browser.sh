#!/usr/bin/env bash
# Installs the browser the browser tests drive (test/browser): Debian's
# chromium package, plus fonts so pages and screenshots render text. Quiet and
# quick when it is already there; needs root and apt-get otherwise.
#
#   bash scripts/browser.sh         install when missing, print nothing when present
#   CHROMIUM_PATH=/path/to/chrome   use that browser instead (nothing is installed)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

chromium="${CHROMIUM_PATH:-/usr/bin/chromium}"
works() { [[ -x "$chromium" ]] && "$chromium" --version >/dev/null 2>&1; }

works && exit 0
if [[ -n "${CHROMIUM_PATH:-}" ]]; then
  echo "browser: CHROMIUM_PATH=$CHROMIUM_PATH does not run" >&2
  exit 1
fi
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
  echo "browser: chromium is missing and cannot be installed here (needs root and apt-get): apt-get install chromium" >&2
  exit 1
fi

log="$(mktemp -t harmony-browser-apt.XXXXXX)"
echo "browser: installing chromium (apt-get, log in $log)" >&2
install() { apt-get install -y -qq chromium fonts-liberation fonts-dejavu-core >>"$log" 2>&1; }
if ! install; then
  # A fresh machine may have stale or no package lists.
  { apt-get update -qq >>"$log" 2>&1 && install; } || {
    tail -n 30 "$log" >&2
    echo "browser: apt-get install chromium failed" >&2
    exit 1
  }
fi
works || { echo "browser: chromium was installed but $chromium does not run" >&2; exit 1; }
echo "browser: $("$chromium" --version 2>/dev/null)" >&2
