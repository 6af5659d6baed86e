#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md in one command (about 8 minutes on one H200), each part time-capped:
#   1. the memory estimate against torch.cuda.max_memory_allocated (benchmarks/memory_estimate.py --measure);
#   2. the pretraining step's parts, augmentation among them (benchmarks/step_overhead.py --breakdown);
#   3. benchmarks/gpu_smoke.sh (torchrun + --compile with inductor, resume on one process, throughput).
#
#   bash benchmarks/gpu_rows.sh OUT_DIR        # logs: OUT_DIR/memory.txt, overhead.txt, smoke.txt
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_rows.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"

timeout 150 python3 benchmarks/memory_estimate.py --measure --device cuda 2>&1 | grep -v "^--\|batch norm sees" \
  | tee "$out/memory.txt"
timeout 150 python3 benchmarks/step_overhead.py --breakdown --device cuda --steps 5 \
  --cases r50_1x_sk1:224:128 r50_1x_sk0:224:256 r18_1x_sk0:32:512 2>&1 | tee "$out/overhead.txt"
timeout 270 bash benchmarks/gpu_smoke.sh "$out/smoke_runs" 2>&1 \
  | tee "$out/smoke.txt"
rm -rf "$out/smoke_runs"
