#!/usr/bin/env bash
# `npm test`: every suite — unit, property, contract (both adapters of each
# port), integration (the real binary, embedded and cluster mode) and browser
# (the web client in chromium). Unless the four service URLs are given, it
# starts the real services on loopback first (scripts/services.sh installs
# what is missing and caches downloads).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${DATABASE_URL:-}${KAFKA_BROKERS:-}${REDIS_URL:-}${DYNAMODB_ENDPOINT:-}" ]; then
  # Under CI the services it started stop with it; a developer's stay up for the next run.
  if [ -n "${CI:-}" ]; then trap 'bash scripts/services.sh down || true' EXIT; fi
  bash scripts/services.sh up
  eval "$(bash scripts/services.sh env)"
fi

# The browser tests (test/browser) drive Debian's chromium against the web
# client the binary serves from dist/web.
bash scripts/browser.sh
node scripts/build-web.mjs
export HARMONY_WEB_BUILT=1

vitest run "$@"
