"""What --photometric does to the network input once per-image min-max scaling has run.

    python benchmarks/studies/photometric.py --dataset DEEPCRACK_TRAIN --images 60

The brightness/contrast change is made on the uint8 photo; min-max scaling then undoes any affine
change except where it clipped at 0 or 255. This prints, over the images it changed, how many scaled
values differ from the unaugmented input, by how much, and how many more pixels were saturated.
"""
import argparse
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from augment import photo_transform  # noqa: E402
from dataset import Intensity, preprocess, read_image, scan_dataset  # noqa: E402
from runner import DATA_DIR  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="DEEPCRACK_TRAIN")
    p.add_argument("--data-dir", type=Path, default=Path(DATA_DIR))
    p.add_argument("--images", type=int, default=60)
    args = p.parse_args()
    transform = photo_transform(photometric=True)
    transform.set_random_state(np.random.default_rng(0), random.Random(0))
    changed, moved, shift, saturated = 0, [], [], []
    for sample in scan_dataset(args.data_dir, args.dataset)[0][:args.images]:
        photo = read_image(sample.image)
        out = transform(image=photo)["image"]
        if np.array_equal(out, photo):
            continue
        diff = np.abs(preprocess(out, Intensity(), "") - preprocess(photo, Intensity(), ""))
        changed += 1
        moved.append((diff > 1e-6).mean())
        shift.append(diff.mean())
        saturated.append(np.isin(out, (0, 255)).mean() - np.isin(photo, (0, 255)).mean())
    print(f"{args.dataset}: {changed} of {args.images} photos changed by --photometric; after min-max scaling "
          f"{100 * np.mean(moved):.1f}% of their values differ, mean |change| {np.mean(shift):.3f} "
          f"(max {np.max(shift):.3f}) on the [0, 1] scale, {100 * np.mean(saturated):.1f}% more pixels at 0 or 255")


if __name__ == "__main__":
    main()
