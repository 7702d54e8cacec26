#!/usr/bin/env bash
# Track two runs of the digits example on this machine with the embedded store (SQLite under
# $CAIRN_HOME, default ~/.cairn), then show the better one and compare both. No cluster needed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import cairn.cli.main, numpy, sklearn" 2>/dev/null; then
  echo "[demo] installing cairn and the example's dependencies" >&2
  python3 -m pip install --quiet --disable-pip-version-check -e '.[cli,examples]'
fi
export COLUMNS="${COLUMNS:-$(tput cols 2>/dev/null || echo 160)}"
export CAIRN_HOME="${CAIRN_HOME:-$HOME/.cairn}"
run_named() {  # a tracked run of the example, named $1; the rest are its options
  python3 -m cairn run -e digits-demo --name "$@" -- python3 examples/train_digits.py
}
newest_run_named() {  # the id of the newest run of the demo with that name, read from `-o json`
  python3 -m cairn runs list -e digits-demo -o json \
    | python3 -c 'import json, sys; print(next(r["id"] for r in json.load(sys.stdin) if r["name"] == sys.argv[1]))' "$1"
}
run_named "lr 0.02" -p lr=0.02 -p epochs=5
slow=$(newest_run_named "lr 0.02")
run_named "lr 0.2" -p lr=0.2 -p epochs=5
fast=$(newest_run_named "lr 0.2")
echo
python3 -m cairn runs list -e digits-demo --sort val_acc --limit 5
python3 -m cairn runs compare "$slow" "$fast"
echo "store: $CAIRN_HOME/cairn.db  (cairn runs show ${fast:0:8} for the whole record)"
