"""The ten-source study's recipe and record, shared by tensources.py (its entry point), the ten-source
bundle (general_model.py, modelcard.py) and framezoom.py: the arms and the recipe options of a run
without a group, the steps, the chosen arm, and the readings of benchmarks/results/tensources.jsonl
(group scores, the seed spread, the chosen recipe's gains over today's). No entry point."""
import json
import sys
from pathlib import Path

from rundir import eval_folder, load_config
from scales import scale_setting
from runner import (CAMERA, GROUP_TRAIN, MODELS, RESULTS, SHIPPED, TRAIN, UPSAMPLING, network_args, read_record,
                    score, steps_recipe)

STEPS, EPOCH_SIZE, BATCH = 4000, 400, 4   # 40 epochs of 400 crops: about 15 min with native bf16, 40 without
SAFETY_MINUTES = 150                      # --max-minutes as a net only: the steps end the run
ARM_GROUPS = ["MASONRY", "UAVCRACKX"]     # a textured surface with crack-like joints, and the drone's road
NEW_GROUPS = ["UAVCRACKX", "GAPS384", "AIGLERN", "SHADOWCRACK"]   # none in today's bundle's training data
POLICIES = {"auto": "auto", "1": "1"}     # column name -> evaluate.py --scale
RECORD = RESULTS / "tensources.jsonl"
PREFIX = "src_"
# the arm trained without each of the eight groups, once the arms' table has chosen it (None: not yet)
CHOSEN = "balanced_mosaic"
# name -> train.py options beyond today's recipe (its network and upsampling)
ARMS = {
    "base": [],
    "base_seed1": ["--seed", "1"],                       # the seed-to-seed spread
    "depth5": ["--depth", "5"],                          # a fifth pooling level: twice the view
    "width8": ["--base-width", "8"],                     # four times the parameters
    "balanced": ["--sampling", "group"],                 # each group the same share of crops
    "negatives": ["--hard-negatives", "0.1"],            # a tenth of the crops crack-free, mined (crops.py)
    "mosaic": ["--small-tiles", "mosaic"],               # tiles under the crop filled by same-source tiles
    # the two arms that gained on different groups (balanced on MASONRY, the mosaic on UAVCRACKX), together
    "balanced_mosaic": ["--sampling", "group", "--small-tiles", "mosaic"],
    # balanced_mosaic lost MASONRY to today's recipe on the old sources (-0.075): shares by surface, where
    # six road groups of seven left DeepCrack's concrete one seventh of the crops
    "surface": ["--sampling", "group", "--small-tiles", "mosaic"],
}
# the groups --sampling group draws alike, in GROUP_TRAIN's groups: the drone's three zooms one group,
# and for the surface arm every road or asphalt source one group beside DeepCrack's and the masonry's
SAMPLING_GROUPS = {"UAVCRACKX": ["UAVCRACKX"]}
SURFACE_GROUPS = {"ROAD": ["CFD", "CRACKMAP", "UAVCRACKX", "GAPS384", "AIGLERN", "SHADOWCRACK"]}
ARM_SAMPLING_GROUPS = {"surface": SURFACE_GROUPS}
# the best two arms after base (by the mean under auto) get a second seed: ARM_seed1
SECOND_SEEDS: list[str] = ["balanced_mosaic", "mosaic"]
ARMS.update({f"{arm}_seed1": [*ARMS[arm], "--seed", "1"] for arm in SECOND_SEEDS})


def sampling_groups(arm: str) -> dict[str, list[str]]:
    """The groups of GROUP_TRAIN's groups the arm's --sampling group draws alike (its seed-1 run's too)."""
    return ARM_SAMPLING_GROUPS.get(arm.removesuffix("_seed1"), SAMPLING_GROUPS)


def arm_options(arm: str, group: str | None) -> list[str]:
    """The arm's options for a run without `group`: balanced sampling names its groups of datasets (the
    held-out group's left out; a group left empty is not named)."""
    extra = list(ARMS[arm])
    if "group" not in extra:
        return extra
    named = {name: [d for g in members if g != group for d in GROUP_TRAIN[g]]
             for name, members in sampling_groups(arm).items()}
    specs = [f"{name}={','.join(datasets)}" for name, datasets in named.items() if datasets]
    return extra + (["--groups", *specs] if specs else [])


def arm_label(arm: str) -> str:
    """The arm's options as the arms' table shows them, its own sampling groups by name."""
    named = ARM_SAMPLING_GROUPS.get(arm.removesuffix("_seed1"), {})   # the drone's grouping goes unsaid
    return " ".join([*ARMS[arm], *(f"--groups {name}=({'+'.join(g)})" for name, g in named.items())]) or "(recipe)"


def recipe_options(arm: str, group: str | None, steps: int, epoch_size: int) -> list[str]:
    """train.py's options after --dataset and --name: the arm's recipe for `steps` optimizer steps, trained
    without `group` (None: on every group, as the bundle is)."""
    return ["--max-minutes", str(SAFETY_MINUTES), *steps_recipe(steps, epoch_size, BATCH), *CAMERA,
            *network_args(SHIPPED), *UPSAMPLING, *arm_options(arm, group)]


def train_command(data_dir: str, run: str, datasets: list[str], arm: str, group: str) -> list[str]:
    """train.py for run `run` of `arm` on `datasets`, trained without `group` (tensources.py's runs, which
    framezoom.py's ten-source rows score)."""
    return [sys.executable, "train.py", "--dataset", *datasets, "--data-dir", data_dir, "--name", run,
            "--overwrite", *recipe_options(arm, group, STEPS, EPOCH_SIZE)]


def policy_scores(run: str, tests: list[str]) -> dict:
    """2 px ODS F per policy and test set, from the run's eval folders (evaluate.py names a policy other
    than the run's own: DATASET_scaleauto, DATASET_scale1)."""
    own = load_config(run)["scale"]
    found = {}
    for policy, scale in POLICIES.items():
        folders = {test: eval_folder(test, scale_setting(scale, own)) for test in tests}
        found[policy] = {test: score(json.loads((MODELS / run / "eval" / folder / "metrics.json").read_text()),
                                     2)["ods"]["f1"] for test, folder in folders.items()}
    return found


def group_score(line: dict, policy: str) -> float:
    """The held-out group's score: the mean over its test sets (the drone's three zooms weigh alike)."""
    values = list(line["ods_2px"][policy].values())
    return sum(values) / len(values)


def arm_mean(done: dict, arm: str, policy: str = "auto") -> float | None:
    """The arm's mean over ARM_GROUPS (None until it ran on every one)."""
    lines = [done.get(f"{arm}_{g}") for g in ARM_GROUPS]
    return sum(group_score(x, policy) for x in lines) / len(lines) if all(lines) else None


def seed_gaps(done: dict) -> dict[str, float] | None:
    """The baseline's two seeds under auto: |seed 0 - seed 1| per arm group and on their mean ("mean"),
    None until both seeds ran on both groups."""
    pairs = [(done.get(f"base_{g}"), done.get(f"base_seed1_{g}")) for g in ARM_GROUPS]
    if not all(a and b for a, b in pairs):
        return None
    gaps = {g: group_score(a, "auto") - group_score(b, "auto") for g, (a, b) in zip(ARM_GROUPS, pairs, strict=True)}
    return {**{g: abs(x) for g, x in gaps.items()}, "mean": abs(sum(gaps.values())) / len(gaps)}


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
                 f"{group_score(today, 'auto'):.3f} ({'recipe, old sources' if g in TRAIN else 'bundle'})"
                 if today else "-", f"{gains[g]:+.3f}" if g in gains else "-"]
        rows.append(f"| {g} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + ("\n\n" + logo_summary(gains, seed_gaps(done)) if gains else "")


def logo_summary(gains: dict[str, float], gaps: dict[str, float] | None) -> str:
    """The gains in words: the mean over all groups measured, the new groups' mean (issue 40's target
    of 0.05) and each old group, naming the losses beyond the baseline's seed spread."""
    spread = (gaps or {}).get("mean")
    new = [gains[g] for g in NEW_GROUPS if g in gains]
    old = {g: gains[g] for g in TRAIN if g in gains}
    beyond = [g for g, gain in old.items() if spread is not None and gain < -spread]
    parts = [f"Mean gain over the {len(gains)} held-out groups measured: {sum(gains.values()) / len(gains):+.3f}"
             + (f" (the baseline's seed spread: {spread:.3f})" if spread is not None else "")]
    if new:
        parts.append(f"new groups, over today's bundle: {sum(new) / len(new):+.3f} mean ({len(new)} of "
                     f"{len(NEW_GROUPS)} groups)")
    if old:
        parts.append("old groups, over today's recipe at equal steps: "
                     + ", ".join(f"{g} {gain:+.3f}" for g, gain in old.items())
                     + (f" (below it beyond the spread: {', '.join(beyond)})" if beyond else ""))
    return "; ".join(parts) + "."
