#!/usr/bin/env bash
# Write the one file an air-gapped site needs: the Helm chart, the CRDs, every image as an OCI
# archive, the Python wheels of the SDK and CLI (wheels/, from hack/wheelhouse.sh: `pip install
# --no-index --find-links wheels/ 'cairn-tracking[cli]'`), with SHA256SUMS and an image list, and
# OUT.tar.sha256 beside it (naming the file alone, so `sha256sum -c` works wherever both are carried). Carry it across, verify, push the images to
# the site's registry mirror, install (docs/airgap.md).
#
#   hack/airgap-bundle.sh [OUT.tar]     default dist/cairn-airgap-<version>.tar
#
# The wheels are for this machine's python3; SITE_PYTHON=X.Y makes them binary wheels for the site's
# CPython X.Y on x86_64 Linux instead.
#
# Images are built here if missing (hack/build-image.sh, hack/build-postgres-image.sh,
# hack/build-minio-image.sh, all with --no-import: no cluster needed); Helm from its Go module.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
# shellcheck source=hack/lib.sh
source "$HERE/lib.sh"
version="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
  "$REPO/pyproject.toml")"
out="${1:-$REPO/dist/cairn-airgap-$version.tar}"

helm="$(bash "$HERE/build-helm.sh")"
bash "$HERE/build-image.sh" --no-import >&2
bash "$HERE/build-postgres-image.sh" --no-import >&2
bash "$HERE/build-minio-image.sh" --no-import >&2

stage="$(mktemp -d)"
trap 'rm -rf "$stage" "$out.partial"' EXIT
chmod 755 "$stage"  # it is the bundle's top directory: mktemp's 700 would carry over on extraction
mkdir -p "$stage/chart" "$stage/crds/tenancy" "$stage/images" "$stage/wheels"
"$helm" package "$REPO/charts/cairn" --destination "$stage/chart" >&2
cp "$REPO"/crds/*.yaml "$stage/crds/"
cp "$REPO"/crds/tenancy/*.yaml "$stage/crds/tenancy/"
cp "$CACHE_ROOT/image/cairn.oci.tar" "$stage/images/cairn.oci.tar"
cp "$CACHE_ROOT/postgres-image/cairn-postgres.oci.tar" "$stage/images/cairn-postgres.oci.tar"
cp "$CACHE_ROOT/minio-image/cairn-minio.oci.tar" "$stage/images/cairn-minio.oci.tar"
bash "$HERE/wheelhouse.sh" "$stage/wheels" ${SITE_PYTHON:+--python-version "$SITE_PYTHON"} >&2

# images.txt, one line per tag: the archive, the tag (its OCI ref name, what `skopeo copy
# oci-archive:ARCHIVE:TAG` selects), the manifest digest, and the name `ctr images import` gives it.
python3 - "$stage/images" >"$stage/images.txt" <<'PY'
import json, sys, tarfile
from pathlib import Path
for archive in sorted(Path(sys.argv[1]).glob("*.oci.tar")):
    with tarfile.open(archive) as t:
        index = json.load(t.extractfile("index.json"))
    for m in index["manifests"]:
        annotations = m.get("annotations") or {}
        tag = annotations.get("org.opencontainers.image.ref.name", "")
        name = annotations.get("io.containerd.image.name", "")
        if not tag or not name:
            sys.exit(f"{archive.name}: manifest {m['digest']} has no ref name or image name")
        print(f"images/{archive.name}\t{tag}\t{m['digest']}\t{name}")
PY
(cd "$stage" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort | xargs sha256sum >SHA256SUMS)
mkdir -p "$(dirname "$out")"
# Written beside the target and renamed: an interrupted run never leaves a partial bundle at $out.
tar --sort=name --owner=0 --group=0 --numeric-owner -C "$stage" -cf "$out.partial" .
mv -f "$out.partial" "$out"
(cd "$(dirname "$out")" && sha256sum "$(basename "$out")" >"$(basename "$out").sha256")
log "wrote $out ($(du -h "$out" | cut -f1)); images:"
column -t "$stage/images.txt" >&2 || cat "$stage/images.txt" >&2
echo "$out"
