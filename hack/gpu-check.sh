#!/usr/bin/env bash
# Sample a real GPU with the SDK's system metrics for a few seconds and print what was recorded.
# For a machine with an NVIDIA GPU (not part of the test suite); without one it says so and exits 0.
#   hack/gpu-check.sh [SECONDS]    (default 8; a small matrix product keeps the GPU busy if torch is there)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_TO_RUN="${1:-8}"

if ! command -v nvidia-smi >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -q 'libnvidia-ml\.so\.1'; then
  echo "gpu-check: no NVIDIA driver here (neither nvidia-smi nor libnvidia-ml.so.1): nothing to check"
  exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT/operator${PYTHONPATH:+:$PYTHONPATH}"
export CAIRN_RUN_DIR="$WORK/run" CAIRN_SYSTEM_METRICS_INTERVAL=1

python3 - "$SECONDS_TO_RUN" <<'EOF'
import json, os, sys, time

import cairn
from cairn.sdk.system import SystemSampler, open_gpu_source

seconds = float(sys.argv[1])
source, sample, close = open_gpu_source(os.environ.get("CAIRN_NVML_LIBRARY") or "libnvidia-ml.so.1")
if sample is None:
    print("gpu-check: the driver answers but NVML and nvidia-smi show no GPU: nothing to check")
    sys.exit(0)
close()
print(f"gpu-check: reading GPUs through {source}")

run = cairn.init(experiment="gpu-check", capture_env=True)
try:
    import torch  # optional: load the GPU so utilisation and power move
    x = torch.randn(4096, 4096, device="cuda")
    work = lambda: (x @ x).sum().item()  # noqa: E731
except Exception as exc:  # noqa: BLE001
    print(f"gpu-check: no torch with CUDA ({type(exc).__name__}); sampling an idle GPU")
    work = lambda: time.sleep(0.05)  # noqa: E731
end, step = time.monotonic() + seconds, 0
while time.monotonic() < end:
    work()
    cairn.log({"step_time": 0.0}, step=step)
    step += 1
sampler = run.system_sampler
cairn.finish()

latest = {}
with open(os.path.join(run.dir, "records.jsonl")) as f:
    for line in f:
        rec = json.loads(line)
        if rec["type"] == "run":
            env = rec["environment"]
            print(f"gpu-check: environment gpu_model={env.get('gpu_model')} gpu_count={env.get('gpu_count')} "
                  f"driver={env.get('driver_version')} cuda={env.get('cuda_version')}")
        if rec["type"] == "metric":
            for key, value in rec["values"].items():
                if key.startswith("system/"):
                    latest.setdefault(key, []).append(value)
print(f"gpu-check: {sampler.samples} samples, source {sampler.gpu_source}, {sampler.failures} failed")
for key in sorted(latest):
    values = latest[key]
    print(f"  {key:45s} last {values[-1]:>16.2f}  min {min(values):>16.2f}  max {max(values):>16.2f}  n {len(values)}")
gpu_keys = [k for k in latest if k.startswith("system/gpu.")]
if not gpu_keys:
    print("gpu-check: FAILED: no system/gpu.* metrics were recorded")
    sys.exit(1)
print("gpu-check: ok")
EOF
