"""Adapting the general recipe to a new surface with a few labelled photos: how much do they buy?

    python benchmarks/studies/finetune.py --list          # every experiment's exact commands
    python benchmarks/studies/finetune.py --only ... --commit   # run (skips what its record has)
    python benchmarks/studies/finetune.py --table-only    # the table of docs/bundle.md

For each source S in CFD, CRACKMAP, MASONRY, the parent is the leave-one-dataset-out model of the
shipped network that never saw S (runner.lodo_run: generalization.py's lodo_S for the width-32
UNet, studies/architecture.py's runs otherwise; retrain it from their --list if this machine lost it).
Draw d (0, 1) takes a seeded pool of 20 images of S; k = 5 uses the pool's first 5. Every arm is
scored on the images of S outside the pool (the same for every arm of a draw), strict and 2 px:
  none      the parent as shipped, at its own threshold
  finetune  train.py --dataset <the k images> --init-from <parent> --preset finetune (5 CPU-minutes)
  scratch   the same images, budget and recipe from random weights
and, to choose the defaults, finetune variants on k = 20 (--lr 1e-4; --freeze-encoder).
The *_long arms repeat none and finetune (k = 20) from parent_long_S: the same leave-one-out run
trained for the bundle's budget (runner.BUNDLE_MINUTES) rather than the comparison's 25 minutes, so the
start is as strong as the model users fine-tune; scratch does not depend on the parent. LONG_VARIANTS
try other fine-tuning settings from that parent (k = 20), run only where the default one fell short.
The k images are linked (not copied) under inputs/finetune/ as ordinary datasets, so each arm
is exactly the command a user runs on their own folder; its --val-split takes 1 (k = 5) or 2
(k = 20) of them to choose best.pt and the threshold.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner import (BUNDLE_MINUTES, MINUTES, MODELS, RESULTS, ROOT, SHIPPED, add_common_args,  # noqa: E402
                    long_parent_name, lodo_commands, lodo_run, lodo_summary, network_args, read_record, run_all,
                    score, shell, shipped_lodo, training_summary)

SOURCES = ["CFD", "CRACKMAP", "MASONRY"]
DRAWS, POOL, SHOTS = (0, 1), 20, (5, 20)
LINKS = ROOT / "inputs" / "finetune"   # gitignored; rebuilt from the data on any machine
RECIPE = ["--preset", "finetune"]     # train.py's fine-tuning defaults, which these arms chose
NETWORK = network_args(SHIPPED)       # scratch runs train the parents' network
VARIANTS = {"finetune_lr1e-4": ["--lr", "1e-4"], "finetune_frozen": ["--freeze-encoder"]}
LONG_VARIANTS = {"finetune_lr3e-4": ["--lr", "3e-4"]}
LONG = "_long"                        # arm suffix: started from the parent trained for the bundle's budget
LABELS = {"none_long": f"none ({BUNDLE_MINUTES}-min parent)",
          "finetune_long": f"finetune ({BUNDLE_MINUTES}-min parent)",
          **{v + LONG: f"{v} ({BUNDLE_MINUTES}-min parent)" for v in LONG_VARIANTS}}


def parent(source: str, arm: str = "") -> str:
    if arm.endswith(LONG):
        return PREFIX + long_parent_name(source)
    return lodo_run(SHIPPED, source)


def long_parent_experiment(source: str) -> dict:
    """The shipped network's leave-one-out experiment without `source`, at the bundle's budget."""
    return shipped_lodo(source, BUNDLE_MINUTES)


def subset(source: str, draw: int, k: int | None) -> str:
    """The dataset name of draw d's k training images (k None: the images outside the pool)."""
    return f"{source}_d{draw}_" + (f"k{k}" if k else "rest")


def arm_name(arm: str, source: str, draw: int, k: int) -> str:
    return f"{arm}_{source}_d{draw}" if arm.startswith("none") else f"{arm}_{source}_d{draw}_k{k}"


def draw_pool(stems: list[str], draw: int) -> list[str]:
    """The seeded pool of a draw, in drawing order (its first 5 are the k = 5 images)."""
    order = np.random.default_rng([draw, POOL]).permutation(len(stems))
    return [sorted(stems)[i] for i in order[:POOL]]


def link_subsets(data_dir: Path) -> None:
    """inputs/finetune/<S>_d<d>_{k5,k20,rest}/{images,masks}: links to the source's files."""
    for source in SOURCES:
        images = {p.stem: p for p in (data_dir / source / "images").iterdir()}
        masks = {p.stem: p for p in (data_dir / source / "masks").iterdir()}
        for draw in DRAWS:
            pool = draw_pool(list(images), draw)
            parts = {subset(source, draw, k): pool[:k] for k in SHOTS}
            parts[subset(source, draw, None)] = sorted(set(images) - set(pool))
            for name, stems in parts.items():
                for kind, files in (("images", images), ("masks", masks)):
                    folder = LINKS / name / kind
                    folder.mkdir(parents=True, exist_ok=True)
                    for stem in stems:
                        link = folder / files[stem].name
                        if not link.exists():
                            os.symlink(files[stem].resolve(), link)


def experiments() -> dict[str, dict]:
    found = {}
    for source in SOURCES:
        for draw in DRAWS:
            found[arm_name("none", source, draw, 0)] = {"source": source, "draw": draw, "k": 0, "arm": "none"}
            for k in SHOTS:
                for arm in ("finetune", "scratch", *(VARIANTS if k == max(SHOTS) else ())):
                    found[arm_name(arm, source, draw, k)] = {"source": source, "draw": draw, "k": k, "arm": arm}
    for source in SOURCES:
        found[long_parent_name(source)] = {"source": source, "arm": "parent"}
        for draw in DRAWS:
            found[arm_name("none" + LONG, source, draw, 0)] = {"source": source, "draw": draw, "k": 0,
                                                               "arm": "none" + LONG}
            for arm in ("finetune", *LONG_VARIANTS):
                found[arm_name(arm + LONG, source, draw, max(SHOTS))] = {
                    "source": source, "draw": draw, "k": max(SHOTS), "arm": arm + LONG}
    return found


EXPERIMENTS = experiments()
PREFIX = "ft_"


def scored_run(name: str) -> str:
    e = EXPERIMENTS[name]
    return parent(e["source"], e["arm"]) if e["arm"].startswith("none") else PREFIX + name


def commands(name: str, args) -> list[list[str]]:
    e = EXPERIMENTS[name]
    if e["arm"] == "parent":
        return lodo_commands(args, long_parent_experiment(e["source"]), PREFIX + name)
    run = scored_run(name)
    scored = [sys.executable, "evaluate.py", "--name", run, "--test", subset(e["source"], e["draw"], None),
              "--data-dir", str(LINKS.relative_to(ROOT)), "--tolerance", "0", "2"]
    if e["arm"].startswith("none"):
        return [scored]
    start = NETWORK if e["arm"] == "scratch" else ["--init-from", parent(e["source"], e["arm"])]
    train = [sys.executable, "train.py", "--dataset", subset(e["source"], e["draw"], e["k"]),
             "--data-dir", str(LINKS.relative_to(ROOT)), "--name", run, "--overwrite", *RECIPE, *start,
             *variant_flags(e["arm"])]
    return [train, scored]


def variant_flags(arm: str) -> list[str]:
    """train.py flags an arm adds to the fine-tuning recipe (none for finetune, scratch, finetune_long)."""
    return {**VARIANTS, **LONG_VARIANTS}.get(arm.removesuffix(LONG), [])


def summarize(name: str) -> dict:
    e = EXPERIMENTS[name]
    if e["arm"] == "parent":
        return {**e, **lodo_summary(long_parent_experiment(e["source"]), PREFIX + name)}
    run = scored_run(name)
    metrics = MODELS / run / "eval" / subset(e["source"], e["draw"], None) / "metrics.json"
    line = {**e, "run": run, "metrics": json.loads(metrics.read_text())}
    if not e["arm"].startswith("none"):
        line["training"] = training_summary(run)
    return line


def two_px(line: dict) -> tuple[float, float]:
    r = score(line["metrics"], 2)
    return r["ods"]["f1"], r["at_run_threshold"]["f1"]


def half_range(values: list[float]) -> float:
    return (max(values) - min(values)) / 2


def spread_cell(values: list[float]) -> str:
    """Mean over the draws, and their half-range (the draw-to-draw spread) when both are done."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 draw)"
    return f"{np.mean(values):.3f} ± {half_range(values):.3f}"


def verdict_rows(done: dict[str, dict], suffix: str = "", tuned: str = "finetune") -> list[str]:
    """Does fine-tuning on the most images beat no fine-tuning and scratch in every draw, by more
    than any arm moves between draws (the draws differ in training and in scored images)? `suffix`
    LONG judges the arms started from the parent trained for the bundle's budget; `tuned` names a
    LONG_VARIANTS arm to judge in place of the default recipe (its rows appear only where it ran)."""
    k = max(SHOTS)
    rows = ["| held-out source | 2 px score | parent | finetune - none, per draw | finetune - scratch, per draw "
            "| draw spread (none, scratch, finetune) | beats both beyond the spread |", "|---" * 7 + "|"]
    budget = f"{BUNDLE_MINUTES} min" if suffix else f"{MINUTES} min"
    if tuned != "finetune":
        budget += ", " + " ".join(LONG_VARIANTS[tuned])
    for source in SOURCES:
        names = {arm: [arm_name(arm + (suffix if arm != "scratch" else ""), source, d, k) for d in DRAWS]
                 for arm in ("none", "scratch", tuned)}
        names["finetune"] = names.pop(tuned)
        if not all(name in done for arm in names.values() for name in arm):
            if tuned == "finetune":
                rows.append(f"| {source} | - | {budget} | - | - | - | not all draws run |")
            continue
        for which, label in ((0, "ODS F"), (1, "F at t")):
            f = {arm: [two_px(done[name])[which] for name in arm_names] for arm, arm_names in names.items()}
            gains = {rival: [a - b for a, b in zip(f["finetune"], f[rival], strict=True)]
                     for rival in ("none", "scratch")}
            spreads = [half_range(f[arm]) for arm in names]
            beats = min(gains["none"] + gains["scratch"]) > max(spreads)
            rows.append(f"| {source} | {label} | {budget} | " + " | ".join(
                ", ".join(f"{g:+.3f}" for g in gains[rival]) for rival in ("none", "scratch"))
                + " | " + ", ".join(f"{s:.3f}" for s in spreads) + f" | {'yes' if beats else 'no'} |")
    return rows


def render_table(record: Path) -> str:
    done = read_record(record)
    arms = ["none", "scratch", "finetune", *VARIANTS, *LABELS]   # LABELS: the LONG arms
    rows = ["| held-out source | k images | " + " | ".join(f"{LABELS.get(a, a)}: 2 px ODS / F at t" for a in arms)
            + " | fine-tuning command (draw 0) |", "|---" * (len(arms) + 3) + "|"]
    for source in SOURCES:
        for k in SHOTS:
            cells = []
            for arm in arms:
                names = [arm_name(arm, source, d, k) for d in DRAWS]
                lines = [done[name] for name in names if name in done]
                scores = [two_px(line) for line in lines]
                cells.append(f"{spread_cell([s[0] for s in scores])} / {spread_cell([s[1] for s in scores])}"
                             if scores else "-")
            train = commands(arm_name("finetune", source, 0, k), None)[0]
            rows.append(f"| {source} | {k} | " + " | ".join(cells) + f" | `{shell(train)}` |")
    verdicts = verdict_rows(done) + verdict_rows(done, LONG)[2:]
    for variant in LONG_VARIANTS:
        verdicts += verdict_rows(done, LONG, variant)[2:]
    return "\n".join(rows + [""] + verdicts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, RESULTS / "finetune.jsonl", list(EXPERIMENTS))
    args = p.parse_args()
    if not args.table_only and not args.list:
        link_subsets(Path(args.data_dir) if Path(args.data_dir).is_absolute() else ROOT / args.data_dir)
        chosen = args.only or list(EXPERIMENTS)
        needed = {parent(EXPERIMENTS[n]["source"], EXPERIMENTS[n]["arm"]) for n in chosen
                  if EXPERIMENTS[n]["arm"] != "parent"}
        trained_here = {PREFIX + n for n in chosen}
        missing = sorted(run for run in needed - trained_here if not (MODELS / run / "best.pt").exists())
        if missing:
            sys.exit(f"parents missing in {MODELS}: {', '.join(missing)}; train them first: `--list` of "
                     "benchmarks/generalization.py (gen_ runs) or benchmarks/studies/architecture.py (arch_ runs) has "
                     "their commands; run them with --only NAME --rerun (parent_long_S: this script's --only)")
    if not args.table_only:
        run_all({name: commands(name, args) for name in EXPERIMENTS}, args, summarize)
    if not args.list and args.record.exists():
        print(render_table(args.record))


if __name__ == "__main__":
    main()
