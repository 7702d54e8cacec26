#!/usr/bin/env bash
# Build a MinIO image for the chart's bundled object store, without a registry, and import it into
# the local cluster's node.
#
#   hack/build-minio-image.sh               build (cached), import as localhost/cairn-minio:<commit>
#   hack/build-minio-image.sh --no-import   only write the OCI archive
#
# The server is the static binary hack/build-minio.sh compiles from MinIO's Go module; the image
# holds only that binary at /usr/bin/minio, /tmp, /data and passwd entries for uid 1000 (the
# chart's minio.runAsUser). Cached under ${CAIRN_CACHE:-~/.cache/cairn}/minio-image/ keyed by the
# binary and this script. Prints the image name.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
source "$HERE/lib.sh"
OUT="$CACHE_ROOT/minio-image"
ARCHIVE="$OUT/cairn-minio.oci.tar"
DO_IMPORT=1
[[ "${1:-}" == "--no-import" ]] && DO_IMPORT=0

bin="$(bash "$HERE/build-minio.sh" | tail -n 1)"
[[ -x "$bin" ]] || die "hack/build-minio.sh gave no binary"
# The version's commit names the image: a1b2c3d4e5f6 from v0.0.0-<date>-a1b2c3d4e5f6.
version="$(basename "$(dirname "$(dirname "$bin")")")"
NAME="localhost/cairn-minio:${version##*-}"

lock_until_exit "$OUT/.lock"
key="$( (sha256sum "$bin"; cat "${BASH_SOURCE[0]}") | short_sha)"

if ! archive_is_current "$ARCHIVE" "$key"; then
  work="$(mktemp -d "$OUT/build-XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  root="$work/root"
  mkdir -p "$root/usr/bin" "$root/etc" "$root/tmp" "$root/data"
  chmod 1777 "$root/tmp"
  cp "$bin" "$root/usr/bin/minio"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nminio:x:1000:1000:minio:/tmp:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nminio:x:1000:\n' >"$root/etc/group"
  chown 1000:1000 "$root/data"
  tar --numeric-owner --sort=name --mtime=@0 -C "$root" -cf "$work/layer.tar" .
  python3 "$HERE/oci_image.py" pack --out "$work/image.tar" --name "$NAME" --layer "$work/layer.tar" \
    --env "PATH=/usr/bin" --env HOME=/tmp --entrypoint '["/usr/bin/minio"]' --cmd '["server", "/data"]' \
    --label "org.opencontainers.image.title=cairn-minio" --label "org.opencontainers.image.version=$version" \
    >"$work/digest"
  mv -f "$work/image.tar" "$ARCHIVE"
  seal_archive "$ARCHIVE" "$work/digest" "$key"
  log "built $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1))"
else
  log "image archive up to date ($ARCHIVE)"
fi
import_archive "$ARCHIVE" "$NAME"
echo "$NAME"
