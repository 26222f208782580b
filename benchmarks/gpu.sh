#!/usr/bin/env bash
# Issue #7's GPU measurements in one prepared run (`make bench-gpu PYTHON=...`, or
# `bash benchmarks/gpu.sh python3`), sized for a short device lease (~8 minutes on an H100/H200):
#   1. the GPU tests (nvJPEG vs Pillow, a shard decoded on the device, the job with --gpu-decode
#      and bf16 twice -> same bytes, --batch-size auto against GPU memory);
#   2. encode.py, released VAR VQ-VAE (random weights): 256² and 512², bf16 and fp32, batch
#      16/64/256, channels_last off/on, then torch.compile at the best layout; % of the bf16 peak;
#   3. pipeline_efficiency.py, released VAR VQ-VAE, bf16 + channels_last, batch 64, 1024 JPEGs:
#      CPU decode, then --gpu-decode.
# Results are appended to benchmarks/results/*.jsonl (copy them into RESULTS.md with the date).
set -uo pipefail
PY=${1:-python3}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
status=0
"$PY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider || status=1
"$PY" benchmarks/encode.py --device cuda --sizes 256,512 --precisions bf16,fp32 --batch-sizes 16,64,256 \
  --channels-last both --iters 10 --warmup 3 || status=1
"$PY" benchmarks/encode.py --device cuda --sizes 256 --precisions bf16 --batch-sizes 64 --channels-last on \
  --compile on --iters 10 --warmup 3 || status=1
for extra in "" "--gpu-decode"; do
  "$PY" benchmarks/pipeline_efficiency.py --device cuda --config "" --precision bf16 --channels-last \
    --batch-size 64 --images 1024 --shards 8 --max-side 640 $extra || status=1
done
exit $status
