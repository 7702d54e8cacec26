#!/usr/bin/env bash
# Build the web UI of `cairn server` from its npm packages into operator/cairn/server/ui/dist/
# (index.html + assets/), which the app serves and the wheel ships. Nothing is fetched at run time.
#
# `npm ci` installs the exact versions of package-lock.json (install scripts off: esbuild finds its
# platform binary package by itself), then esbuild bundles src/. Cached under
# ${CAIRN_CACHE:-~/.cache/cairn}/ui-<key>/ where the key hashes the lockfile, package.json, build.mjs
# and src/: a warm machine only copies the cached dist (well under a second). node_modules is kept
# per lockfile in ui-npm-<lockfile hash>/, so a source change rebuilds without npm.
#
# Usage: hack/build-ui.sh   build if needed; prints the dist directory
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UI="$REPO/operator/cairn/server/ui"
DIST="$UI/dist"

ui_sources() { (cd "$UI" && find package.json package-lock.json build.mjs src -type f | LC_ALL=C sort); }
key="$( (cd "$UI" && ui_sources | xargs sha256sum) | short_sha)"
npm_key="$(sha256sum "$UI/package-lock.json" | short_sha)"
CACHED="$CACHE_ROOT/ui-$key/dist"
MODULES="$CACHE_ROOT/ui-npm-$npm_key/node_modules"

if [[ ! -f "$CACHED/index.html" ]]; then
  lock_until_exit "$CACHE_ROOT/.$LOG_TAG.lock"
fi
if [[ ! -f "$CACHED/index.html" ]]; then
  require_tools node npm
  t0=$SECONDS
  work="$(mktemp -d "$CACHE_ROOT/.$LOG_TAG-XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  (cd "$UI" && ui_sources | xargs -I{} cp --parents {} "$work/")
  if [[ ! -d "$MODULES" ]]; then
    log "npm ci (lockfile $npm_key)"
    (cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
    mkdir -p "$(dirname "$MODULES")"
    mv "$work/node_modules" "$MODULES.tmp" && mv "$MODULES.tmp" "$MODULES"
  fi
  ln -s "$MODULES" "$work/node_modules"
  (cd "$work" && node build.mjs "$work/dist" >&2)
  mkdir -p "$(dirname "$CACHED")"
  rm -rf "$CACHED"
  mv "$work/dist" "$CACHED"
  log "built in $((SECONDS - t0))s: $CACHED"
fi
rm -rf "$DIST"
cp -r "$CACHED" "$DIST"
log "dist: $DIST"
echo "$DIST"
