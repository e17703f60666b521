"""Which rule should choose a run's threshold so that it transfers to a source the run never saw?

    python benchmarks/threshold_rules.py      # from the jsonl records alone, no training

Each line of generalization.jsonl and architecture.jsonl keeps the validation F curves (2 px,
t = 0.00 ... 1.00) of every training dataset at the best epoch, and the F curve of every scored
held-out source. A rule maps the validation curves to one threshold; what it is worth is the
held-out F at that threshold, against the held-out ODS F (the best any threshold could do, which
needs the held-out labels).
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from runner import RESULTS, read_record, score  # noqa: E402

import metrics  # noqa: E402

RECORDS = ("generalization.jsonl", "architecture.jsonl")
GRID = metrics.DEFAULT_THRESHOLDS


def plateau_centre(curve: np.ndarray, within: float = 0.01) -> int:
    """The middle of the widest run of thresholds whose F is within `within` of the best."""
    good = curve >= curve.max() - within
    best, start = (0, 0), None
    for i, ok in enumerate([*good, False]):
        if ok and start is None:
            start = i
        elif not ok and start is not None:
            best = max(best, (i - start, start))
            start = None
    length, first = best
    return first + (length - 1) // 2


RULES = {
    "mean (today)": lambda curves: int(np.flatnonzero(GRID == metrics.best_mean_threshold(curves))[0]),
    "worst source": lambda curves: int(np.argmax(np.min(curves, axis=0))),
    "median of bests": lambda curves: int(np.median([np.argmax(c) for c in curves])),
    "mean, plateau centre": lambda curves: plateau_centre(np.mean(curves, axis=0)),
    "mean, plateau centre 0.02": lambda curves: plateau_centre(np.mean(curves, axis=0), 0.02),
    "fixed 0.50": lambda curves: 50,   # no rule at all: the sigmoid's midpoint
}


def held_out_rows(record: Path):
    """(experiment, held-out test, validation curves, held-out 2 px F curve) of every usable line."""
    for name, line in read_record(record).items():
        curves = (line.get("training") or {}).get("val_f1_curves")
        if not curves:
            continue
        for test, m in line["metrics"].items():
            if test in line["trained_on"] or test == "DEEPCRACK_TEST" and "DEEPCRACK_TRAIN" in line["trained_on"]:
                continue
            r = score(m, 2)
            if r and r.get("f1_curve"):
                yield name, test, np.array(list(curves.values())), np.array(r["f1_curve"])


def main() -> None:
    rows = [row for record in RECORDS for row in held_out_rows(RESULTS / record)]
    if not rows:
        sys.exit(f"no line of {' or '.join(RECORDS)} has validation curves and a held-out source yet")
    print("| experiment | held out | ODS F | " + " | ".join(f"{rule}: t / F" for rule in RULES) + " |")
    print("|---" * (len(RULES) + 3) + "|")
    gaps = {rule: [] for rule in RULES}
    in_domain = {rule: [] for rule in RULES}   # what the rule costs on the training sources' validation
    for name, test, curves, held in rows:
        cells, mean_curve = [], curves.mean(axis=0)
        for rule, choose in RULES.items():
            k = choose(curves)
            gaps[rule].append(held.max() - held[k])
            in_domain[rule].append(mean_curve.max() - mean_curve[k])
            cells.append(f"{GRID[k]:.2f} / {held[k]:.3f}")
        print(f"| {name} | {test} | {held.max():.3f} | " + " | ".join(cells) + " |")
    print(f"\nODS F minus F at the rule's threshold over {len(rows)} held-out scores:")
    for rule, g in gaps.items():
        print(f"  {rule:>26}: mean {np.mean(g):.3f}, worst {np.max(g):.3f}, within 0.03: {np.sum(np.array(g) <= 0.03)}"
              f"; mean validation F lost in-domain: mean {np.mean(in_domain[rule]):.3f}, "
              f"worst {np.max(in_domain[rule]):.3f}")


if __name__ == "__main__":
    main()
