#!/usr/bin/env bash
# Build Prometheus (or promtool) from its Go module, for the tests' scrapes of the local cluster and
# the alert rules' checks.
#
# Debian's prometheus package is compiled without Kubernetes service discovery, which a stock pod
# scrape job needs, so the tests use this build instead. No release binary is downloaded: the
# wrapper module hack/prometheus pins github.com/prometheus/prometheus (and a served commit of one
# dependency the proxy lacks) and `go build` compiles cmd/prometheus or cmd/promtool from the module
# proxy, so both come from the same module version.
#
# Output: ${CAIRN_CACHE:-~/.cache/cairn}/prometheus-<key>/bin/<tool>, kept across runs (a warm
# machine returns at once). The key hashes go.mod and go.sum, so a requirement added for one tool
# (promtool's) moves both to a new folder; a binary of an older folder of the same version whose
# embedded module list (`go version -m`) is exactly what this build would compile is copied there
# instead of rebuilt. Full go output: build-<tool>.log beside it.
#
# Usage: hack/build-prometheus.sh [promtool]               build if missing; prints the binary's path
#        hack/build-prometheus.sh [promtool] --print-bin   print the path without building
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODULE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/prometheus"
VERSION="$(awk '$1 == "require" && $2 == "github.com/prometheus/prometheus" {print $3}' "$MODULE_DIR/go.mod")"
# Hashed from inside the folder, so the key is the same wherever the repository is checked out.
KEY="$VERSION-$(cd "$MODULE_DIR" && sha256sum go.mod go.sum | sha256sum | cut -c1-8)"
TOOL=prometheus
if [[ "${1:-}" == promtool ]]; then
  TOOL=promtool
  shift
fi
BIN="$CACHE_ROOT/prometheus-$KEY/bin/$TOOL"
LOG="$CACHE_ROOT/build-$TOOL.log"

# wanted_modules: "path version[ => path version]" of every module cmd/$TOOL compiles in, sorted.
wanted_modules() {
  (cd "$MODULE_DIR" && go list -mod=readonly -deps \
    -f '{{with .Module}}{{.Path}} {{.Version}}{{with .Replace}} => {{.Path}} {{.Version}}{{end}}{{end}}' \
    "github.com/prometheus/prometheus/cmd/$TOOL") | sort -u
}

# built_modules BINARY: the same list, read from the build information Go embeds in BINARY.
built_modules() {
  go version -m "$1" | awk -F'\t' '
    $2 == "mod" || $2 == "dep" {if (line) print line; line = $3 " " $4}
    $2 == "=>" {line = line " => " $3 " " $4}
    END {if (line) print line}' | sort -u
}

# adopt_built DIR: copy into DIR a $TOOL from an older cache folder of this version that was built
# from exactly the modules this build would compile; fails when there is none.
adopt_built() {
  local wanted candidate
  wanted="$(wanted_modules)" || return 1
  for candidate in "$CACHE_ROOT"/prometheus-"$VERSION"-*/bin/"$TOOL"; do
    [[ -x "$candidate" && "$candidate" != "$BIN" ]] || continue
    if [[ "$(built_modules "$candidate")" == "$wanted" ]]; then
      log "same modules as $candidate: copied, not rebuilt"
      cp "$candidate" "$1/$TOOL"
      return 0
    fi
  done
  return 1
}

# build_tool DIR: go build cmd/$TOOL into DIR.
build_tool() {
  adopt_built "$1" && return 0
  log "compiling $TOOL $VERSION from the module proxy (cold: several minutes; log $LOG)"
  if ! (cd "$MODULE_DIR" && nice -n 10 go build -mod=readonly -trimpath -ldflags "-s -w" \
          -o "$1/$TOOL" "github.com/prometheus/prometheus/cmd/$TOOL") >"$LOG" 2>&1; then
    tail -20 "$LOG" >&2
    die "build failed"
  fi
}

build_binary_once "$BIN" build_tool "$@"
