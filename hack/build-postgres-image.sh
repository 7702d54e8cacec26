#!/usr/bin/env bash
# Build a PostgreSQL image for the chart's bundled store, without a registry, and import it into
# the local cluster's node.
#
#   hack/build-postgres-image.sh               build (cached), import as localhost/cairn-postgres:15
#   hack/build-postgres-image.sh --no-import   only write the OCI archive
#
# Debian bookworm's postgresql-15 (debootstrap from the Debian archive, no image is pulled) with a
# small entrypoint that behaves like the official postgres image's for what the chart uses:
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB initialise an empty PGDATA on first start, the
# server runs as uid 999 and `pg_isready` is on PATH. Cached under
# ${CAIRN_CACHE:-~/.cache/cairn}/postgres-image/ keyed by the suite, the packages and this script,
# so a warm machine returns in about a second. The archive is an OCI layout (hack/oci_image.py):
# carry it to an air-gapped site and push it to its registry mirror like the Cairn image.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
source "$HERE/lib.sh"
OUT="$CACHE_ROOT/postgres-image"
SUITE=bookworm
PG_MAJOR=15
PACKAGES="postgresql-$PG_MAJOR"
NAME="localhost/cairn-postgres:$PG_MAJOR"
ARCHIVE="$OUT/cairn-postgres.oci.tar"
DO_IMPORT=1
[[ "${1:-}" == "--no-import" ]] && DO_IMPORT=0

[[ $EUID -eq 0 ]] || die "must run as root (debootstrap, chroot)"
require_tools debootstrap chroot python3 tar sha256sum flock

lock_until_exit "$OUT/.lock"

key="$( (printf '%s\n' "$SUITE" "$PACKAGES"; cat "${BASH_SOURCE[0]}") | short_sha)"

if archive_is_current "$ARCHIVE" "$key"; then
  log "image archive up to date ($ARCHIVE)"
  import_archive "$ARCHIVE" "$NAME"
  echo "$ARCHIVE"
  exit 0
fi

t0=$SECONDS
work="$(mktemp -d "$OUT/build-XXXXXX")"
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
rootfs="$work/rootfs"
mirror="$(debian_mirror "$SUITE")"
log "debootstrap $SUITE with $PACKAGES (a few minutes)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" ${mirror:+"$mirror"} >"$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
for d in proc dev; do mount --bind "/$d" "$rootfs/$d"; mounted+=("$rootfs/$d"); done
# The server runs as uid/gid 999 (the chart's postgresql.runAsUser, as in the official image):
# initdb refuses a user without a passwd entry.
chroot "$rootfs" sh -c "groupmod -g 999 postgres && usermod -u 999 -g 999 postgres"
# No packaged cluster: the entrypoint initialises PGDATA on the volume.
chroot "$rootfs" sh -c "pg_dropcluster --stop $PG_MAJOR main 2>/dev/null || true"
rm -rf "$rootfs/var/lib/postgresql/$PG_MAJOR" "$rootfs/etc/postgresql/$PG_MAJOR"
chroot "$rootfs" apt-get clean
for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}"; done
mounted=()
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
  "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log "$rootfs"/dev/*
mkdir -p "$rootfs/var/lib/postgresql/data" "$rootfs/var/run/postgresql"
chown 999:999 "$rootfs/var/lib/postgresql" "$rootfs/var/lib/postgresql/data" "$rootfs/var/run/postgresql"
cat >"$rootfs/usr/local/bin/postgres-entrypoint" <<EOF
#!/bin/sh
# First start on an empty PGDATA: initdb with POSTGRES_USER / POSTGRES_PASSWORD, password
# authentication over TCP, and POSTGRES_DB owned by that user. Then the server, as PID 1's child.
set -eu
BIN=/usr/lib/postgresql/$PG_MAJOR/bin
EOF
cat >>"$rootfs/usr/local/bin/postgres-entrypoint" <<'EOF'
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  [ -n "${POSTGRES_PASSWORD:-}" ] || { echo "POSTGRES_PASSWORD is empty" >&2; exit 1; }
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA"
  pwfile="$(mktemp)"
  printf '%s' "$POSTGRES_PASSWORD" >"$pwfile"
  "$BIN/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -E UTF8 --locale=C \
    --auth-local=trust --auth-host=scram-sha-256
  rm -f "$pwfile"
  printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
  printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";" |
      "$BIN/postgres" --single -D "$PGDATA" postgres >/dev/null
  fi
fi
exec "$BIN/postgres" -D "$PGDATA" "$@"
EOF
chmod 755 "$rootfs/usr/local/bin/postgres-entrypoint"
tar --numeric-owner --xattrs --sort=name -C "$rootfs" -cf "$work/layer.tar" .
python3 "$HERE/oci_image.py" pack --out "$work/image.tar" --name "$NAME" --layer "$work/layer.tar" \
  --env "PATH=/usr/lib/postgresql/$PG_MAJOR/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --env LANG=C.UTF-8 --env PGDATA=/var/lib/postgresql/data \
  --entrypoint '["/usr/local/bin/postgres-entrypoint"]' \
  --label "org.opencontainers.image.title=cairn-postgres" >"$work/digest"
mv -f "$work/image.tar" "$ARCHIVE"
seal_archive "$ARCHIVE" "$work/digest" "$key"
log "built $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1), manifest $(cat "$work/digest")) in $((SECONDS - t0))s"
import_archive "$ARCHIVE" "$NAME"
echo "$ARCHIVE"
