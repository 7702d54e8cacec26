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
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODULE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/prometheus"
VERSION="$(awk '$1 == "require" && $2 == "github.com/prometheus/prometheus" {print $3}' "$MODULE_DIR/go.mod")"
# Hashed from inside the folder, so the key is the same wherever the repository is checked out.
KEY="$VERSION-$(cd "$MODULE_DIR" && sha256sum go.mod go.sum | sha256sum | cut -c1-8)"
BIN="$CACHE_ROOT/prometheus-$KEY/bin/prometheus"
LOG="$CACHE_ROOT/build-prometheus.log"

# build_prometheus DIR: go build cmd/prometheus into DIR.
build_prometheus() {
  log "compiling prometheus $VERSION from the module proxy (cold: several minutes; log $LOG)"
  if ! (cd "$MODULE_DIR" && nice -n 10 go build -mod=readonly -trimpath -ldflags "-s -w" \
          -o "$1/prometheus" github.com/prometheus/prometheus/cmd/prometheus) >"$LOG" 2>&1; then
    tail -20 "$LOG" >&2
    die "build failed"
  fi
}

build_binary_once "$BIN" build_prometheus "$@"
