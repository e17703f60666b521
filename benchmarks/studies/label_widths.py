"""How wide each source's annotators drew the cracks: the median over every skeleton pixel of the
label width (predict.py's measurement), and the median over images of each image's mean width.

    python benchmarks/studies/label_widths.py --record             # DEEPCRACK_TRAIN CFD CRACKMAP MASONRY
    python benchmarks/studies/label_widths.py --table-only         # the table of docs/generalisation.md
    python benchmarks/studies/label_widths.py --datasets CFD --data-dir ../shared/data

Thin centre-line labels and full crack bodies are different targets: when two training sources
differ by more than 2x, a model trained on both is asked to draw two widths for one crack.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset import read_mask, scan_dataset  # noqa: E402
from measure import crack_widths, skeletonize  # noqa: E402
from runner import DATA_DIR  # noqa: E402


def label_widths(data_dir: Path, name: str) -> dict:
    samples = scan_dataset(data_dir, name)[0]
    pooled, per_image = [], []
    for sample in samples:
        mask = read_mask(sample.mask)
        widths = crack_widths(mask, skeletonize(mask))
        if widths.size:
            pooled.append(widths)
            per_image.append(float(widths.mean()))
    pooled = np.concatenate(pooled)
    return {"dataset": name, "images": len(samples), "median_width_px": float(np.median(pooled)),
            "p10_p90_px": (float(np.percentile(pooled, 10)), float(np.percentile(pooled, 90))),
            "median_image_mean_px": float(np.median(per_image))}


RECORD = Path(__file__).resolve().parents[1] / "results" / "label_widths.jsonl"


def render_table(lines: list[dict]) -> str:
    """One row per dataset (a later line of the same dataset replaces an earlier one)."""
    rows = ["| source | images | median label width (px) | 10th-90th percentile | median of per-image means |",
            "|---|---|---|---|---|"]
    for w in {line["dataset"]: line for line in lines}.values():
        rows.append(f"| {w['dataset']} | {w['images']} | {w['median_width_px']:.1f} | {w['p10_p90_px'][0]:.1f}-"
                    f"{w['p10_p90_px'][1]:.1f} | {w['median_image_mean_px']:.1f} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["DEEPCRACK_TRAIN", "CFD", "CRACKMAP", "MASONRY"])
    p.add_argument("--data-dir", type=Path, default=Path(DATA_DIR))
    p.add_argument("--record", action="store_true", help=f"append one line per dataset to {RECORD.name}")
    p.add_argument("--table-only", action="store_true", help="print the table from that record and exit")
    args = p.parse_args()
    if args.table_only:
        return print(render_table([json.loads(line) for line in RECORD.read_text().splitlines()]))
    found = [{"experiment": name, **label_widths(args.data_dir, name)} for name in args.datasets]
    if args.record:
        with open(RECORD, "a") as f:
            f.writelines(json.dumps(line, sort_keys=True) + "\n" for line in found)
    print(render_table(found))


if __name__ == "__main__":
    main()
