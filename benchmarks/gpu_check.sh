#!/usr/bin/env bash
# The CUDA checks, in one go on a GPU machine (numbers recorded in README "Speed"):
# benchmark, single-GPU training at fp32 / auto precision / fp16+GradScaler, NCCL via torchrun,
# evaluate.py and predict.py on CUDA; with `transfer`, only the multi-source, fine-tuning and bundle paths
# (several datasets with --camera-aug and --thicken-labels, --init-from with --freeze-encoder, a bundle
# exported and predicted on CUDA against the fp32 run on the CPU, bench_predict).
# Usage: bash benchmarks/gpu_check.sh [OUTDIR] [transfer]
# CRACKSEG_CHECK_DEVICE=cpu runs the same steps on a CPU with --epochs 1 (tests/test_benchmarks.py).
# Everything runs in a scratch copy of the repository, deleted at exit: the bundle export writes
# the copy's pretrained/, never the real one. Any failing step stops the script with its status.
set -euo pipefail
out=${1:-/tmp/gpu_check}
device=${CRACKSEG_CHECK_DEVICE:-cuda}
mkdir -p "$out"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
source_repo=$(cd "$(dirname "$0")/.." && pwd)
repo=$scratch/repo
mkdir -p "$repo" "$scratch/work"
# the code as it is now, without the user's runs, data or outputs
tar cf - -C "$source_repo" --exclude=./.git --exclude=./models --exclude=./runs --exclude=./inputs \
    --exclude=./predictions . | tar xf - -C "$repo"
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
if [ "$device" = cuda ]; then
  epochs=4 minutes=0.5 fast_minutes=30
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  python3 "$repo/benchmarks/bench_train.py" --device cuda --steps 20
  python3 "$repo/benchmarks/bench_train.py" --device cuda --batch-size 8 --crop 512 --steps 20
else
  epochs=1 minutes=0.05 fast_minutes=1
  # the CPU rehearsal of `transfer` checks the bundle paths only: the benchmark step is the other mode's
  [ "${2:-}" = transfer ] || python3 "$repo/benchmarks/bench_train.py" --device cpu --steps 1 --warmup 0 --crop 64 \
      --infer-size 64
fi
cd "$scratch/work"
python3 "$repo/prepare_data.py" --synthetic --name SYNTHETIC --count 12 --size 96
if [ "${2:-}" = transfer ]; then
  python3 "$repo/prepare_data.py" --synthetic --name SYN_B --count 12 --size 96 --seed 1
  python3 "$repo/train.py" --dataset SYNTHETIC SYN_B --camera-aug --thicken-labels SYN_B=1 --preset fast \
      --epochs "$epochs" --crop 64 --device "$device" --name gpu_multi
  python3 "$repo/train.py" --dataset SYN_B --init-from gpu_multi --freeze-encoder --preset finetune \
      --max-minutes "$minutes" --epochs "$epochs" --crop 64 --device "$device" --name gpu_finetune
  python3 "$repo/evaluate.py" --name gpu_finetune --test SYNTHETIC SYN_B --tolerance 0 2
  python3 -c "import sys; sys.path.insert(0, '$repo'); from pathlib import Path; import rundir; \
print(rundir.export_bundle('gpu_multi', Path('$repo/pretrained/crackseg-general')))"
  python3 "$repo/predict.py" inputs/SYN_B/images --device "$device" --out bundle_out
  python3 "$repo/predict.py" --name gpu_multi inputs/SYN_B/images --device cpu --precision fp32 --out run_cpu
  python3 - <<'PY'
import cv2, glob, numpy as np
gaps = [np.abs(cv2.imread(a, 0).astype(float) - cv2.imread(a.replace("bundle_out", "run_cpu"), 0)).max() / 255
        for a in sorted(glob.glob("bundle_out/*_prob.png"))]
print(f"bundle (fp16 weights) against the fp32 run on the CPU: max |dp| {max(gaps):.4f} over {len(gaps)} images")
PY
  if [ "$device" = cuda ]; then
    python3 "$repo/benchmarks/bench_predict.py" --candidates UNet:32 UNet:16 --repeat 2
  fi
  echo "transfer check done"
  exit 0
fi
for p in "fp32 --no-channels-last" "auto" "fp16"; do
  [ "$device" = cpu ] && [ "$p" = fp16 ] && continue   # fp16 autocast is CUDA only
  name=gpu_$(echo "$p" | cut -d' ' -f1)
  start=$SECONDS
  # shellcheck disable=SC2086 # $p holds the precision and, for fp32, one more flag
  python3 "$repo/train.py" --preset fast --max-minutes "$fast_minutes" --epochs "$epochs" --device "$device" \
      --precision $p --name "$name"
  echo "$name wall $((SECONDS - start)) s"
  tail -1 "models/$name/log.csv" | cut -d, -f1,3,6,8,9
done
if [ "$device" = cuda ]; then
  python3 -m torch.distributed.run --standalone --nproc_per_node=1 "$repo/train.py" --preset fast --epochs 2 \
      --device cuda --name gpu_ddp
fi
python3 "$repo/evaluate.py" --name gpu_auto --test SYNTHETIC --tolerance 0 2 --tta
python3 "$repo/predict.py" --name gpu_auto inputs/SYNTHETIC/images --out preds --overlay
for f in models/*/log.csv; do cp "$f" "$out/$(basename "$(dirname "$f")").csv"; done
echo "check done"
