#!/usr/bin/env bash
# Install the Debian packages the local cluster and image build need (idempotent; a no-op
# taking well under a second when everything is present). Needs root and the Debian archive.
#   containerd, runc, CNI plugins: the node's container runtime and pod network
#   iptables, conntrack, iproute2, ethtool, socat: kube-proxy, kubelet and the pod bridge
#   debootstrap: the base root file system of the project image
#   openssl, curl: cluster PKI and health checks
set -euo pipefail
PACKAGES=(containerd runc containernetworking-plugins iptables conntrack iproute2 ethtool socat
          util-linux mount kmod debootstrap openssl curl ca-certificates)
missing=()
for p in "${PACKAGES[@]}"; do
  [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "[install-cluster-deps] all present" >&2
  exit 0
fi
echo "[install-cluster-deps] installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "[install-cluster-deps] done" >&2
