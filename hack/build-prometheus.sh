#!/usr/bin/env bash
# Build Prometheus from its Go module, for the tests' scrapes of the local cluster.
#
# Debian's prometheus package is compiled without Kubernetes service discovery, which a stock pod
# scrape job needs, so the tests use this build instead. No release binary is downloaded: the
# wrapper module hack/prometheus pins github.com/prometheus/prometheus (and a served commit of one
# dependency the proxy lacks) and `go build` compiles cmd/prometheus from the module proxy.
#
# Output: ${CAIRN_CACHE:-~/.cache/cairn}/prometheus-<version>/bin/prometheus, kept across runs
# (a warm machine returns at once). Full go output: build-prometheus.log beside it.
#
# Usage: hack/build-prometheus.sh               build if missing; prints the binary's path
#        hack/build-prometheus.sh --print-bin   print the path without building
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
MODULE_DIR="$HERE/prometheus"
VERSION="$(awk '$1 == "require" && $2 == "github.com/prometheus/prometheus" {print $3}' "$MODULE_DIR/go.mod")"
KEY="$VERSION-$(sha256sum "$MODULE_DIR/go.mod" "$MODULE_DIR/go.sum" | sha256sum | cut -c1-8)"
CACHE_ROOT="${CAIRN_CACHE:-$HOME/.cache/cairn}"
BIN="$CACHE_ROOT/prometheus-$KEY/bin/prometheus"
LOG="$CACHE_ROOT/build-prometheus.log"

log() { printf '[build-prometheus %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

case "${1:-}" in
  --print-bin) echo "$BIN"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--print-bin]" >&2; exit 2 ;;
esac

if [[ -x "$BIN" ]]; then
  log "present: $BIN"
  echo "$BIN"
  exit 0
fi
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.build-prometheus.lock"
flock 9
if [[ -x "$BIN" ]]; then
  echo "$BIN"
  exit 0
fi

log "compiling prometheus $VERSION from the module proxy (cold: several minutes; log $LOG)"
t0=$SECONDS
tmp="$(mktemp -d "$CACHE_ROOT/.build-prometheus-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$MODULE_DIR" && nice -n 10 go build -mod=readonly -trimpath -ldflags "-s -w" \
        -o "$tmp/prometheus" github.com/prometheus/prometheus/cmd/prometheus) >"$LOG" 2>&1; then
  tail -20 "$LOG" >&2
  log "build failed"
  exit 1
fi
mkdir -p "$(dirname "$BIN")"
mv "$tmp/prometheus" "$BIN"
log "built in $((SECONDS - t0))s: $BIN"
echo "$BIN"
