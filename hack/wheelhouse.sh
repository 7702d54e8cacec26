#!/usr/bin/env bash
# Write the Python wheels a site without network needs for the SDK and the CLI: the project's wheel and the
# wheels of its `cli` extra's dependencies, so that inside the site
#
#   pip install --no-index --find-links OUT 'cairn-tracking[cli]'    (or plain cairn-tracking: the SDK alone)
#
# works. hack/airgap-bundle.sh puts them in the bundle's wheels/.
#
#   hack/wheelhouse.sh OUT [--python-version X.Y]
#
# Without --python-version: wheels for this machine's python3 (built from source where PyPI has no wheel).
# With it: binary wheels for CPython X.Y on x86_64 Linux, for a site whose Python differs from this one.
# The dependencies' wheels are fetched from PyPI once and cached under ~/.cache/cairn/wheelhouse-<python>-<key>/,
# the key being pyproject.toml's hash; the project's own wheel is built on every run.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
# shellcheck source=hack/lib.sh
source "$HERE/lib.sh"

out="${1:?usage: hack/wheelhouse.sh OUT [--python-version X.Y]}"
python_version=""
if [[ "${2:-}" == --python-version ]]; then python_version="${3:?--python-version needs X.Y}"; fi
target="${python_version:-$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}"
dist="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["name"])' \
  "$REPO/pyproject.toml")"

mkdir -p "$out"
project="$(mktemp -d)"
trap 'rm -rf "$project"' EXIT
python3 -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$project" "$REPO"
wheel="$(cd "$project" && ls -- *.whl)"

key="$( (cat "$REPO/pyproject.toml"; echo "${python_version:+binary-only}") | short_sha)"
cache="$CACHE_ROOT/wheelhouse-$target-$key"
lock_until_exit "$CACHE_ROOT/.wheelhouse.lock"
if [[ ! -f "$cache/.complete" ]]; then
  log "fetching the wheels of $dist[cli]'s dependencies for Python $target into $cache"
  rm -rf "$cache.partial"; mkdir -p "$cache.partial"
  if [[ -n "$python_version" ]]; then
    python3 -m pip download --quiet --disable-pip-version-check --dest "$cache.partial" --find-links "$project" \
      --only-binary=:all: --implementation cp --python-version "$python_version" \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
      "$dist[cli]"
  else
    python3 -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$cache.partial" --find-links "$project" \
      "$dist[cli]"
  fi
  rm -f "$cache.partial/$(basename "$wheel")"
  touch "$cache.partial/.complete"
  rm -rf "$cache"; mv "$cache.partial" "$cache"
  find "$CACHE_ROOT" -maxdepth 1 -name "wheelhouse-$target-*" ! -name "wheelhouse-$target-$key" -exec rm -rf {} +
fi
cp "$cache"/*.whl "$out/"
cp "$project/$wheel" "$out/"
log "wrote $(find "$out" -name '*.whl' | wc -l) wheels for Python $target to $out ($wheel and its cli extra)"
