"""Which network to ship: accuracy on cracks it has never seen against speed on a large photo.

    python benchmarks/architecture.py --list          # every experiment's exact commands
    python benchmarks/architecture.py                 # run what benchmarks/architecture.jsonl lacks
    python benchmarks/architecture.py --table-only    # the README table

Every candidate is trained with the multi-source recipe and budget of benchmarks/generalization.py
on two leave-one-dataset-out splits and scored on the held-out source (2 px ODS F and F at the
run's threshold). The width-32 UNet rows are generalization.py's lodo_S runs (same recipe). Speed
is benchmarks/bench_predict.py on one 4000x3000 photo, every candidate in the same run.
A smaller network counts as as accurate when its mean 2 px F is within 0.02 of the best.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generalization  # noqa: E402
from runner import ROOT, add_common_args, read_record, run_all, score  # noqa: E402

SOURCES = ["CFD", "CRACKMAP"]            # held out: the two hardest sources for the single-source baseline
# In the order run: 16 and 8 first (network passes over a 4000x3000 photo of 6.6 and 3.3 s against
# 14.7 s at width 32); 8 matched 16, so 4 next (2.0 s; width 6 measured no faster than 8 in bf16: 3.1 s);
# 4 matched too, so 2, to find where the rule stops; then 24. Width 12 was dropped once 8 matched 16:
# the rule could no longer choose it.
CANDIDATES = {f"UNet:{w}": ["--base-width", str(w)] for w in (16, 8, 4, 2, 24)}
REFERENCE = "UNet:32"                    # generalization.py's lodo_S
SHIPPED = "UNet:4"                       # the choice (README "Which network to ship"): bundle and fine-tuning use it
# SHIPPED's other leave-one-out runs: fine-tuning's MASONRY parent, and the model card's estimate for
# unseen photos on every source
SHIPPED_SOURCES = ["MASONRY", "DEEPCRACK"]
SPEED_JSON = ROOT / "models" / "architecture_speed.json"


def experiment_name(candidate: str, source: str) -> str:
    arch, width = candidate.split(":")
    return f"{arch.lower()}_w{width}_{source}"


def network_args(candidate: str) -> list[str]:
    return [] if candidate == REFERENCE else CANDIDATES[candidate]


def lodo_run(candidate: str, source: str) -> str:
    """The run of `candidate` trained without `source` (generalization.py's own for the reference)."""
    if candidate == REFERENCE:
        return generalization.PREFIX + f"lodo_{source}"
    return PREFIX + experiment_name(candidate, source)


def experiments() -> dict[str, dict]:
    found = {}
    for candidate, extra in CANDIDATES.items():
        sources = SOURCES + (SHIPPED_SOURCES if candidate == SHIPPED else [])
        for source in sources:
            lodo = generalization.EXPERIMENTS[f"lodo_{source}"]
            found[experiment_name(candidate, source)] = {**lodo, "extra": lodo["extra"] + extra}
    return found


PREFIX = "arch_"
EXPERIMENTS = experiments()


def commands(name: str, args) -> list[list[str]]:
    if name == "speed":
        return [[sys.executable, "benchmarks/bench_predict.py", "--candidates", REFERENCE, *CANDIDATES,
                 "--json", str(SPEED_JSON.relative_to(ROOT))]]
    return generalization.commands(name, args, EXPERIMENTS[name], PREFIX + name)


def summarize(name: str) -> dict:
    if name == "speed":
        return {"speed": json.loads(SPEED_JSON.read_text())}
    return generalization.summarize(name, EXPERIMENTS[name], PREFIX + name)


def two_px(line: dict | None) -> tuple[float, float] | None:
    """(ODS F, F at the run's threshold) at 2 px of a line's one held-out source."""
    if not line:
        return None
    r = score(next(iter(line["metrics"].values())), 2)
    return r["ods"]["f1"], r["at_run_threshold"]["f1"]


def render_table(record: Path, general_record: Path) -> str:
    done, general = read_record(record), read_record(general_record)
    speed = done.get("speed", {}).get("speed", {})
    header = (["network", "parameters"] + [f"{s} 2 px: ODS / F at t" for s in SOURCES]
              + ["mean 2 px ODS", "4000x3000 photo (s)", "train.py options beyond the recipe"])
    rows = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for candidate in [REFERENCE, *CANDIDATES]:
        lines = [general.get(f"lodo_{s}") if candidate == REFERENCE else done.get(experiment_name(candidate, s))
                 for s in SOURCES]
        scores = [two_px(line) for line in lines]
        cells = [f"{f[0]:.3f} / {f[1]:.3f}" if f else "-" for f in scores]
        mean = f"{sum(f[0] for f in scores) / len(scores):.3f}" if all(scores) else "-"
        seconds = f"{speed[candidate]['median_s']:.1f}" if candidate in speed else "-"
        arch, width = candidate.split(":")
        params = parameters(arch, int(width))
        options = f"`{' '.join(network_args(candidate))}`" if network_args(candidate) else "(none)"
        rows.append("| " + " | ".join([f"{arch} width {width}", f"{params / 1e6:.2f} M", *cells, mean, seconds,
                                       options]) + " |")
    return "\n".join(rows)


def parameters(arch: str, width: int) -> int:
    sys.path.insert(0, str(ROOT))
    from models import build_model, count_parameters
    return count_parameters(build_model(arch, base_width=width))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [*EXPERIMENTS, "speed"]
    add_common_args(p, ROOT / "benchmarks" / "architecture.jsonl", names)
    args = p.parse_args()
    if not args.table_only:
        run_all({name: commands(name, args) for name in names}, args, summarize)
    if not args.list:
        print(render_table(args.record, ROOT / "benchmarks" / "generalization.jsonl"))


if __name__ == "__main__":
    main()
