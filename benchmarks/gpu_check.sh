#!/usr/bin/env bash
# The CUDA checks, in one go on a GPU machine (numbers recorded in README "Speed"):
# benchmark, single-GPU training at fp32 / auto precision / fp16+GradScaler, NCCL via torchrun,
# evaluate.py and predict.py on CUDA. Usage: bash benchmarks/gpu_check.sh [OUTDIR]
set -uo pipefail
out=${1:-/tmp/gpu_check}
mkdir -p "$out"
work=$(mktemp -d)
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
python3 "$repo/benchmarks/bench_train.py" --device cuda --steps 20
python3 "$repo/benchmarks/bench_train.py" --device cuda --batch-size 8 --crop 512 --steps 20
cd "$work"
python3 "$repo/prepare_data.py" --synthetic --name SYNTHETIC
for p in "fp32 --no-channels-last" "auto" "fp16"; do
  name=gpu_$(echo "$p" | cut -d' ' -f1)
  start=$SECONDS
  python3 "$repo/train.py" --preset fast --max-minutes 30 --device cuda --precision $p --name "$name" 2>&1 \
      | grep -E "^run|best|error"
  echo "$name wall $((SECONDS - start)) s"
  tail -1 "models/$name/log.csv" | cut -d, -f1,3,6,8,9
done
python3 -m torch.distributed.run --standalone --nproc_per_node=1 "$repo/train.py" --preset fast --epochs 2 \
    --device cuda --name gpu_ddp 2>&1 | grep -E "^run|best|checksum|error"
python3 "$repo/evaluate.py" --name gpu_auto --test SYNTHETIC --tolerance 0 2 --tta 2>&1 | tail -3
python3 "$repo/predict.py" --name gpu_auto inputs/SYNTHETIC/images --out preds --overlay 2>&1 | tail -2
cp models/*/log.csv "$out/" 2>/dev/null; for f in models/*/log.csv; do cp "$f" "$out/$(basename "$(dirname "$f")").csv"; done
