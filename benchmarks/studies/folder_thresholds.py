"""Can a folder of unlabelled photos say where its own threshold lies? Label-free rules against the
run's stored threshold, on a source the run never saw (2 px F).

    python evaluate.py --name gen_lodo_CRACKMAP --test CRACKMAP --data-dir ../shared/data --tolerance 2 --save-images
    python benchmarks/studies/folder_thresholds.py --name gen_lodo_CRACKMAP --test CRACKMAP --data-dir ../shared/data

It reads the 8-bit maps evaluate.py --save-images wrote (models/RUN/eval/DATASET/<stem>_prob.png).
Every rule but the oracle sees the maps only, never a label. "folder top q" assumes the share of
crack pixels in the photos, a prior a user does not have; it is here to show how much that would buy.
The last column applies each rule to a folder of crack-free tiles cut from the same maps: what it
marks there is false cracks on the crack-free photos that make up most of an inspection.
A second table asks what a few labelled photos buy instead: the best threshold on k photos drawn
from the folder (seeded draws), scored on the folder's other photos against their own best.
"""
import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import metrics  # noqa: E402
from dataset import DatasetError, read_mask, scan_dataset  # noqa: E402
from runner import DATA_DIR  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LABELLED_DRAWS = 20
LEVELS = np.arange(256) / 255
# logit of each 8-bit level; 0 and 255 clipped half a step inside so both stay finite
LOGITS = np.log(np.clip(LEVELS, .5 / 255, 1 - .5 / 255)) - np.log(np.clip(1 - LEVELS, .5 / 255, 1 - .5 / 255))


def otsu_level(hist: np.ndarray, values: np.ndarray) -> int:
    """The level k that best splits levels <= k from > k (Otsu: largest between-class variance of `values`)."""
    w = hist / hist.sum()
    below, mass = np.cumsum(w)[:-1], np.cumsum(w * values)[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mass[-1] + w[-1] * values[-1]) * below - mass
        between = between ** 2 / (below * (1 - below))
    return int(np.argmax(np.where(np.isfinite(between), between, -1)))


def grid_index(threshold: float) -> int:
    """The first grid threshold at or above `threshold` (predicted: p > grid[k])."""
    return int(np.clip(np.searchsorted(metrics.DEFAULT_THRESHOLDS, threshold - 1e-9), 0, 100))


def f1_at(counts: np.ndarray, indices) -> float:
    """Dataset F from each image's counts at its own threshold index."""
    rows = counts[np.arange(len(counts)), np.asarray(indices)]
    return metrics.scores_at(rows[:, None], 0)["f1"]


def rules(maps: list[np.ndarray], stored: float) -> dict[str, list[int]]:
    """Rule name -> one threshold index per image."""
    hists = [np.bincount(m.ravel(), minlength=256) for m in maps]
    folder = np.sum(hists, axis=0)
    share_above = np.cumsum(folder[::-1])[::-1] / folder.sum()   # share of pixels at level >= k
    n = len(maps)
    found = {"stored threshold": [grid_index(stored)] * n, "fixed 0.5": [grid_index(.5)] * n,
             "folder Otsu on logits": [grid_index(LEVELS[otsu_level(folder, LOGITS)])] * n,
             "image Otsu on logits": [grid_index(LEVELS[otsu_level(h, LOGITS)]) for h in hists],
             "image half its max": [grid_index(m.max() / 255 / 2) for m in maps]}
    for q in (.02, .04, .06):
        level = int(np.argmax(share_above <= q))
        found[f"folder top {q:.0%} (a prior)"] = [grid_index(LEVELS[max(level - 1, 0)])] * n
    return found


def labelled_threshold_losses(counts: np.ndarray, k: int, draws: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per draw of k images: the threshold best on them, and what it loses on the other images
    against their own best threshold (ODS F of the rest minus F of the rest at it)."""
    rng = np.random.default_rng(seed)
    thresholds, losses = [], []
    for _ in range(draws):
        labelled = np.zeros(len(counts), bool)
        labelled[rng.choice(len(counts), size=k, replace=False)] = True
        chosen = metrics.threshold_index(metrics.best_mean_threshold([metrics.f1_curve(counts[labelled])]))
        rest = metrics.f1_curve(counts[~labelled])
        thresholds.append(metrics.DEFAULT_THRESHOLDS[chosen])
        losses.append(rest.max() - rest[chosen])
    return np.array(thresholds), np.array(losses)


def crack_free_tiles(maps: list[np.ndarray], masks: list[np.ndarray], size: int = 64) -> list[np.ndarray]:
    """The map's size x size tiles with no crack pixel within 8 px: stand-ins for crack-free photos."""
    tiles = []
    for prob, mask in zip(maps, masks, strict=True):
        near = cv2.dilate(mask.astype(np.uint8), metrics.disk(8))
        for y in range(0, prob.shape[0] - size + 1, size):
            for x in range(0, prob.shape[1] - size + 1, size):
                if not near[y:y + size, x:x + size].any():
                    tiles.append(prob[y:y + size, x:x + size])
    return tiles


def marked_share(tiles: list[np.ndarray], indices: list[int]) -> float:
    """Share of the pixels of crack-free tiles that a rule marks as crack."""
    marked = sum(int((t > metrics.DEFAULT_THRESHOLDS[k] * 255).sum()) for t, k in zip(tiles, indices, strict=True))
    return marked / sum(t.size for t in tiles)


RECORD = ROOT / "benchmarks" / "results" / "folder_thresholds.jsonl"
SOURCES = {"DEEPCRACK": "DEEPCRACK_TEST", "CFD": "CFD", "CRACKMAP": "CRACKMAP", "MASONRY": "MASONRY"}
RULE_LABELS = {"stored threshold": "the stored threshold (today)", "fixed 0.5": "a fixed 0.5",
               "image half its max": "half of each image's largest probability",
               "folder Otsu on logits": "Otsu's split of the folder's logits",
               "image Otsu on logits": "Otsu's split of each image's logits",
               "folder top 4% (a prior)": "the folder's top 4 % of pixels (needs the crack share)",
               "folder top 2% (a prior)": "the folder's top 2 % of pixels"}


def measure_run(name: str, test: str, data_dir: str) -> dict:
    """Every rule and every number of labelled photos on one run's saved maps of one test set."""
    maps_dir = ROOT / "models" / name / "eval" / test
    try:
        samples = scan_dataset(Path(data_dir), test)[0]
    except DatasetError as err:
        sys.exit(f"error: {err}")
    paths = [maps_dir / f"{s.stem}_prob.png" for s in samples]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        sys.exit(f"no map {missing[0]} ({len(missing)} missing): run evaluate.py --name {name} "
                 f"--test {test} --tolerance 2 --save-images first")
    maps = [cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in paths]
    masks = [read_mask(s.mask) for s in samples]
    counts = np.stack([metrics.image_counts(m, g, tolerance=2) for m, g in zip(maps, masks, strict=True)])
    stored = json.loads((ROOT / "models" / name / "config.json").read_text())["threshold"]
    ods = float(metrics.f1_curve(counts).max())
    tiles = crack_free_tiles(maps, masks)
    on_tiles = rules(tiles, stored) if tiles else {}
    found = {}
    for rule, indices in rules(maps, stored).items():
        f = f1_at(counts, indices)
        found[rule] = {"threshold": float(np.median(metrics.DEFAULT_THRESHOLDS[indices])), "f1": f, "loss": ods - f,
                       "crack_free_marked_pct": 100 * marked_share(tiles, on_tiles[rule]) if tiles else None}
    labelled = {}
    for k in (1, 5, 20):
        if k < len(counts):
            chosen, losses = labelled_threshold_losses(counts, k, draws=LABELLED_DRAWS)
            labelled[str(k)] = {"draws": LABELLED_DRAWS, "threshold": float(np.median(chosen)),
                                "mean_loss": float(losses.mean()), "worst_loss": float(losses.max())}
    return {"experiment": f"folder_{name}_{test}", "run": name, "test": test, "tolerance": 2, "images": len(maps),
            "ods_f1": ods, "crack_free_tiles": len(tiles), "rules": found, "labelled": labelled}


def print_run(line: dict) -> None:
    print(f"{line['run']} on {line['test']}, {line['images']} images, 2 px; ODS F {line['ods_f1']:.3f} "
          "(best threshold, needs labels)")
    print(f"| rule | median threshold | F | ODS F - F | crack-free 64 px tiles ({line['crack_free_tiles']}): "
          "pixels marked |")
    print("|---|---|---|---|---|")
    for rule, r in line["rules"].items():
        marked = "-" if r["crack_free_marked_pct"] is None else f"{r['crack_free_marked_pct']:.2f}%"
        print(f"| {rule} | {r['threshold']:.2f} | {r['f1']:.3f} | {r['loss']:.3f} | {marked} |")


def render_tables(record: Path) -> str:
    """The two tables across the four held-out sources, from the record."""
    lines = {line["test"]: line for line in map(json.loads, record.read_text().splitlines()) if line}
    cols = [lines.get(test) for test in SOURCES.values()]
    header = "| " + " | ".join(SOURCES) + " |"
    rows = [f"| rule {header} mean loss | crack-free pixels marked ({' / '.join(SOURCES)}) |",
            "|---" * (len(SOURCES) + 3) + "|"]
    for rule, label in RULE_LABELS.items():
        losses = [c["rules"][rule]["loss"] if c else None for c in cols]
        marked = [c["rules"][rule]["crack_free_marked_pct"] if c else None for c in cols]
        share = " / ".join(f"{m:.2f}" for m in marked) + " %" if all(m is not None for m in marked) else \
            f"{rule.split()[2]} by construction"
        mean = f"{sum(losses) / len(losses):.3f}" if all(x is not None for x in losses) else "-"
        rows.append(f"| {label} | " + " | ".join("-" if x is None else f"{x:.3f}" for x in losses)
                    + f" | {mean} | {share} |")
    rows += ["", f"| labelled photos {header}", "|---" * (len(SOURCES) + 1) + "|",
             "| none (the stored threshold) | " + " | ".join(f"{c['rules']['stored threshold']['loss']:.3f}"
                                                         if c else "-" for c in cols) + " |"]
    for k in ("1", "5", "20"):
        cells = [f"{c['labelled'][k]['mean_loss']:.3f} ({c['labelled'][k]['worst_loss']:.3f})"
                 if c and k in c["labelled"] else "-" for c in cols]
        rows.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", help="the run whose saved maps are read (required unless --table-only)")
    p.add_argument("--test", help="the held-out dataset those maps are of")
    p.add_argument("--data-dir", default=DATA_DIR)
    p.add_argument("--record", action="store_true", help=f"append the result as one line to {RECORD.name}")
    p.add_argument("--table-only", action="store_true", help="render the tables across sources from the record")
    args = p.parse_args()
    if args.table_only:
        return print(render_tables(RECORD))
    if not (args.name and args.test):
        p.error("--name and --test are required (or --table-only)")
    line = measure_run(args.name, args.test, args.data_dir)
    print_run(line)
    if args.record:
        with open(RECORD, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
