#!/usr/bin/env bash
# Build Helm from its Go module, for the chart's tests and for installing charts/cairn.
#
# No release binary is downloaded: `go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION` compiles it
# from the module proxy, and the go.sum database pins its content. The version stamps are the ones
# upstream's Makefile sets: `helm version` names the release, and the default Kubernetes version
# that `helm template` and `helm lint` assume follows the client-go the release is built with.
#
# Output: ${CAIRN_CACHE:-~/.cache/cairn}/helm-<version>/bin/helm. A binary already there is not
# rebuilt, so a warm machine returns in well under a second. Full go output: build-helm.log.
#
# Usage: hack/build-helm.sh               build if missing; prints the binary's path
#        hack/build-helm.sh --print-bin   print the path without building
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
BIN="$CACHE_ROOT/helm-$HELM_VERSION/bin/helm"
LOG="$CACHE_ROOT/build-helm.log"
MODULE=helm.sh/helm/v3

# build_helm DIR: go install cmd/helm into DIR with upstream's version stamps.
build_helm() {
  local mod_dir client_go k8s_major k8s_minor ldflags pkg rc
  require_tools go
  log "downloading $MODULE@$HELM_VERSION (module proxy)"
  mod_dir="$(go mod download -json "$MODULE@$HELM_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  # Upstream's Makefile: Kubernetes major = client-go major + 1, minor = client-go minor.
  client_go="$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$mod_dir/go.mod")"
  [[ "$client_go" =~ ^v([0-9]+)\.([0-9]+)\. ]] || die "no k8s.io/client-go version in $mod_dir/go.mod"
  k8s_major=$((BASH_REMATCH[1] + 1)) k8s_minor=${BASH_REMATCH[2]}
  ldflags="-s -w -X $MODULE/internal/version.version=$HELM_VERSION -X $MODULE/internal/version.gitTreeState=clean"
  for pkg in pkg/lint/rules pkg/chartutil; do
    ldflags+=" -X $MODULE/$pkg.k8sVersionMajor=$k8s_major -X $MODULE/$pkg.k8sVersionMinor=$k8s_minor"
  done
  log "compiling $MODULE/cmd/helm@$HELM_VERSION (default Kubernetes v$k8s_major.$k8s_minor; log: $LOG)"
  go_install_logged "$1" "$ldflags" "$MODULE/cmd/helm@$HELM_VERSION" helm
  log "built: $("$1/helm" version --short 2>/dev/null)"
}

build_binary_once "$BIN" build_helm "$@"
