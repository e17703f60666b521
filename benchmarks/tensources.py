"""Ten sources, eight groups: leave-one-group-out training at equal optimizer steps, one line per
finished experiment in benchmarks/results/tensources.jsonl (with --commit, committed at once), the
tables of docs/sources.md from that file alone.

    python benchmarks/tensources.py --list                         # every experiment's exact commands
    python benchmarks/tensources.py --only base_MASONRY --commit   # run (skips what the record has)
    python benchmarks/tensources.py --table-only                   # the tables

A run without group G trains on every other group's datasets (runner.GROUP_TRAIN: the drone's three
optical zooms are one group) for STEPS optimizer steps, whatever the machine (its wall time is
recorded beside it), then scores G's photos at 2 px under the auto scale policy and at scale 1.
First the baseline (today's recipe, two seeds: the spread every arm is judged by) and the arms on
two held-out groups (ARM_GROUPS), then the chosen recipe on all eight. Beside them: today's recipe
on today's four sources at the same steps (old_S, each old source held out) and today's bundle on the
four groups it never saw (bundle_G, no training): what the chosen recipe is held against.
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rundir import load_config  # noqa: E402

from runner import (CAMERA, GROUP_TEST, GROUP_TRAIN, MODELS, RESULTS, SHIPPED, TEST, TRAIN, UPSAMPLING,  # noqa: E402
                    add_common_args, finished_training, network_args, other_groups, others, read_record, run_all, score,
                    steps_recipe, training_summary)

STEPS, EPOCH_SIZE, BATCH = 4000, 400, 4   # 40 epochs of 400 crops: about 15 min with native bf16, 40 without
SAFETY_MINUTES = 150                      # --max-minutes as a net only: the steps end the run
ARM_GROUPS = ["MASONRY", "UAVCRACKX"]     # a textured surface with crack-like joints, and the drone's road
NEW_GROUPS = ["UAVCRACKX", "GAPS384", "AIGLERN", "SHADOWCRACK"]   # none in today's bundle's training data
BUNDLE = "crackseg-general"
POLICIES = {"auto": "auto", "1": "1"}     # column name -> evaluate.py --scale
RECORD = RESULTS / "tensources.jsonl"
PREFIX = "src_"
# the arm trained without each of the eight groups, once the arms' table has chosen it (None: not yet)
CHOSEN = None
# name -> train.py options beyond today's recipe (its network and upsampling)
ARMS = {
    "base": [],
    "base_seed1": ["--seed", "1"],                       # the seed-to-seed spread
    "depth5": ["--depth", "5"],                          # a fifth pooling level: twice the view
    "width8": ["--base-width", "8"],                     # four times the parameters
    "balanced": ["--sampling", "group"],                 # each group the same share of crops
    "negatives": ["--hard-negatives", "0.1"],            # a tenth of the crops crack-free, mined (negatives.py)
    "mosaic": ["--small-tiles", "mosaic"],               # tiles under the crop filled by same-source tiles
    # the two arms that gained on different groups (balanced on MASONRY, the mosaic on UAVCRACKX), together
    "balanced_mosaic": ["--sampling", "group", "--small-tiles", "mosaic"],
}
# the best two arms after base (by the mean under auto) get a second seed: ARM_seed1
SECOND_SEEDS: list[str] = []
ARMS.update({f"{arm}_seed1": [*ARMS[arm], "--seed", "1"] for arm in SECOND_SEEDS})


def arm_options(arm: str, group: str | None) -> list[str]:
    """The arm's options for a run without `group`; balanced sampling names the drone's zooms one group."""
    extra = list(ARMS[arm])
    if "group" in extra and group != "UAVCRACKX":
        extra += ["--groups", "UAVCRACKX=" + ",".join(GROUP_TRAIN["UAVCRACKX"])]
    return extra


def experiments() -> dict[str, dict]:
    found = {f"{arm}_{g}": {"arm": arm, "group": g, "train": other_groups(g), "tests": GROUP_TEST[g]}
             for arm in ARMS for g in ARM_GROUPS}
    if CHOSEN:
        found.update({f"{CHOSEN}_{g}": {"arm": CHOSEN, "group": g, "train": other_groups(g), "tests": GROUP_TEST[g]}
                      for g in GROUP_TRAIN if g not in ARM_GROUPS})
    # today's recipe on today's four sources, each held out at the same steps: what the chosen recipe
    # trained on ten sources must not fall below on the old groups
    found.update({f"old_{s}": {"arm": "base", "group": s, "train": others(s), "tests": [TEST[s]]} for s in TRAIN})
    # today's bundle on the groups it never saw: what a stronger recipe must beat there
    found.update({f"bundle_{g}": {"arm": "bundle", "group": g, "train": None, "tests": GROUP_TEST[g]}
                  for g in NEW_GROUPS})
    return found


def run_name(name: str) -> str:
    return BUNDLE if EXPERIMENTS[name]["train"] is None else PREFIX + name


EXPERIMENTS = experiments()


def commands(args, name: str) -> list[list[str]]:
    """train.py for STEPS steps (none for the bundle), then evaluate.py under each policy."""
    e, run = EXPERIMENTS[name], run_name(name)
    evaluate = [[sys.executable, "evaluate.py", "--name", run, "--test", *e["tests"], "--data-dir", args.data_dir,
                 "--tolerance", "2", "--scale", scale] for scale in POLICIES.values()]
    if e["train"] is None:
        return evaluate
    train = [sys.executable, "train.py", "--dataset", *e["train"], "--data-dir", args.data_dir, "--name", run,
             "--overwrite", *recipe_options(e["arm"], e["group"], STEPS, EPOCH_SIZE)]
    return [train, *evaluate]


def recipe_options(arm: str, group: str | None, steps: int, epoch_size: int) -> list[str]:
    """train.py's options after --dataset and --name: the arm's recipe for `steps` optimizer steps, trained
    without `group` (None: on every group, as the bundle is)."""
    return ["--max-minutes", str(SAFETY_MINUTES), *steps_recipe(steps, epoch_size, BATCH), *CAMERA,
            *network_args(SHIPPED), *UPSAMPLING, *arm_options(arm, group)]


def policy_scores(run: str, tests: list[str]) -> dict:
    """2 px ODS F per policy and test set, from the run's eval folders (evaluate.py names a policy other
    than the run's own: DATASET_scaleauto, DATASET_scale1)."""
    own = load_config(run)["scale"]
    own = own if own == "auto" else f"{own:g}"
    found = {}
    for policy, scale in POLICIES.items():
        folders = {test: test if scale == own else f"{test}_scale{scale}" for test in tests}
        found[policy] = {test: score(json.loads((MODELS / run / "eval" / folder / "metrics.json").read_text()),
                                     2)["ods"]["f1"] for test, folder in folders.items()}
    return found


def summarize(name: str) -> dict:
    e, run = EXPERIMENTS[name], run_name(name)
    if e["train"] is None:
        return {"arm": e["arm"], "group": e["group"], "model": run, "ods_2px": policy_scores(run, e["tests"])}
    minutes = (os.path.getmtime(MODELS / run / "log.csv") - os.path.getmtime(MODELS / run / "split.json")) / 60
    return {"arm": e["arm"], "group": e["group"], "trained_on": e["train"], "steps": STEPS,
            "training": training_summary(run), "training_wall_minutes": round(minutes, 1),
            "ods_2px": policy_scores(run, e["tests"])}


# ---------------------------------------------------------------- tables

def group_score(line: dict, policy: str) -> float:
    """The held-out group's score: the mean over its test sets (the drone's three zooms weigh alike)."""
    values = list(line["ods_2px"][policy].values())
    return sum(values) / len(values)


def render_arms(record: Path) -> str:
    """One row per arm: each arm group's 2 px ODS F under auto (and at 1), their mean, the wall time."""
    done = read_record(record)
    head = "| arm | train.py options | " + " | ".join(f"{g}: auto / 1" for g in ARM_GROUPS) \
        + " | mean auto | mean 1 | minutes |"
    rows = [head, "|---" * (len(ARM_GROUPS) + 5) + "|"]
    for arm in ARMS:
        lines = [done.get(f"{arm}_{g}") for g in ARM_GROUPS]
        cells = [f"{group_score(x, 'auto'):.3f} / {group_score(x, '1'):.3f}" if x else "-" for x in lines]
        means = [f"{arm_mean(done, arm, p):.3f}" if all(lines) else "-" for p in POLICIES]
        minutes = " + ".join(f"{x['training_wall_minutes']:.0f}" for x in lines if x) or "-"
        rows.append(f"| {arm} | {' '.join(ARMS[arm]) or '(recipe)'} | " + " | ".join(cells + means)
                    + f" | {minutes} |")
    return "\n".join(rows) + "\n\n" + seed_spread(done) + two_seed_means(done)


def arm_mean(done: dict, arm: str, policy: str = "auto") -> float | None:
    """The arm's mean over ARM_GROUPS (None until it ran on every one)."""
    lines = [done.get(f"{arm}_{g}") for g in ARM_GROUPS]
    return sum(group_score(x, policy) for x in lines) / len(lines) if all(lines) else None


def two_seed_means(done: dict) -> str:
    """Each arm that ran with two seeds: the mean of its two seeds' means under auto (what picks the recipe)."""
    pairs = {arm: (arm_mean(done, arm), arm_mean(done, f"{arm}_seed1")) for arm in ARMS if f"{arm}_seed1" in ARMS}
    found = [f"{arm} {(a + b) / 2:.3f}" for arm, (a, b) in pairs.items() if a is not None and b is not None]
    return (" Two seeds, the mean of their means under auto: " + ", ".join(found) + ".") if found else ""


def seed_gaps(done: dict) -> dict[str, float] | None:
    """The baseline's two seeds under auto: |seed 0 - seed 1| per arm group and on their mean ("mean"),
    None until both seeds ran on both groups."""
    pairs = [(done.get(f"base_{g}"), done.get(f"base_seed1_{g}")) for g in ARM_GROUPS]
    if not all(a and b for a, b in pairs):
        return None
    gaps = {g: group_score(a, "auto") - group_score(b, "auto") for g, (a, b) in zip(ARM_GROUPS, pairs, strict=True)}
    return {**{g: abs(x) for g, x in gaps.items()}, "mean": abs(sum(gaps.values())) / len(gaps)}


def seed_spread(done: dict) -> str:
    gaps = seed_gaps(done)
    if gaps is None:
        return "Seed spread: not measured yet."
    return ("Seed spread (seeds 0 and 1 of the baseline, under auto): "
            + ", ".join(f"{g} {gaps[g]:.3f}" for g in ARM_GROUPS) + f"; mean {gaps['mean']:.3f}.")


def render_bundle(record: Path) -> str:
    """Today's bundle on each test set of the groups it never saw, 2 px ODS F under auto and at 1."""
    done = read_record(record)
    rows = ["| held-out group | test set | bundle: auto | bundle: 1 |", "|---|---|---|---|"]
    for g in NEW_GROUPS:
        line = done.get(f"bundle_{g}")
        for test in GROUP_TEST[g]:
            cells = [f"{line['ods_2px'][p][test]:.3f}" if line else "-" for p in POLICIES]
            rows.append(f"| {g} | {test} | " + " | ".join(cells) + " |")
    lines = [done.get(f"bundle_{g}") for g in NEW_GROUPS]
    if all(lines):
        means = [sum(group_score(x, p) for x in lines) / len(lines) for p in POLICIES]
        rows.append("| mean over the four groups | | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    return "\n".join(rows)


def today_name(group: str) -> str:
    """What the chosen recipe without `group` is held against there: today's recipe on today's four
    sources at equal steps (an old group), today's bundle (a new one)."""
    return f"old_{group}" if group in TRAIN else f"bundle_{group}"


def logo_gains(done: dict) -> dict[str, float]:
    """Per group with both lines: the chosen recipe's 2 px ODS F under auto without it, minus today's."""
    pairs = {g: (done.get(f"{CHOSEN}_{g}"), done.get(today_name(g))) for g in GROUP_TRAIN} if CHOSEN else {}
    return {g: group_score(a, "auto") - group_score(b, "auto") for g, (a, b) in pairs.items() if a and b}


def render_logo(record: Path) -> str:
    """The chosen recipe without each group, under auto and at 1, against what it must beat there."""
    if not CHOSEN:
        return "The recipe for all eight groups is not chosen yet."
    done = read_record(record)
    gains = logo_gains(done)
    rows = ["| held-out group | chosen: auto / 1 | today's: auto | chosen - today's |", "|---|---|---|---|"]
    for g in GROUP_TRAIN:
        line, today = done.get(f"{CHOSEN}_{g}"), done.get(today_name(g))
        cells = [f"{group_score(line, 'auto'):.3f} / {group_score(line, '1'):.3f}" if line else "-",
                 f"{group_score(today, 'auto'):.3f} ({'recipe, 4 sources' if g in TRAIN else 'bundle'})"
                 if today else "-", f"{gains[g]:+.3f}" if g in gains else "-"]
        rows.append(f"| {g} | " + " | ".join(cells) + " |")
    new = [gains[g] for g in NEW_GROUPS if g in gains]
    old = [f"{g} {gains[g]:+.3f}" for g in TRAIN if g in gains]
    summary = (f"New groups, mean gain over today's bundle under auto: {sum(new) / len(new):+.3f} "
               f"({len(new)} of {len(NEW_GROUPS)} groups); old groups against today's recipe at equal steps: "
               + (", ".join(old) or "not run") + ".") if new or old else ""
    return "\n".join(rows) + ("\n\n" + summary if summary else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, RECORD, list(EXPERIMENTS))
    args = p.parse_args()
    if not args.table_only:
        run_all({name: commands(args, name) for name in EXPERIMENTS}, args, summarize, skip=finished_training)
    if not args.list:
        print("\n\n".join([render_arms(args.record), render_bundle(args.record), render_logo(args.record)]))


if __name__ == "__main__":
    main()
