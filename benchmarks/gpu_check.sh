#!/usr/bin/env bash
# The CUDA checks, in one go on a GPU machine (numbers recorded in README "Speed"):
# benchmark, single-GPU training at fp32 / auto precision / fp16+GradScaler, NCCL via torchrun,
# evaluate.py and predict.py on CUDA; with `transfer`, only the multi-source, fine-tuning and bundle paths
# (several datasets with --camera-aug and --thicken-labels, --init-from with --freeze-encoder, a bundle
# exported and predicted on CUDA against the fp32 run on the CPU, bench_predict).
# Usage: bash benchmarks/gpu_check.sh [OUTDIR] [transfer]
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
if [ "${2:-}" = transfer ]; then
  python3 "$repo/prepare_data.py" --synthetic --name SYN_B --count 24 --size 320 --seed 1
  python3 "$repo/train.py" --dataset SYNTHETIC SYN_B --camera-aug --thicken-labels SYN_B=1 --preset fast \
      --epochs 4 --device cuda --name gpu_multi 2>&1 | grep -E "^run|best|error"
  python3 "$repo/train.py" --dataset SYN_B --init-from gpu_multi --freeze-encoder --preset finetune \
      --max-minutes 0.5 --device cuda --name gpu_finetune 2>&1 | grep -E "^run|best|init|error"
  python3 "$repo/evaluate.py" --name gpu_finetune --test SYNTHETIC SYN_B --tolerance 0 2 2>&1 | tail -4
  python3 -c "import sys; sys.path.insert(0, '$repo'); from pathlib import Path; import utils; \
print(utils.export_bundle('gpu_multi', Path('$repo/pretrained/crackseg-general')))"
  python3 "$repo/predict.py" inputs/SYN_B/images --device cuda --out bundle_cuda 2>&1 | grep -v "%|"
  python3 "$repo/predict.py" --name gpu_multi inputs/SYN_B/images --device cpu --precision fp32 --out run_cpu \
      2>&1 | grep -v "%|"
  python3 - <<'PY'
import cv2, glob, numpy as np
gaps = [np.abs(cv2.imread(a, 0).astype(float) - cv2.imread(a.replace("bundle_cuda", "run_cpu"), 0)).max() / 255
        for a in sorted(glob.glob("bundle_cuda/*_prob.png"))]
print(f"bundle (fp16 weights) on CUDA against the fp32 run on the CPU: max |dp| {max(gaps):.4f} over {len(gaps)} images")
PY
  rm -r "$repo/pretrained/crackseg-general"
  python3 "$repo/benchmarks/bench_predict.py" --candidates UNet:32 UNet:16 --repeat 2
  exit 0
fi
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
