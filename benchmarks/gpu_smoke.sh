#!/usr/bin/env bash
# The GPU path end to end, short: the same script on a GPU node and (gloo) on a CPU.
#
#   1. torchrun, 2 processes: pretraining for 20 steps with --compile, global BN and the memory queue
#      (scikit-learn's digits: no download); checkpoints every 10 steps; graph breaks logged;
#   2. a resume of its step-10 checkpoint on ONE process (a checkpoint of N devices continues on fewer);
#   3. gpu_throughput.py's short case (CUDA: r50_1x_sk1 at 224 px, batch 128, eager; CPU: --quick).
# Prints images/s, the memory estimate against the measured peak (CUDA), and every graph break.
#
#   bash benchmarks/gpu_smoke.sh [WORK_DIR]      # default: a temporary folder, removed at exit
#
# Settings by environment: PYTHON (python), SMOKE_MODEL (r18_0.25x_sk1), SMOKE_SIZE (32), SMOKE_BACKEND (inductor on CUDA,
# aot_eager on CPU: AOTAutograd traces forward and backward without C++ code generation, in CI time).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"  # the interpreter with torch and simclrv2 (tests pass their own: sys.executable)

if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.device_count() >= 2 else 1)"; then
  device=cuda; procs=2
elif "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  device=cuda; procs=1   # one GPU: one process (each process needs its own GPU)
else
  device=cpu; procs=2
fi
backend=${SMOKE_BACKEND:-$([ "$device" = cuda ] && echo inductor || echo aot_eager)}
model=${SMOKE_MODEL:-r18_0.25x_sk1}
size=${SMOKE_SIZE:-32}
work=${1:-$(mktemp -d)}
[ -n "${1:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
echo "gpu_smoke: device $device, $procs processes, model $model at $size px, compile backend $backend, in $work"

# 1437 training images (20% of 1797 held out) / batch 70 = 20 steps
common=(pretrain --data digits --model "$model" --image-size "$size" --epochs 1 --batch-size 70 --holdout 0.2
        --memory 1024 --workers 2 --no-tensorboard --device "$device" --log-every 5)

echo "== 1. torchrun --nproc-per-node $procs: 20 steps, --compile (backend $backend)"
TORCH_LOGS=graph_breaks "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$procs" -m simclrv2 \
  "${common[@]}" --out "$work/two" --compile --compile-backend "$backend" --checkpoint-every 10 \
  2> "$work/two.log" || { tail -30 "$work/two.log"; exit 1; }
grep -E "^memory:" "$work/two.log" | head -1 || true

echo "== 2. resume of the step-10 checkpoint on one process"
checkpoint=$(ls "$work"/two/checkpoints/*10*.pt | head -1)
"$PYTHON" -m simclrv2 "${common[@]}" --out "$work/one" --resume "$checkpoint" --compile --compile-backend "$backend" \
  2> "$work/one.log" || { tail -30 "$work/one.log"; exit 1; }
grep -E "resumed from" "$work/one.log" || { echo "the run did not resume"; exit 1; }

"$PYTHON" - "$work" <<'EOF'
import json, re, sys
from pathlib import Path

work = Path(sys.argv[1])
for run in ("two", "one"):
    result = json.loads((work / run / "result.json").read_text())
    rates = [r["images_per_s"] for r in map(json.loads, open(work / run / "metrics.jsonl")) if r["kind"] == "train"]
    steady = rates[1:] or rates  # the first window holds the compilation
    line = f"{run}: {result['steps']} steps, {sorted(steady)[len(steady) // 2]:.0f} images/s (median of logged windows)"
    if "memory_estimate_gib" in result:
        line += f", memory estimate {result['memory_estimate_gib']:.3f} GiB"
    if "peak_memory_gib" in result:
        line += f", measured peak {result['peak_memory_gib']:.3f} GiB"
    print(line)
breaks = re.findall(r"Graph break in user code at (\S+)", (work / "two.log").read_text())
network = [b for b in breaks if not re.search(r"(torch/nn/parallel/distributed\.py|/contextlib\.py):", b)]
print(f"graph breaks: {len(breaks)} logged, {len(network)} outside DDP's forward prelude")
for where in sorted(set(breaks)):
    print("  ", where)
sys.exit(1 if network else 0)
EOF

echo "== 3. gpu_throughput short case"
if [ "$device" = cuda ]; then
  "$PYTHON" benchmarks/gpu_throughput.py --models r50_1x_sk1 --batch-sizes 128 --classifier-batch 128 --steps 5 --no-fit \
    --no-compile  # step 1 compiled already; compiling three r50 steps takes minutes
else
  "$PYTHON" benchmarks/gpu_throughput.py --device cpu --quick
fi
echo "gpu_smoke: ok"
