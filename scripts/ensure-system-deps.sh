#!/usr/bin/env bash
# Java 17+ runs the local Kafka broker; Maven fetches its jars once. Both are
# needed only when tripwire starts its own broker (no KAFKA_BOOTSTRAP_SERVERS).
set -euo pipefail
[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ] && exit 0
missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
[ ${#missing[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "Installing ${missing[*]} (needed for the local Kafka broker)..." >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  exit 0
fi
echo "error: tripwire's local Kafka broker needs ${missing[*]}." >&2
echo "Install them, or set KAFKA_BOOTSTRAP_SERVERS to an existing Kafka cluster." >&2
exit 1
