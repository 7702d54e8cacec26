#!/usr/bin/env bash
# The cluster demo on a fresh machine: install what is missing, then train and track the sample
# TrainingRun on the local cluster with the Helm chart (see examples/demo_cluster.py). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/install-cluster-deps.sh
bash hack/install-test-deps.sh
if ! python3 -c "import cairn.cli.main, kopf, kubernetes" 2>/dev/null; then
  echo "[demo] installing cairn" >&2
  python3 -m pip install --quiet --disable-pip-version-check -e '.[operator]'
fi
exec python3 examples/demo_cluster.py "$@"
