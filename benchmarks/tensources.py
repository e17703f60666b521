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
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rundir import DEFAULT_BUNDLE as BUNDLE  # noqa: E402
from runner import (GROUP_TEST, GROUP_TRAIN, MODELS, TEST, TRAIN, add_common_args, finished_training,  # noqa: E402
                    other_groups, others, read_record, run_all, training_summary)
from sourcegroups import (ARM_GROUPS, ARMS, CHOSEN, NEW_GROUPS, POLICIES, PREFIX, RECORD, STEPS,  # noqa: E402
                          arm_label, arm_mean, group_score, policy_scores, render_logo, seed_gaps, train_command)


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
    return [train_command(args.data_dir, run, e["train"], e["arm"], e["group"]), *evaluate]


def summarize(name: str) -> dict:
    e, run = EXPERIMENTS[name], run_name(name)
    if e["train"] is None:
        return {"arm": e["arm"], "group": e["group"], "model": run, "ods_2px": policy_scores(run, e["tests"])}
    minutes = (os.path.getmtime(MODELS / run / "log.csv") - os.path.getmtime(MODELS / run / "split.json")) / 60
    return {"arm": e["arm"], "group": e["group"], "trained_on": e["train"], "steps": STEPS,
            "training": training_summary(run), "training_wall_minutes": round(minutes, 1),
            "ods_2px": policy_scores(run, e["tests"])}


# ---------------------------------------------------------------- tables

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
        rows.append(f"| {arm} | {arm_label(arm)} | " + " | ".join(cells + means)
                    + f" | {minutes} |")
    return "\n".join(rows) + "\n\n" + seed_spread(done) + two_seed_means(done)


def two_seed_means(done: dict) -> str:
    """Each arm that ran with two seeds: the mean of its two seeds' means under auto (what picks the recipe)."""
    pairs = {arm: (arm_mean(done, arm), arm_mean(done, f"{arm}_seed1")) for arm in ARMS if f"{arm}_seed1" in ARMS}
    found = [f"{arm} {(a + b) / 2:.3f}" for arm, (a, b) in pairs.items() if a is not None and b is not None]
    return (" Two seeds, the mean of their means under auto: " + ", ".join(found) + ".") if found else ""


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
