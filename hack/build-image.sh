#!/usr/bin/env bash
# Build the project's container image without a registry and import it into the node.
#
#   hack/build-image.sh            build, then import into the local cluster's containerd
#   hack/build-image.sh --no-import   only write the OCI archive
#
# Three layers, each cached under ${CAIRN_CACHE:-~/.cache/cairn}/image/:
#   1. base:  a minimal Debian bookworm root file system (debootstrap) with python3 + venv,
#             keyed by the suite and package list;
#   2. deps:  /opt/cairn/venv with the project's dependencies (wheels fetched by the host's
#             pip, installed offline in a chroot), keyed by the base and pyproject's dependency
#             list;
#   3. app:   the project itself (a wheel built from the repo root), rebuilt on every run.
# The archive is an OCI layout written by hack/oci_image.py and imported as
# docker.io/library/cairn:dev (so pods say `image: cairn:dev`) and localhost/cairn:<version>.
# One image serves the operator, the tracking sidecar and the example trainer.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
# shellcheck source=hack/lib.sh
source "$HERE/lib.sh"
IMG_CACHE="$CACHE_ROOT/image"
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates,tini
VENV=/opt/cairn/venv
DO_IMPORT=1
[[ "${1:-}" == "--no-import" ]] && DO_IMPORT=0

[[ $EUID -eq 0 ]] || die "must run as root (debootstrap, chroot)"
require_tools debootstrap chroot python3 tar sha256sum

# Layer tars: numeric owners and no access times, so identical trees give identical digests.
pack_layer() { # pack_layer OUT DIR PATHS...
  local out=$1 dir=$2; shift 2
  tar --numeric-owner --xattrs --sort=name -C "$dir" -cf "$out.tmp" "$@"
  mv -f "$out.tmp" "$out"
}

ROOTFS=""
mounted=()
cleanup() {
  local m
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
chroot_mounts() {
  local d
  for d in proc dev; do
    mount --bind "/$d" "$ROOTFS/$d"; mounted+=("$ROOTFS/$d")
  done
}

# ---------------------------------------------------------------- layer 1: base OS
mkdir -p "$IMG_CACHE"
base_key="$(printf '%s\n' "$SUITE" "$BASE_PACKAGES" "v1" | short_sha)"
BASE="$IMG_CACHE/base-$base_key"
ROOTFS="$BASE/rootfs"
if [[ ! -f "$BASE/base.tar" ]]; then
  log "debootstrap $SUITE (+ $BASE_PACKAGES) into $ROOTFS (first run only, a few minutes)"
  rm -rf "$BASE"; mkdir -p "$BASE"
  # Use the same Debian mirror the host's apt uses, if it names one.
  mirror="$(debian_mirror "$SUITE")"
  t0=$SECONDS
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$ROOTFS" ${mirror:+"$mirror"} >"$BASE/debootstrap.log" 2>&1 ||
    { tail -20 "$BASE/debootstrap.log" >&2; die "debootstrap failed"; }
  chroot "$ROOTFS" apt-get clean
  rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/share/doc/* \
    "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/var/log/*.log "$ROOTFS"/dev/*
  pack_layer "$BASE/base.tar" "$ROOTFS" .
  log "base layer ready in $((SECONDS - t0))s ($(du -h "$BASE/base.tar" | cut -f1))"
fi

# ---------------------------------------------------------------- layer 2: dependencies
deps="$(python3 - "$REPO/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
# The example trainers' libraries ride along so a TrainingRun can run them from this image, and
# the server's (FastAPI, uvicorn) so the chart can run `cairn server` from it.
extras = project["optional-dependencies"]
print("\n".join(sorted(project.get("dependencies", []) + extras["examples"] + extras["server"])))
EOF
)"
deps_key="$(printf '%s\n' "$base_key" "$deps" | short_sha)"
DEPS_TAR="$BASE/deps-$deps_key.tar"
if [[ ! -f "$DEPS_TAR" || "$(cat "$BASE/venv.key" 2>/dev/null)" != "$deps_key" ]]; then
  log "installing dependencies into $VENV (key $deps_key):" $deps
  t0=$SECONDS
  wheels="$BASE/wheels"
  rm -rf "$wheels" "$ROOTFS/opt/cairn"; mkdir -p "$wheels"
  if [[ -n "$deps" ]]; then
    # The host's pip reaches the package index; the chroot installs offline from these wheels.
    mapfile -t dep_args <<<"$deps"
    python3 -m pip wheel --quiet --wheel-dir "$wheels" "${dep_args[@]}"
  fi
  chroot_mounts
  chroot "$ROOTFS" python3 -m venv "$VENV"
  if [[ -n "$deps" ]]; then
    mkdir -p "$ROOTFS/tmp/wheels"; cp "$wheels"/*.whl "$ROOTFS/tmp/wheels/"
    chroot "$ROOTFS" "$VENV/bin/pip" install --quiet --no-cache-dir --no-index \
      --find-links /tmp/wheels "${dep_args[@]}"
    rm -rf "$ROOTFS/tmp/wheels"
  fi
  cleanup; mounted=()
  pack_layer "$DEPS_TAR" "$ROOTFS" ./opt/cairn
  echo "$deps_key" >"$BASE/venv.key"
  find "$BASE" -maxdepth 1 -name 'deps-*.tar' ! -name "deps-$deps_key.tar" -delete
  log "dependency layer ready in $((SECONDS - t0))s ($(du -h "$DEPS_TAR" | cut -f1))"
fi

# ---------------------------------------------------------------- layer 3: the project
t0=$SECONDS
version="$(python3 -c 'import sys,tomllib; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' "$REPO/pyproject.toml")"
ARCHIVE="$IMG_CACHE/cairn.oci.tar"
# The project's sources decide whether the app layer (and so the archive) must be rebuilt.
app_key="$( (echo "$deps_key"; cd "$REPO" && find operator examples pyproject.toml -type f ! -path '*/__pycache__/*' \
  ! -path '*.egg-info/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum) | short_sha)"

if archive_is_current "$ARCHIVE" "$app_key"; then
  log "image archive up to date with the sources ($ARCHIVE)"
  import_archive "$ARCHIVE" docker.io/library/cairn:dev
  exit 0
fi
work="$(mktemp -d "$IMG_CACHE/app-XXXXXX")"
trap 'cleanup; rm -rf "$work"' EXIT
log "building the cairn $version wheel from $REPO"
python3 -m pip wheel --quiet --no-deps --wheel-dir "$work/wheel" "$REPO"
chroot_mounts
# Remove the previous run's install so the app layer holds exactly this run's files.
chroot "$ROOTFS" "$VENV/bin/pip" uninstall --quiet --yes cairn >/dev/null 2>&1 || true
wheel="$(cd "$work/wheel" && ls cairn-*.whl)"
mkdir -p "$ROOTFS/tmp/app"; cp "$work/wheel/$wheel" "$ROOTFS/tmp/app/"
touch "$work/marker"; sleep 1
chroot "$ROOTFS" "$VENV/bin/pip" install --quiet --no-cache-dir --no-index --no-deps "/tmp/app/$wheel"
rm -rf "$ROOTFS/tmp/app" "$ROOTFS/opt/cairn/examples"
cp -r "$REPO/examples" "$ROOTFS/opt/cairn/examples"
find "$ROOTFS/opt/cairn/examples" -exec touch {} +
cleanup; mounted=()
(cd "$ROOTFS" && find ./opt/cairn -newer "$work/marker" ! -type d -print0 | sort -z) >"$work/files"
tar --numeric-owner --xattrs -C "$ROOTFS" --null -T "$work/files" -cf "$work/app.tar"

git_rev="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
python3 "$HERE/oci_image.py" pack --out "$ARCHIVE" \
  --name docker.io/library/cairn:dev --name "localhost/cairn:$version" \
  --layer "$BASE/base.tar" --layer "$DEPS_TAR" --layer "$work/app.tar" \
  --env "PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --env PYTHONUNBUFFERED=1 --env LANG=C.UTF-8 \
  --entrypoint '["/usr/bin/tini", "--"]' --cmd '["python3"]' \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$git_rev" >"$work/digest"
seal_archive "$ARCHIVE" "$work/digest" "$app_key"
log "image archive $ARCHIVE (manifest $(cat "$work/digest")) built in $((SECONDS - t0))s"
import_archive "$ARCHIVE" docker.io/library/cairn:dev
