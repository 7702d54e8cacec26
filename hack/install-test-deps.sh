#!/usr/bin/env bash
# Install the Debian packages the tests' servers come from (idempotent; well under a second when
# everything is present). The tests start their own PostgreSQL on loopback, so the package's
# system service is stopped and disabled.
#   postgresql: the store in tests and benchmarks
#   openssl: a throwaway CA and certificate for the object store over TLS
#   chromium, chromium-driver: the web UI's browser tests (tests/test_ui.py, Selenium through
#     /usr/bin/chromedriver; no browser is downloaded at run time)
#   nodejs, npm: only where no node is on PATH; hack/build-ui.sh bundles the web UI with them
# Prometheus and promtool are compiled from their Go module (hack/build-prometheus.sh): Debian's package is built
# without the Kubernetes service discovery the tests scrape pods with.
set -euo pipefail
PACKAGES=(postgresql openssl chromium chromium-driver)
command -v node >/dev/null && command -v npm >/dev/null || PACKAGES+=(nodejs npm)
missing=()
for p in "${PACKAGES[@]}"; do
  [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "[install-test-deps] all present" >&2
  exit 0
fi
echo "[install-test-deps] installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# No service may start while installing: the tests own every port they use.
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for svc in postgresql prometheus prometheus-node-exporter; do
  if command -v systemctl >/dev/null 2>&1 && systemctl list-unit-files "$svc.service" >/dev/null 2>&1; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done
echo "[install-test-deps] done" >&2
