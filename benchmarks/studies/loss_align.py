"""Should the recipe adopt --loss BCEDiceBatch or --no-align-corners? Before/after at equal CPU minutes.

    python benchmarks/studies/loss_align.py --list                # every experiment's exact commands
    python benchmarks/studies/loss_align.py --commit              # run what the record lacks, committing each line
    python benchmarks/studies/loss_align.py --table-only          # the table and the decisions

Each arm is the shipped width-4 UNet (runner.SHIPPED) with the multi-source recipe, trained with
CRACKMAP or MASONRY held out, seeds 0 and 1, and scored on the held-out source (2 px ODS F and
F at the run's threshold). The budget is a fixed number of epochs, not minutes: a wall-clock budget
fitted 2 to 6 epochs depending on what else shared the CPU, and 3.4x more on a CPU with native bf16
than on one without, so rows from different sessions or a busy machine could not be compared.
EPOCHS (10) is about half of what runner.ABLATION_MINUTES (12) fits on a native-bf16 2-core CPU
(about 6 minutes there, 20 on an AVX2-only one); --max-minutes stays as a cap that never binds.
"before" is the recipe as it is; each other arm changes one thing. An arm
is adopted as the issue asked: dicebatch only when its mean beats before's by more than the seed spread
(the largest difference between the two seeds of any arm on one source), noalign when it is no worse
(its mean not below before's by more than the spread), since it makes tiled maps match one pass.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner import (ABLATION_SOURCES, RESULTS, add_common_args, lodo_commands,  # noqa: E402
                    lodo_summary, read_record, run_all, shipped_lodo, two_px)

SOURCES = ABLATION_SOURCES   # CRACKMAP, MASONRY
SEEDS = (0, 1)
ARMS = {"before": [], "dicebatch": ["--loss", "BCEDiceBatch"], "noalign": ["--no-align-corners"]}
EPOCHS = 10
CAP_MINUTES = 90   # a safety stop only: the cosine schedule follows the larger of the step and time fractions
PREFIX = "la_"
RECORD = RESULTS / "loss_align.jsonl"


def experiment_name(arm: str, source: str, seed: int) -> str:
    return f"{arm}_{source}_s{seed}"


def experiments() -> dict[str, dict]:
    """Seed 0 of every arm and source first, so a session that ends early leaves whole comparisons."""
    found = {}
    for seed in SEEDS:
        for source in SOURCES:
            for arm, extra in ARMS.items():
                shipped = shipped_lodo(source, CAP_MINUTES)
                found[experiment_name(arm, source, seed)] = {
                    **shipped, "extra": shipped["extra"] + extra + ["--epochs", str(EPOCHS), "--seed", str(seed)]}
    return found


EXPERIMENTS = experiments()


def seed_spread(done: dict) -> float | None:
    gaps = []
    for arm in ARMS:
        for source in SOURCES:
            pair = [two_px(done.get(experiment_name(arm, source, seed))) for seed in SEEDS]
            if all(pair):
                gaps.append(abs(pair[0][0] - pair[1][0]))
    return max(gaps, default=None)


def arm_mean(done: dict, arm: str) -> tuple[float, float] | None:
    found = [two_px(done.get(experiment_name(arm, s, seed))) for s in SOURCES for seed in SEEDS]
    if not all(found):
        return None
    return tuple(sum(f[i] for f in found) / len(found) for i in (0, 1))


def adoption(arm: str, diff: float, spread: float) -> str:
    if diff <= -spread:
        return "no (worse)"
    if arm == "noalign":
        return "yes (no worse: within the spread)" if diff <= spread else "yes (better)"
    return "yes" if diff > spread else "no (within the spread)"


def render_table(record: Path) -> str:
    done = read_record(record)
    header = ["arm", "train.py options beyond the recipe"] + [f"{s} s{seed}" for s in SOURCES for seed in SEEDS] \
        + ["mean: ODS / F at t", "mean ODS - before", "adopt"]
    rows = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    spread, before = seed_spread(done), arm_mean(done, "before")
    for arm, extra in ARMS.items():
        cells = []
        for source in SOURCES:
            for seed in SEEDS:
                line = done.get(experiment_name(arm, source, seed))
                f = two_px(line)
                cells.append(f"{f[0]:.3f} / {f[1]:.3f}" if f else "-")
        mean = arm_mean(done, arm)
        diff = mean[0] - before[0] if mean and before else None
        verdict = "-" if arm == "before" or diff is None or spread is None else adoption(arm, diff, spread)
        rows.append("| " + " | ".join([arm, f"`{' '.join(extra)}`" if extra else "(none)", *cells,
                                        f"{mean[0]:.3f} / {mean[1]:.3f}" if mean else "-",
                                        f"{diff:+.3f}" if diff is not None and arm != "before" else "-",
                                        verdict]) + " |")
    rows.append("")
    rows.append("Seed spread (largest 2 px ODS F difference between the two seeds of one arm and source): "
                + (f"{spread:.3f}" if spread is not None else "not measured yet"))
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, RECORD, list(EXPERIMENTS))
    args = p.parse_args()
    if not args.table_only:
        run_all({name: lodo_commands(args, EXPERIMENTS[name], PREFIX + name) for name in EXPERIMENTS}, args,
                lambda name: lodo_summary(EXPERIMENTS[name], PREFIX + name))
    if not args.list:
        print(render_table(args.record))


if __name__ == "__main__":
    main()
