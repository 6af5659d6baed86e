#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md (sections 3 and 9) in one command, at most about 8 minutes on one H200,
# each part time-capped so that one slow part cannot take the others' time:
#   1. the pretraining step's parts and the bare network step (full / bare ratio, augmentation share):
#      r50_1x_sk0 224 b256, r50_1x_sk1 224 b128 (on the two views the workers cut), r18 32 px b512 (on whole
#      cached images, the device cropping) (step_overhead.py --breakdown);
#   2. eager against torch.compile (inductor) with peak memory and model FLOPs: r50_1x_sk0 b256 and
#      r50_1x_sk1 b128 (gpu_throughput.py, pretraining only, no largest-batch search);
#   3. the input-bound rate: a folder of JPEGs through the Loader's workers (decode + the two crops from
#      full resolution) to the two augmented views on the GPU, with 15 workers (data_path.py);
#   4. r152_3x_sk1 with --micro-batch 64: the memory estimate against the measured peak, and its step time
#      (memory_estimate.py --measure).
# benchmarks/gpu_smoke.sh (torchrun, --compile, resume) is separate.
#
#   bash benchmarks/gpu_rows.sh OUT_DIR        # logs: OUT_DIR/overhead.txt, compile.txt, input.txt, r152.txt
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_rows.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$out/device.txt"

timeout 150 python3 benchmarks/step_overhead.py --breakdown --device cuda --steps 5 \
  --cases r50_1x_sk0:224:256 r50_1x_sk1:224:128 r18_1x_sk0:32:512 2>&1 | tee "$out/overhead.txt"
timeout 200 python3 benchmarks/gpu_throughput.py --models r50_1x_sk0 --batch-sizes 256 --no-fit --steps 8 \
  --stages pretrain 2>&1 | tee "$out/compile.txt"
timeout 100 python3 benchmarks/gpu_throughput.py --models r50_1x_sk1 --batch-sizes 128 --no-fit --steps 8 \
  --stages pretrain 2>&1 | tee -a "$out/compile.txt"
timeout 60 python3 benchmarks/data_path.py --device cuda --case r50_1x_sk0:224:256 --images 1024 \
  --jpeg-size 500x375 --workers 15 --epochs 1 2>&1 | tee "$out/input.txt"
timeout 60 python3 benchmarks/memory_estimate.py --measure --device cuda --micro-batch 64 \
  --cases pretrain/r152_3x_sk1:224:256 2>&1 | grep -v "^--\|batch norm sees" | tee "$out/r152.txt"
