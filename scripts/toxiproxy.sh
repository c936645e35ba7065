#!/usr/bin/env bash
# Toxiproxy for the fault-injection suite (`npm run chaos`): installs the
# server reproducibly (Go toolchain, pinned version, built once into the
# cache directory and reused) and prints its path.
#
#   bash scripts/toxiproxy.sh path     install if missing; print the binary's path
#
#   HARMONY_CACHE_DIR=~/.cache/harmony   where the built binary is kept across runs
#   GOMODCACHE / GOPROXY                 Go's own module cache and proxy (downloads are cached there)
#
# The suite starts and stops its own server (on a free port); this script
# never touches the shared services.
set -euo pipefail

TOXIPROXY_VERSION="v2.5.0"
USER_HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
CACHE_DIR="$(realpath -m "${HARMONY_CACHE_DIR:-$USER_HOME/.cache/harmony}")"
BIN_DIR="$CACHE_DIR/toxiproxy-$TOXIPROXY_VERSION"
BINARY="$BIN_DIR/toxiproxy-server"

die() {
  printf 'toxiproxy: error: %s\n' "$*" >&2
  exit 1
}

install() {
  [ -x "$BINARY" ] && return 0
  command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ] || die "the Go toolchain is needed to build toxiproxy (https://go.dev/dl/)"
  local go_bin
  go_bin="$(command -v go || echo /usr/local/go/bin/go)"
  mkdir -p "$BIN_DIR"
  printf 'toxiproxy: building %s into %s\n' "$TOXIPROXY_VERSION" "$BIN_DIR" >&2
  GOBIN="$BIN_DIR" "$go_bin" install "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION" >&2
  mv "$BIN_DIR/server" "$BINARY"
}

case "${1:-path}" in
  path)
    install
    printf '%s\n' "$BINARY"
    ;;
  *) die "usage: $0 path" ;;
esac
