"""The real-data experiments: train with a wall-clock budget, evaluate, write a markdown table.

    python benchmarks/accuracy.py --list
    python benchmarks/accuracy.py --only main                   # 60 min on a 2-core CPU
    python benchmarks/accuracy.py --only unet attention nested  # the reference's comparisons, 12 min each
    python benchmarks/accuracy.py --only ensemble_4x12min       # evaluate.py --name A+B+C+D (finished runs)
    python benchmarks/accuracy.py --table-only                  # re-read finished runs
    python benchmarks/accuracy.py --figures 11125-1 11215-5 11290  # README panels from the main run

Runs go through train.py and evaluate.py exactly as a user runs them (from the repository
root, data in --data-dir). Never run two at once: budgets are wall-clock.
"""
import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE, TESTS = "DEEPCRACK_TRAIN", ["DEEPCRACK_TEST", "CFD"]
RECIPE = ["--crop", "256", "--batch-size", "4", "--lr", "1e-3", "--scheduler", "CosineAnnealingLR",
          "--photometric", "--scale-aug", "--cache"]
REFERENCE = ["--crop", "256", "--batch-size", "4", "--cache"]   # METHOD.md defaults otherwise

# name -> (minutes, epochs for the cosine schedule, training dataset, train.py arguments, test sets)
EXPERIMENTS = {
    "main": (60, 40, SOURCE, RECIPE, TESTS),
    "unet": (12, 8, SOURCE, RECIPE, TESTS),
    "unet_seed1": (12, 8, SOURCE, RECIPE + ["--seed", "1"], TESTS),
    "unet_ema": (12, 8, SOURCE, RECIPE + ["--ema", "0.995"], TESTS),
    "unet_crop384": (12, 4, SOURCE, RECIPE + ["--crop", "384"], TESTS),   # as many pixels as 8 epochs of 256
    "attention": (12, 8, SOURCE, RECIPE + ["--arch", "AttentionUNet"], TESTS),
    "nested": (12, 8, SOURCE, RECIPE + ["--arch", "NestedUNet", "--deep-supervision"], TESTS),
    "normalize": (12, 8, SOURCE, RECIPE + ["--no-minmax", "--normalize", "0.5", "0.135"], TESTS),
    "clahe": (12, 8, SOURCE, RECIPE + ["--clahe"], TESTS),
    "bce": (12, 8, SOURCE, RECIPE + ["--loss", "BCE"], TESTS),
    "focal": (12, 8, SOURCE, RECIPE + ["--loss", "Focal"], TESTS),
    "reference": (55, 100, SOURCE, REFERENCE, TESTS),
    "cfd": (30, 40, "CFD", RECIPE, ["DEEPCRACK_TEST"]),
}
# name -> finished experiments whose best checkpoints evaluate.py averages (no training of its own)
ENSEMBLES = {
    "ensemble_2seeds": ["unet", "unet_seed1"],
    "ensemble_4x12min": ["unet", "unet_seed1", "bce", "unet_crop384"],
}


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=[*EXPERIMENTS, *ENSEMBLES],
                   help="experiments to run (default: all)")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--prefix", default="acc_", help="run names are PREFIX + experiment")
    p.add_argument("--tta", action="store_true", help="evaluate with 8-fold test-time augmentation")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--list", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "accuracy.md")
    p.add_argument("--figures", nargs="+", metavar="STEM",
                   help="shrink the main run's DEEPCRACK_TEST panels (evaluate.py --save-images) into docs/")
    return p.parse_args()


def run_name(name: str, args) -> str:
    """An experiment's run, or an ensemble's RUN1+RUN2+... (evaluate.py's syntax and results folder)."""
    return "+".join(args.prefix + member for member in ENSEMBLES.get(name, [name]))


def command(name: str, args) -> list[list[str]]:
    run = run_name(name, args)
    evaluate = [sys.executable, "evaluate.py", "--name", run, "--test", *TESTS, "--tolerance", "0", "2",
                *(["--tta"] if args.tta else [])]
    if name in ENSEMBLES:
        return [evaluate]
    minutes, epochs, dataset, extra, tests = EXPERIMENTS[name]
    train = [sys.executable, "train.py", "--dataset", dataset, "--data-dir", args.data_dir, "--name", run,
             "--epochs", str(epochs), "--max-minutes", str(minutes), *extra]
    evaluate[evaluate.index("--test") + 1:evaluate.index("--tolerance")] = tests
    return [train, evaluate]


def scores(metrics_path: Path) -> list[str]:
    """Two table cells: ODS (t) / OIS / AP strict, and ODS / OIS / AP at 2 px."""
    if not metrics_path.exists():
        return ["-", "-"]
    results = {r["tolerance"]: r for r in json.loads(metrics_path.read_text())["results"]}
    strict, loose = results[0], results[2]
    return [f"{strict['ods']['f1']:.3f} ({strict['ods']['threshold']:.2f}) / {strict['ois']['f1']:.3f} / "
            f"{strict['ap']:.3f}", f"{loose['ods']['f1']:.3f} / {loose['ois']['f1']:.3f} / {loose['ap']:.3f}"]


def training_cells(name: str, args) -> list[str] | None:
    """trained on, budget, epochs, best epoch, final validation loss (None: not run yet)."""
    if name in ENSEMBLES:
        minutes = sum(EXPERIMENTS[member][0] for member in ENSEMBLES[name])
        return [EXPERIMENTS[ENSEMBLES[name][0]][2], f"{minutes} min ({len(ENSEMBLES[name])} runs)", "-", "-", "-"]
    run_dir = ROOT / "models" / (args.prefix + name)
    if not (run_dir / "log.csv").exists():
        return None
    with open(run_dir / "log.csv") as f:
        log = list(csv.DictReader(f))
    config = json.loads((run_dir / "config.json").read_text())
    minutes, _, dataset = EXPERIMENTS[name][:3]
    return [dataset, f"{minutes} min", str(len(log)), str(config.get("best_epoch", "-")),
            f"{float(log[-1]['val_loss']):.3f}"]


def row(name: str, args) -> str | None:
    run_dir = ROOT / "models" / run_name(name, args)
    training = training_cells(name, args)
    if training is None or not run_dir.exists():
        return None
    cells = [name, *training]
    for test in TESTS:
        cells += scores(run_dir / "eval" / (f"{test}_tta" if args.tta else test) / "metrics.json")
    return "| " + " | ".join(cells) + " |"


def write_figures(stems: list[str], args, width: int = 1200) -> None:
    """Small JPEGs for the README (the repository allows 300 KB of figures in all)."""
    import cv2
    panels = ROOT / "models" / (args.prefix + "main") / "eval" / "DEEPCRACK_TEST"
    for stem in stems:
        panel = cv2.imread(str(panels / f"{stem}_panel.jpg"))
        small = cv2.resize(panel, (width, round(panel.shape[0] * width / panel.shape[1])), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(ROOT / "docs" / f"panel_{stem}.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, 80])


def main() -> None:
    args = get_args()
    if args.figures:
        write_figures(args.figures, args)
        return
    names = args.only or [*EXPERIMENTS, *ENSEMBLES]
    if args.list:
        for name in names:
            print(name, *(" ".join(["python", *cmd[1:]]) for cmd in command(name, args)), sep="\n  ")
        return
    if not args.table_only:
        for name in names:
            for cmd in command(name, args):
                print("$", " ".join(cmd), flush=True)
                subprocess.run(cmd, cwd=ROOT, check=True)
    lines = ["| experiment | trained on | budget | epochs | best epoch | final val loss | "
             "DEEPCRACK_TEST 0 px: ODS (t) / OIS / AP | 2 px: ODS / OIS / AP | CFD 0 px: ODS (t) / OIS / AP | "
             "2 px: ODS / OIS / AP |", "|---" * 10 + "|"]
    lines += [r for r in (row(name, args) for name in names) if r]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
