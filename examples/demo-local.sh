#!/usr/bin/env bash
# Track two runs of the digits example on this machine with the embedded store (SQLite under
# $CAIRN_HOME, default ~/.cairn), then show the better one and compare both. No cluster needed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import cairn, numpy, sklearn" 2>/dev/null; then
  echo "[demo] installing cairn and the example's dependencies" >&2
  python3 -m pip install --quiet --disable-pip-version-check -e '.[examples]'
fi
export COLUMNS="${COLUMNS:-$(tput cols 2>/dev/null || echo 160)}"
export CAIRN_HOME="${CAIRN_HOME:-$HOME/.cairn}"
run() {  # prints the run id of a tracked run of the example
  python3 -m cairn.cli.main run -e digits-demo "$@" -- python3 examples/train_digits.py \
    | tee /dev/stderr | awk '$1 == "run" {print $2; exit}'
}
slow=$(run -n "lr 0.02" -p lr=0.02 -p epochs=5)
fast=$(run -n "lr 0.2" -p lr=0.2 -p epochs=5)
echo
python3 -m cairn.cli.main runs list -e digits-demo --sort val_acc -n 5
python3 -m cairn.cli.main runs compare "$slow" "$fast"
echo "store: $CAIRN_HOME/cairn.db  (cairn runs show ${fast:0:8} for the whole record)"
