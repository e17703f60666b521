"""Cracks the model has never seen: leave-one-dataset-out training and scoring, one line per finished
experiment in benchmarks/generalization.jsonl (committed at once), the README table from that file.

    python benchmarks/generalization.py --list                   # every experiment's exact commands
    python benchmarks/generalization.py --only base_dc lodo_CFD  # run (skips what the jsonl has)
    python benchmarks/generalization.py --table-only             # the README "Generalisation" table

Sources: DEEPCRACK (trained on DEEPCRACK_TRAIN, scored on DEEPCRACK_TEST only), CFD, CRACKMAP and
MASONRY (scored on all their images when held out). lodo_S trains on the three other sources and
scores S; base_dc / base_cfd are single-source baselines with the README recipe; all4 trains on every
source. The camera_* arms (12 minutes) measure the parts of --camera-aug and the sampling policy on
two held-out sources. Each run stores its threshold (chosen on its training sources' validation
splits at 2 px); "F at t" is the F a user gets at that threshold. Never run two at once.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runner import ROOT, add_common_args, cell, eval_results, read_record, run_all, score, training_summary  # noqa: E402

TRAIN = {"DEEPCRACK": "DEEPCRACK_TRAIN", "CFD": "CFD", "CRACKMAP": "CRACKMAP", "MASONRY": "MASONRY"}
TEST = {"DEEPCRACK": "DEEPCRACK_TEST", "CFD": "CFD", "CRACKMAP": "CRACKMAP", "MASONRY": "MASONRY"}
RECIPE = ["--crop", "256", "--batch-size", "4", "--lr", "1e-3", "--scheduler", "CosineAnnealingLR",
          "--photometric", "--scale-aug", "--cache", "--epochs", "1000"]
MINUTES, ABLATION_MINUTES = 25, 12
CAMERA = ["--camera-aug"]   # every part: in the camera_* arms each group paid or stayed within the seed spread
ABLATION_SOURCES = ["CRACKMAP", "MASONRY"]
ABLATION_ARMS = {   # name -> extra train.py arguments, relative to the multi-source recipe
    "nocam": [],
    "allcam": ["--camera-aug"],
    "allcam_seed1": ["--camera-aug", "--seed", "1"],   # the seed-to-seed spread the other arms are judged by
    "thick_cfd": ["--camera-aug", "--thicken-labels", "CFD=2"],   # CFD's 3 px centre lines drawn 7 px wide
    "allcam_equal": ["--camera-aug", "--sampling", "equal"],
    "no_tone": ["--camera-aug", "blur", "noise", "jpeg", "resolution", "scale"],     # without colour, gamma, light
    "no_degrade": ["--camera-aug", "colour", "gamma", "light", "scale"],             # without blur, noise, jpeg, res.
    "no_scale": ["--camera-aug", "colour", "gamma", "light", "blur", "noise", "jpeg", "resolution"],
}


def others(source: str) -> list[str]:
    return [TRAIN[s] for s in TRAIN if s != source]


def experiment(train_sets: list[str], tests: list[str], extra: list[str], minutes: int) -> dict:
    return {"train": train_sets, "tests": tests, "extra": extra, "minutes": minutes}


def experiments() -> dict[str, dict]:
    every = list(TRAIN.values())
    found = {
        "base_dc": experiment(["DEEPCRACK_TRAIN"], [TEST[s] for s in TEST], [], MINUTES),
        "base_dc_seed1": experiment(["DEEPCRACK_TRAIN"], [TEST[s] for s in TEST], ["--seed", "1"], MINUTES),
        "base_cfd": experiment(["CFD"], ["DEEPCRACK_TEST"], [], MINUTES),
        "all4": experiment(every, ["DEEPCRACK_TEST"], CAMERA, MINUTES),
        "all4_seed1": experiment(every, ["DEEPCRACK_TEST"], CAMERA + ["--seed", "1"], MINUTES),
    }
    for source in TRAIN:
        found[f"lodo_{source}"] = experiment(others(source), [TEST[source]], CAMERA, MINUTES)
        found[f"lodo_{source}_nocam"] = experiment(others(source), [TEST[source]], [], MINUTES)
    for source in ABLATION_SOURCES:
        for arm, extra in ABLATION_ARMS.items():
            found[f"camera_{arm}_{source}"] = experiment(others(source), [TEST[source]], extra, ABLATION_MINUTES)
    return found


EXPERIMENTS = experiments()
PREFIX = "gen_"


def commands(name: str, args, e: dict | None = None, run: str | None = None) -> list[list[str]]:
    """train.py then evaluate.py of an experiment (another script's experiment `e`, run name `run`)."""
    e, run = e or EXPERIMENTS[name], run or PREFIX + name
    train = [sys.executable, "train.py", "--dataset", *e["train"], "--data-dir", args.data_dir, "--name", run,
             "--overwrite", "--max-minutes", str(e["minutes"]), *RECIPE, *e["extra"]]
    evaluate = [sys.executable, "evaluate.py", "--name", run, "--test", *e["tests"], "--data-dir", args.data_dir,
                "--tolerance", "0", "2"]
    return [train, evaluate]


def summarize(name: str, e: dict | None = None, run: str | None = None) -> dict:
    e, run = e or EXPERIMENTS[name], run or PREFIX + name
    return {"trained_on": e["train"], "budget_minutes": e["minutes"], "extra": e["extra"],
            "training": training_summary(run), "metrics": eval_results(run)}


def gap(metrics: dict | None) -> str:
    """ODS F minus F at the run's threshold, at 2 px."""
    r = score(metrics, 2)
    return f"{r['ods']['f1'] - r['at_run_threshold']['f1']:.3f}" if r and r.get("at_run_threshold") else "-"


def render_ablation(record: Path) -> str:
    """The camera_* arms: one row per arm, 2 px ODS F / F at the run's threshold per held-out source."""
    done = read_record(record)
    rows = ["| arm | extra train.py options | " + " | ".join(f"{s}: ODS / F at t" for s in ABLATION_SOURCES)
            + " | mean ODS | mean F at t |", "|---" * (len(ABLATION_SOURCES) + 4) + "|"]
    for arm, extra in ABLATION_ARMS.items():
        found = [score(next(iter(done[f"camera_{arm}_{s}"]["metrics"].values())), 2)
                 if f"camera_{arm}_{s}" in done else None for s in ABLATION_SOURCES]
        if not any(found):
            continue
        cells = [f"{r['ods']['f1']:.3f} / {r['at_run_threshold']['f1']:.3f}" if r else "-" for r in found]
        means = [f"{sum(r[k]['f1'] for r in found) / len(found):.3f}" if all(found) else "-"
                 for k in ("ods", "at_run_threshold")]
        rows.append(f"| {arm} | `{' '.join(extra) or '(none)'}` | " + " | ".join(cells + means) + " |")
    return "\n".join(rows)


def render_table(record: Path) -> str:
    done = {name: line for name, line in read_record(record).items() if not name.startswith("camera_")}
    rows = ["| experiment | trained on | scored on | budget | epochs | t | 0 px: ODS (t) / OIS / AP / F at t | "
            "2 px: ODS (t) / OIS / AP / F at t | 2 px ODS - F at t |", "|---" * 9 + "|"]
    for name, line in done.items():
        t = line["training"]
        for test, metrics in sorted(line["metrics"].items()):
            rows.append("| " + " | ".join([
                name, ", ".join(line["trained_on"]), test, f"{line['budget_minutes']} min", str(t["epochs"]),
                f"{t['threshold']:.2f}", cell(metrics, 0, threshold=True, at_run=True),
                cell(metrics, 2, threshold=True, at_run=True), gap(metrics)]) + " |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, ROOT / "benchmarks" / "generalization.jsonl", list(EXPERIMENTS))
    args = p.parse_args()
    if not args.table_only:
        run_all({name: commands(name, args) for name in EXPERIMENTS}, args, summarize)
    if not args.list and args.record.exists():
        print(render_table(args.record), render_ablation(args.record), sep="\n\n")


if __name__ == "__main__":
    main()
