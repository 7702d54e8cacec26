#!/usr/bin/env bash
# Build the MinIO server from its Go module, for the tests' object store.
#
# No release binary is downloaded: `go install github.com/minio/minio@$MINIO_VERSION` compiles it
# from the module proxy. MinIO publishes no semver tags, so the version is a pseudo-version naming
# one commit; the go.sum database pins its content.
#
# Output: ${CAIRN_CACHE:-~/.cache/cairn}/minio-<version>/bin/minio. A binary already there is not
# rebuilt, so a warm machine returns in well under a second. Full go output: build-minio.log
# beside it.
#
# Usage: hack/build-minio.sh               build if missing; prints the binary's path
#        hack/build-minio.sh --print-bin   print the path without building
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
BIN="$CACHE_ROOT/minio-$MINIO_VERSION/bin/minio"
LOG="$CACHE_ROOT/build-minio.log"

# build_minio DIR: go install the server into DIR.
build_minio() {
  local ldflags stamp commit version release_tag pkg rc m
  # The version stamps upstream's buildscripts/gen-ldflags.go sets from git, here taken from the
  # pseudo-version (vX.Y.Z-YYYYMMDDhhmmss-commit), so `minio --version` names the commit.
  stamp="${MINIO_VERSION#*-}"; commit="${stamp#*-}"; stamp="${stamp%%-*}"
  if [[ "$stamp" =~ ^([0-9]{4})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})$ ]]; then
    m=("${BASH_REMATCH[@]}")
    version="${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}Z"
    release_tag="DEVELOPMENT.${m[1]}-${m[2]}-${m[3]}T${m[4]}-${m[5]}-${m[6]}Z"
    pkg=github.com/minio/minio/cmd
    ldflags="-s -w -X $pkg.Version=$version -X $pkg.ReleaseTag=$release_tag"
    ldflags+=" -X $pkg.CommitID=$commit -X $pkg.ShortCommitID=$commit -X $pkg.CopyrightYear=${m[1]}"
  else
    ldflags="-s -w"
  fi
  log "compiling github.com/minio/minio@$MINIO_VERSION" \
    "(cold: downloads the module graph, then several minutes on 2 cores; log: $LOG)"
  # go install -v prints one line per compiled package; summarise every 100.
  go_install_logged "$1" "$ldflags" "github.com/minio/minio@$MINIO_VERSION" minio
  log "built: $("$1/minio" --version 2>/dev/null | head -1)"
}

build_binary_once "$BIN" build_minio "$@"
