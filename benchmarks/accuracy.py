"""The single-source real-data experiments: train on DEEPCRACK_TRAIN with a wall-clock budget,
score DEEPCRACK_TEST and CFD, one line per finished experiment in benchmarks/results/accuracy.jsonl.

    python benchmarks/accuracy.py --list                        # every experiment's exact commands
    python benchmarks/accuracy.py --only unet unet_seed1        # run (skips what accuracy.jsonl has)
    python benchmarks/accuracy.py --table-only                  # the README table, from accuracy.jsonl
    python benchmarks/accuracy.py --figures 11269-4 11215-8     # README panels from the main run

Budgets are wall-clock (--max-minutes; --epochs is only a cap): the schedule spans the budget.
Lines marked "before_fixes" were measured before the review fixes of issue 11 (photometric
changes on uint8, schedules that anneal within the budget, one inference path) and imported
from the README of that time.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runner import (MODELS, RESULTS, ROOT, add_common_args, cell, eval_results, read_record, run_all,  # noqa: E402
                    training_summary)

SOURCE, TESTS = "DEEPCRACK_TRAIN", ["DEEPCRACK_TEST", "CFD"]
RECIPE = ["--crop", "256", "--batch-size", "4", "--lr", "1e-3", "--scheduler", "CosineAnnealingLR",
          "--photometric", "--scale-aug", "--cache"]
REFERENCE = ["--crop", "256", "--batch-size", "4", "--cache"]   # METHOD.md defaults otherwise
EPOCH_CAP = "1000"   # the budget decides

# name -> (minutes, training dataset, train.py arguments, test sets)
EXPERIMENTS = {
    "main": (60, SOURCE, RECIPE, TESTS),
    "unet": (12, SOURCE, RECIPE, TESTS),
    "unet_seed1": (12, SOURCE, RECIPE + ["--seed", "1"], TESTS),
    "unet_ema": (12, SOURCE, RECIPE + ["--ema", "0.995"], TESTS),
    "unet_crop384": (12, SOURCE, RECIPE + ["--crop", "384"], TESTS),
    "attention": (12, SOURCE, RECIPE + ["--arch", "AttentionUNet"], TESTS),
    "nested": (12, SOURCE, RECIPE + ["--arch", "NestedUNet", "--deep-supervision"], TESTS),
    "normalize": (12, SOURCE, RECIPE + ["--no-minmax", "--normalize", "0.5", "0.135"], TESTS),
    "clahe": (12, SOURCE, RECIPE + ["--clahe"], TESTS),
    "bce": (12, SOURCE, RECIPE + ["--loss", "BCE"], TESTS),
    "focal": (12, SOURCE, RECIPE + ["--loss", "Focal"], TESTS),
    "reference": (55, SOURCE, REFERENCE, TESTS),
    "cfd": (30, "CFD", RECIPE, ["DEEPCRACK_TEST"]),
}
# name -> finished experiments whose best checkpoints evaluate.py averages (no training of its own)
ENSEMBLES = {
    "ensemble_2seeds": ["unet", "unet_seed1"],
    "ensemble_4x12min": ["unet", "unet_seed1", "bce", "unet_crop384"],
}
PREFIX = "dc_"


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, RESULTS / "accuracy.jsonl", [*EXPERIMENTS, *ENSEMBLES])
    p.add_argument("--figures", nargs="+", metavar="STEM",
                   help="shrink the main run's DEEPCRACK_TEST panels (evaluate.py --save-images) into docs/")
    return p.parse_args()


def run_name(name: str) -> str:
    """An experiment's run, or an ensemble's RUN1+RUN2+... (evaluate.py's syntax and results folder)."""
    return "+".join(PREFIX + member for member in ENSEMBLES.get(name, [name]))


def commands(name: str, args) -> list[list[str]]:
    run = run_name(name)
    tests = EXPERIMENTS[name][3] if name in EXPERIMENTS else TESTS
    evaluate = [sys.executable, "evaluate.py", "--name", run, "--test", *tests, "--data-dir", args.data_dir,
                "--tolerance", "0", "2"]
    if name in ENSEMBLES:
        return [evaluate]
    minutes, dataset, extra, _ = EXPERIMENTS[name]
    train = [sys.executable, "train.py", "--dataset", dataset, "--data-dir", args.data_dir, "--name", run,
             "--overwrite", "--epochs", EPOCH_CAP, "--max-minutes", str(minutes), *extra]
    return [train, evaluate]


def summarize(name: str) -> dict:
    training = {} if name in ENSEMBLES else training_summary(run_name(name))
    budget = sum(EXPERIMENTS[m][0] for m in ENSEMBLES[name]) if name in ENSEMBLES else EXPERIMENTS[name][0]
    dataset = EXPERIMENTS[ENSEMBLES[name][0] if name in ENSEMBLES else name][1]
    return {"trained_on": dataset, "budget_minutes": budget, "training": training,
            "metrics": eval_results(run_name(name))}


def table_row(name: str, line: dict) -> str:
    t = line.get("training") or {}
    budget = f"{line['budget_minutes']} min" + (f" ({len(ENSEMBLES[name])} runs)" if name in ENSEMBLES else "")
    loss = t.get("final_val_loss")
    cells = [name + (" (before fixes)" if line.get("before_fixes") else ""), line["trained_on"], budget,
             str(t.get("epochs", "-")), str(t.get("best_epoch", "-")), f"{loss:.3f}" if loss is not None else "-"]
    for test in TESTS:
        metrics = line["metrics"].get(test)
        cells += [cell(metrics, 0, threshold=True), cell(metrics, 2)]
    return "| " + " | ".join(cells) + " |"


def render_table(args) -> str:
    """Every experiment's latest line; an experiment rerun after the fixes also shows its earlier line."""
    lines = [__import__("json").loads(raw) for raw in args.record.read_text().splitlines() if raw.strip()]
    latest = read_record(args.record)
    rows = ["| experiment | trained on | budget | epochs | best epoch | final val loss | "
            "DEEPCRACK_TEST 0 px: ODS (t) / OIS / AP | 2 px: ODS / OIS / AP | CFD 0 px: ODS (t) / OIS / AP | "
            "2 px: ODS / OIS / AP |", "|---" * 10 + "|"]
    for name in [*EXPERIMENTS, *ENSEMBLES]:
        if name not in latest:
            continue
        rows.append(table_row(name, latest[name]))
        earlier = [line for line in lines if line["experiment"] == name and line is not latest[name]
                   and line.get("before_fixes") and not latest[name].get("before_fixes")]
        rows += [table_row(name, line) for line in earlier[-1:]]
    return "\n".join(rows)


def write_figures(stems: list[str], width: int = 1200) -> None:
    """Small JPEGs for the README (the repository allows 300 KB of figures in all)."""
    import cv2
    panels = MODELS / run_name("main") / "eval" / "DEEPCRACK_TEST"
    for stem in stems:
        panel = cv2.imread(str(panels / f"{stem}_panel.jpg"))
        small = cv2.resize(panel, (width, round(panel.shape[0] * width / panel.shape[1])), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(ROOT / "docs" / f"panel_{stem}.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, 80])


def main() -> None:
    args = get_args()
    if args.figures:
        write_figures(args.figures)
        return
    if not args.table_only:
        run_all({name: commands(name, args) for name in [*EXPERIMENTS, *ENSEMBLES]}, args, summarize)
    if not args.list:
        print(render_table(args))


if __name__ == "__main__":
    main()
