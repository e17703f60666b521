"""Widths that match the labels: every predicted crack of every source matched to the labelled crack
under it, each source scored by a model that never trained on its group, under the auto scale policy
(predict.py's default for the bundle). One line per source in benchmarks/results/widths.jsonl, the
per-crack arrays beside it (widths/*.json.gz), the tables of docs/widths.md from those alone.

    python benchmarks/widths.py --list                  # every source's exact command
    python benchmarks/widths.py --commit                # measure what the record lacks, committing each line
    python benchmarks/widths.py --table-only            # the tables, the estimators fitted and judged

A predicted crack is predict.py's: an 8-connected piece of the thresholded map of at least MIN_AREA
pixels, its length and mean width from measure.crack_shape (the width classes read the mean). Its
label: the labelled centre line (skeleton) within RADIUS px of the piece, with the label's own width
there (measure.crack_widths on the label mask) and that stretch's length (as measure.crack_shape's:
half the width added at each end of the label's centre line); a piece with fewer than
MIN_MATCH such pixels is unmatched (a false crack, counted apart). Error of a crack: |log(predicted /
label width)|; a source's error: its cracks' median; the metric: the median over sources, CFD (thin
lines drawn whatever the crack's width) apart.

Width estimates beside the mask's, from the same map: `mass` (the probability summed within HALO px
of the piece, per unit of its length: a blurred map keeps its mass) and the mean width of the map
thresholded at each of WIDTH_THRESHOLDS within the piece's neighbourhood. Each family is fitted on
the old sources (FIT) and judged on the new ones (JUDGE); one is adopted only if it halves the
metric there.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataset import read_sample, scan_dataset  # noqa: E402
from measure import crack_length, crack_shape, crack_widths, end_counts, skeletonize  # noqa: E402
import sourcegroups  # noqa: E402
from runner import GROUP_TEST, MODELS, RESULTS, TEST, add_common_args, read_record, run_all  # noqa: E402
from zoomrecord import CHOSEN, load_arrays, load_unseen, save_arrays  # noqa: E402

RECORD = RESULTS / "widths.jsonl"
MIN_AREA = 20            # px: predict.py's --min-area default
RADIUS = 3               # px: a label centre line this close to a predicted piece is its label
MIN_MATCH = 5            # label centre-line pixels a matched crack needs
HALO = 3                 # px around a piece whose probability counts in its mass
WIDTH_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.1, 0.91, 0.1))
FIT = ["DEEPCRACK_TEST", "CRACKMAP", "MASONRY"]                  # the old sources, CFD apart
JUDGE = ["UAVCRACKX4", "UAVCRACKX8", "UAVCRACKX16", "GAPS384", "AIGLERN", "SHADOWCRACK"]
APART = ["CFD"]
FIELDS = ("photo", "label_width", "label_length", "mask_width", "mask_median_width", "length", "mass_width",
          *(f"width_at_{t:g}" for t in WIDTH_THRESHOLDS))


def unseen_model(source: str) -> str:
    """The model that never trained on `source`'s group: the old four's leave-one-out runs at equal steps,
    for the six new sources the bundle's recipe without the source's group (benchmarks/framezoom.py
    trains both). Lines before the ten-source bundle scored the new sources with the four-source bundle,
    which had never seen them; the bundle has since learned them."""
    old = next((f"zoom_{CHOSEN}_4000steps_{s}" for s in TEST if TEST[s] == source), None)
    return old or f"{sourcegroups.PREFIX}{sourcegroups.CHOSEN}_{next(g for g, t in GROUP_TEST.items() if source in t)}"


def experiments() -> dict[str, dict]:
    return {f"widths_{s}": {"source": s, "model": unseen_model(s)} for s in FIT + APART + JUDGE}


EXPERIMENTS = experiments()


def commands(args, name: str) -> list[list[str]]:
    e = EXPERIMENTS[name]
    return [[sys.executable, "benchmarks/widths.py", "--measure", e["model"], "--source", e["source"],
             "--data-dir", args.data_dir, "--out", str(Path("models") / name)]]


# ---------------------------------------------------------------- measuring one source

def neighbourhood(piece: np.ndarray, radius: int) -> np.ndarray:
    return cv2.dilate(piece.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)) > 0


def mean_width_within(mask: np.ndarray, region: np.ndarray) -> float:
    """The mean width along the centre line of `mask` inside `region` (nan where none is left)."""
    inside = mask & region
    skeleton = skeletonize(inside)
    return float(crack_widths(inside, skeleton).mean()) if skeleton.any() else float("nan")


def photo_cracks(prob: np.ndarray, threshold: float, label: np.ndarray) -> list[tuple]:
    """One photo's predicted cracks, each (label width, label length, mask mean and median width, length,
    mass width, width at each WIDTH_THRESHOLDS); label fields nan where the crack matches no label."""
    label = label.astype(bool)
    label_skeleton = skeletonize(label)
    label_width = np.zeros(label.shape, np.float32)
    label_width[label_skeleton] = crack_widths(label, label_skeleton)
    label_ends = end_counts(label_skeleton) * label_width / 2   # measure.crack_shape's length adds these
    count, pieces, stats, _ = cv2.connectedComponentsWithStats((prob > threshold).astype(np.uint8), connectivity=8)
    found = []
    for i in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < MIN_AREA:
            continue
        m = RADIUS + HALO   # the crop around the piece holds both neighbourhoods
        window = (slice(max(y - m, 0), y + h + m), slice(max(x - m, 0), x + w + m))
        piece = pieces[window] == i
        shape = crack_shape(piece)
        near, halo = neighbourhood(piece, RADIUS), neighbourhood(piece, HALO)
        centre = label_skeleton[window] & near
        matched = centre.sum() >= MIN_MATCH
        found.append((float(label_width[window][centre].mean()) if matched else float("nan"),
                      crack_length(centre) + float(label_ends[window][centre].sum()) if matched else float("nan"),
                      shape["mean_width_px"], shape["median_width_px"], shape["length_px"],
                      float(prob[window][halo].sum()) / shape["length_px"],
                      *(mean_width_within(prob[window] > t, near) for t in WIDTH_THRESHOLDS)))
    return found


def measure_source(run: str, source: str, data_dir: Path, out: Path) -> dict:
    """Every photo of `source` predicted under auto by `run` (refused if it trained on the source's group)."""
    predictor = load_unseen(run, source).at_scale("auto")
    rows = []
    samples = scan_dataset(data_dir, source)[0]
    for n, sample in enumerate(samples):
        image, mask, _ = read_sample(sample)
        prediction = predictor.predict(image, str(sample.image))
        rows += [(n, *crack) for crack in photo_cracks(prediction.prob, prediction.threshold, mask)]
    arrays = {key: np.array([r[k] for r in rows], np.float64) for k, key in enumerate(FIELDS)}
    out.mkdir(parents=True, exist_ok=True)
    save_arrays(out / "arrays.json.gz", arrays)
    info = {"source": source, "model": run, "policy": "auto", "threshold": predictor.threshold,
            "photos": len(samples), "cracks": len(rows)}
    (out / "info.json").write_text(json.dumps(info))
    return info


def summarize(name: str, record: Path) -> dict:
    out = MODELS / name
    line = {"attachments": [f"widths/{name}.json.gz"], **json.loads((out / "info.json").read_text())}
    (record.parent / "widths").mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "arrays.json.gz", record.parent / line["attachments"][0])
    return line


# ---------------------------------------------------------------- errors, the estimators fitted and judged

def matched(arrays: dict) -> dict:
    keep = np.isfinite(arrays["label_width"]) & (arrays["label_width"] > 0)
    return {k: v[keep] for k, v in arrays.items()}


def source_error(estimate: np.ndarray, label: np.ndarray) -> float:
    """The median |log(estimate / label)| over a source's matched cracks with an estimate."""
    ok = np.isfinite(estimate) & (estimate > 0)
    return float(np.median(np.abs(np.log(estimate[ok] / label[ok])))) if ok.any() else float("nan")


def metric(per_source: dict[str, dict], sources: list[str], estimate) -> float:
    """The median over `sources` of each one's error under estimate(arrays) -> widths."""
    return float(np.median([source_error(estimate(per_source[s]), per_source[s]["label_width"]) for s in sources]))


def candidates() -> dict[str, callable]:
    """Every width estimate the fit chooses among: the mask's, each width threshold, mass scaled a * m**b."""
    found = {"mask": lambda a: a["mask_width"]}
    found.update({f"threshold {t:g}": (lambda a, k=f"width_at_{t:g}": a[k]) for t in WIDTH_THRESHOLDS})
    for b in np.round(np.arange(0.5, 1.51, 0.1), 2):
        for log_a in np.round(np.arange(-1.0, 1.01, 0.1), 2):
            c = float(np.exp(log_a))
            found[f"mass {c:.2f} * m^{b:g}"] = (lambda a, c=c, e=b: c * a["mass_width"] ** e)
    return found


def load_sources(record: Path) -> dict[str, dict]:
    return {line["source"]: matched(load_arrays(record, line)) for line in read_record(record).values()}


def render_tables(record: Path) -> str:
    """Part 1: per source, the mask's width error and bias beside the chosen estimate's, and the length
    error; part 2: the metric before and after, and the verdict."""
    per_source, done = load_sources(record), {line["source"]: line for line in read_record(record).values()}
    found = candidates()
    ready = all(s in per_source for s in FIT + JUDGE)
    fitted = {name: metric(per_source, FIT, f) for name, f in found.items()} if ready else {"mask": 0.0}
    best = min(fitted, key=fitted.get)
    rows = ["| source | model | cracks matched | label width px (median) | mask width: error / bias | "
            f"{best}: error / bias | widths' correlation | length error |", "|---" * 8 + "|"]
    for s in [s for s in FIT + APART + JUDGE if s in per_source]:
        a = per_source[s]
        label = a["label_width"]
        cells = [f"{source_error(e, label):.2f} / {np.median(np.log(e[e > 0] / label[e > 0])):+.2f}"
                 for e in (found["mask"](a), found[best](a))]
        together = np.corrcoef(np.log(label), np.log(a["mask_width"]))[0, 1]
        rows.append(f"| {s} | {done[s]['model']} | {len(label)} of {done[s]['cracks']} | {np.median(label):.1f} | "
                    + " | ".join(cells) + f" | {together:.2f} | {source_error(a['length'], a['label_length']):.2f} |")
    if not ready:
        return "\n".join(rows) + "\n\nNot every source is measured yet: no estimate is fitted."
    old, new = metric(per_source, FIT, found["mask"]), metric(per_source, JUDGE, found["mask"])
    judged = metric(per_source, JUDGE, found[best])
    on_new = {name: metric(per_source, JUDGE, f) for name, f in found.items()}
    ceiling = min(on_new, key=on_new.get)
    verdict = "adopted" if judged <= new / 2 else "not adopted (it must halve the metric on the new sources)"
    return ("\n".join(rows) + "\n\nError: median |log(predicted / label width)| per source; bias: the median "
            f"log ratio (+0.41 reads 1.5x wide). Metric (median over sources): mask widths {old:.2f} "
            f"on the old sources (CFD apart), {new:.2f} on the new; the best estimate fitted on the old "
            f"({best}: {fitted[best]:.2f}) scores {judged:.2f} on the new: {verdict}. Fitted on the new sources "
            f"themselves, the best of them ({ceiling}) would reach {on_new[ceiling]:.2f}. Widths' correlation: "
            "of log predicted and log label width over a source's matched cracks.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, RECORD, list(EXPERIMENTS))
    p.add_argument("--measure", metavar="RUN", help="measure one source's cracks with RUN (what an experiment runs)")
    p.add_argument("--source", help="with --measure: the source")
    p.add_argument("--out", type=Path, help="with --measure: where the arrays go")
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure_source(args.measure, args.source, Path(args.data_dir), args.out)))
        return
    if not args.table_only:
        run_all({name: commands(args, name) for name in EXPERIMENTS}, args, lambda name: summarize(name, args.record))
    if not args.list:
        print(render_tables(args.record))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
