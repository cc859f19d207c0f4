#!/usr/bin/env bash
# The dashboard's test opens the page in headless Chromium: Debian's package.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "Installing chromium (the dashboard's test opens its page headless)..." >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
  exit 0
fi
echo "error: the dashboard's test needs Chromium (Debian's chromium package)." >&2
exit 1
