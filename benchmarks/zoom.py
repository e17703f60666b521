"""Cracks at any zoom: each source scored by a model that never trained on it, with its photos and masks
resampled by zoom z, under fixed scale 1, `--scale auto` and the best fixed factor per (source, zoom).

    python benchmarks/zoom.py --list                   # every experiment's exact commands
    python benchmarks/zoom.py --commit                 # run what the record lacks, committing each line
    python benchmarks/zoom.py --table-only             # the tables, from the record alone
    python benchmarks/zoom.py --score RUN --source CFD --data-dir ../shared/data   # one run's zoom scores

Zoom: augment.py's rule, as --scale-aug-range trains with (photos area-averaged to shrink, bicubic
to enlarge, as a photo taken from further away or closer; masks nearest-neighbour to enlarge and
area-averaged then kept where at least half a pixel was crack to shrink). The record
holds each zoom's median label width, so the rule is checked as label_widths.py measures widths.
The model's source is checked from its config.json (the sources it trained on), not from a name.

For every image, zoom and factor in scales.FACTORS that scales.allowed() permits, the record keeps
the 2 px counts at thresholds 0.00, 0.05, ..., 1.00 and at the run's threshold (in
benchmarks/results/zoom/EXPERIMENT.json.gz, beside the record), and the label-free scales.features() of each map, so
that a new auto rule is replayed (replay()) without predicting again. "fuse" is the mean of the
maps at 1, 1/2 and 1/4; rows from the seed-3 reruns on also keep the mean of every run of two and
three neighbouring factors (zoomrecord.WINDOWS), so auto's chosen map fused with its neighbours is
replayed too (the last table).
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))   # runner, when run by render_docs.py

import metrics  # noqa: E402
from augment import zoom_mask, zoom_photo  # noqa: E402
import scales  # noqa: E402
from dataset import read_sample, scan_dataset  # noqa: E402
from runner import (ABLATION_MINUTES, ABLATION_SOURCES, MINUTES, MODELS, TEST, TRAIN, UPSAMPLING,  # noqa: E402
                    add_common_args, lodo_commands, read_record, run_all, shipped_lodo, training_summary)
from zoomrecord import (ARMS, CHOSEN, NEIGHBOURS, RECORD, WINDOWS, load_arrays, lodo_name, replay,  # noqa: E402
                        label_width, load_unseen, save_arrays, score_maps)

ZOOMS = (0.5, 1.0, 2.0, 4.0)
PREFIX = "zoom_"

# the baseline also holds out the thin-crack sources, where an auto rule must keep the photo as it is
ALL_SOURCES = list(TRAIN)
ARM_SOURCES = {"w4": ALL_SOURCES}


def zoom_experiment(source: str, minutes: int, extra: list[str]) -> dict:
    shipped = shipped_lodo(source, minutes)
    return {**shipped, "extra": shipped["extra"] + UPSAMPLING + extra, "source": TEST[source]}


def experiments() -> dict[str, dict]:
    found = {f"{arm}_{source}": zoom_experiment(source, ABLATION_MINUTES, extra)
             for arm, extra in ARMS.items() for source in ARM_SOURCES.get(arm, ABLATION_SOURCES)}
    found.update({lodo_name(source): zoom_experiment(source, MINUTES, ARMS[CHOSEN]) for source in ALL_SOURCES})
    # seed 1 ran on a CPU without native bf16 (40% of seed 0's epochs); seed 2 on one like seed 0's
    found.update({lodo_name(source, seed): zoom_experiment(source, MINUTES, ARMS[CHOSEN] + ["--seed", str(seed)])
                  for seed in (1, 2) for source in ABLATION_SOURCES})
    # seed 3 on every source, the first rows to record every fused window (zoomrecord.WINDOWS)
    found.update({lodo_name(source, 3): zoom_experiment(source, MINUTES, ARMS[CHOSEN] + ["--seed", "3"])
                  for source in ALL_SOURCES})
    return found


EXPERIMENTS = experiments()


def commands(args, e: dict, run: str) -> list[list[str]]:
    """runner's leave-one-out training, then this script's zoom scores in place of evaluate.py."""
    score = [sys.executable, "benchmarks/zoom.py", "--score", run, "--source", e["source"],
             "--data-dir", args.data_dir]
    return [lodo_commands(args, e, run)[0], score]


# ---------------------------------------------------------------- zooming and scoring one run

def score_run(run: str, source: str, data_dir: Path, zooms=ZOOMS) -> dict:
    """Every zoom of `source` scored by `run`; arrays to models/RUN/zoom_SOURCE.json.gz, the rest returned."""
    predictor = load_unseen(run, source)
    config = predictor.config
    samples = scan_dataset(data_dir, source)[0]
    t_index = metrics.threshold_index(config["threshold"])
    out = {"counts": [], "features": [], "valid": [], "live": []}
    widths, short_sides = [], []
    for z in zooms:
        per = [[], [], [], []]
        masks, shorts = [], []
        for sample in samples:
            image, mask, roi = read_sample(sample)
            zoomed = zoom_photo(image, z)
            size = zoomed.shape[1], zoomed.shape[0]
            mask = zoom_mask(mask, z, size)
            roi = None if roi is None else zoom_mask(roi, z, size)
            masks.append(mask)
            shorts.append(min(zoomed.shape[:2]))
            for part, value in zip(per, score_maps(predictor, (zoomed, mask, roi), t_index, WINDOWS),
                                   strict=True):
                part.append(value)
        for key, part in zip(out, per, strict=True):
            out[key].append(np.stack(part))
        widths.append(label_width(masks))
        short_sides.append(shorts)
        print(f"{run} {source} zoom {z:g}: done, median label width {widths[-1]:.1f} px", flush=True)
    arrays = {k: np.stack(v) for k, v in out.items()} | {"short_side": np.array(short_sides)}
    path = MODELS / run / f"zoom_{source}.json.gz"
    save_arrays(path, {**arrays, "names": np.array([s.stem for s in samples]), "zooms": np.array(zooms)})
    info = {"source": source, "zooms": list(zooms), "threshold": config["threshold"], "label_width_px": widths,
            "images": len(samples), "arrays": path.name}
    (MODELS / run / f"zoom_{source}.json").write_text(json.dumps(info))
    return info


def summarize(name: str, record: Path) -> dict:
    """The line's results; the run's arrays are copied beside `record` (committed with the line)."""
    e, run = EXPERIMENTS[name], PREFIX + name
    info = json.loads((MODELS / run / f"zoom_{e['source']}.json").read_text())
    line = {"attachments": [f"zoom/{name}.json.gz"]}
    (record.parent / "zoom").mkdir(parents=True, exist_ok=True)
    shutil.copy(MODELS / run / info["arrays"], record.parent / line["attachments"][0])
    policies = replay(load_arrays(record, line), scales.choose)
    return {"trained_on": e["train"], "budget_minutes": e["minutes"], "extra": e["extra"],
            "training": training_summary(run), "zoom": info, **line,
            "policies": {str(z): r for z, r in policies.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, RECORD, list(EXPERIMENTS))
    p.add_argument("--score", metavar="RUN", help="score one trained run at every zoom (what an experiment runs)")
    p.add_argument("--source", help="with --score: the held-out source")
    args = p.parse_args()
    if args.score:
        print(json.dumps(score_run(args.score, args.source, Path(args.data_dir))))
        return
    if not args.table_only:
        run_all({name: commands(args, EXPERIMENTS[name], PREFIX + name) for name in EXPERIMENTS}, args,
                lambda name: summarize(name, args.record))
    if not args.list:
        print(render_table(args.record))


def recipe_groups(done: dict[str, dict], record: Path) -> dict[str, dict]:
    """{recipe: {source: replay under today's rule}} (an experiment is named RECIPE_SOURCE)."""
    groups = {}
    for name, line in done.items():
        recipe, source = name.rsplit("_", 1)
        groups.setdefault(recipe, {})[source] = replay(load_arrays(record, line), scales.choose)
    return groups


def against_fixed(r: list[dict], key: str) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per source under policy `key`: ODS F, its shortfall to the best fixed factor, its gain over
    fixed 1, and how much wider it leaves the gap between ODS F and F at t than fixed 1 does."""
    ods = [x[key][0] for x in r]
    short = [x["oracle"][1] - x[key][0] for x in r]
    gain = [x[key][0] - x["fixed_1"][0] for x in r]
    gap = [(x[key][0] - x[key][1]) - (x["fixed_1"][0] - x["fixed_1"][1]) for x in r]
    return ods, short, gain, gap


def render_summary(groups: dict[str, dict], done: dict[str, dict]) -> str:
    """Per recipe and zoom, over the held-out sources it ran on: the mean 2 px ODS F of fixed 1, auto
    and the best fixed factor; auto's largest shortfall to that factor; auto - fixed 1 at its worst
    source; and how much wider auto leaves the gap between ODS F and F at t than fixed 1 does."""
    rows = ["| recipe | sources | zoom | fixed 1 | auto | best fixed factor | auto short of best: mean / worst | "
            "auto - fixed 1: mean / worst | ODS - F at t gap, auto - fixed 1: worst |", "|---" * 9 + "|"]
    for recipe, by_source in groups.items():
        for z in common_zooms(by_source):
            r = [by_source[s][z] for s in by_source]
            auto, short, gain, gap = against_fixed(r, "auto")
            rows.append(f"| {recipe} | {len(r)} | {z:g} | {np.mean([x['fixed_1'][0] for x in r]):.3f} | "
                        f"{np.mean(auto):.3f} | {np.mean([x['oracle'][1] for x in r]):.3f} | "
                        f"{np.mean(short):.3f} / {max(short):.3f} | "
                        f"{np.mean(gain):+.3f} / {min(gain):+.3f} | {max(gap):+.3f} |")
    return "\n".join(rows) + render_seed_spread(groups, done)


def render_fused(groups: dict[str, dict]) -> str:
    """For the recipes whose record keeps every fused window: auto's chosen map alone, fused with the
    next coarser map (down) and with both neighbours (centre), on the same acceptance readings."""
    names = ["auto"] + [f"auto_{n}" for n in NEIGHBOURS]
    rows = ["| recipe | sources | zoom | fixed 1 | best fixed factor | " + " | ".join(
                f"{n.replace('_', ' + ')}: mean, short of best worst, - fixed 1 mean / worst, gap worst" for n in names)
            + " |", "|---" * (5 + len(names)) + "|"]
    for recipe, by_source in groups.items():
        for z in common_zooms(by_source):
            r = [by_source[s][z] for s in by_source]
            if not all(n in x for x in r for n in names):
                continue
            cells = []
            for n in names:
                ods, short, gain, gap = against_fixed(r, n)
                cells.append(f"{np.mean(ods):.3f}, {max(short):.3f}, {np.mean(gain):+.3f} / {min(gain):+.3f}, "
                             f"{max(gap):+.3f}")
            rows.append(f"| {recipe} | {len(r)} | {z:g} | {np.mean([x['fixed_1'][0] for x in r]):.3f} | "
                        f"{np.mean([x['oracle'][1] for x in r]):.3f} | " + " | ".join(cells) + " |")
    return "\n".join(rows) if len(rows) > 2 else ""


def common_zooms(by_source: dict[str, dict]) -> list[float]:
    return sorted(set.intersection(*(set(v) for v in by_source.values())))


def render_seed_spread(groups: dict[str, dict], done: dict[str, dict]) -> str:
    """For each recipe trained again with another seed (RECIPE_seedN): per zoom, the largest change
    of fixed 1, auto and the best fixed factor (2 px ODS F) over the sources both seeds held out, the
    spread a difference between recipes at that budget must exceed to be a finding (empty until then),
    with the epochs each run had: --max-minutes on a slower machine trains fewer."""
    rows = []
    for name, again in groups.items():
        recipe, _, seed = name.rpartition("_seed")
        if not recipe or recipe not in groups or not seed.isdigit():
            continue
        sources = sorted(set(again) & set(groups[recipe]))
        pairs = [(groups[recipe][s], again[s]) for s in sources]
        trained = lambda run: done[run]["training"]["epochs"]  # noqa: E731
        epochs = ", ".join(f"{trained(f'{recipe}_{s}')} / {trained(f'{name}_{s}')}" for s in sources)
        for z in common_zooms(dict(enumerate(p for pair in pairs for p in pair))):
            changes = [max(abs(a[z][k][i] - b[z][k][i]) for a, b in pairs)
                       for k, i in (("fixed_1", 0), ("auto", 0), ("oracle", 1))]
            cells = " | ".join(f"{c:.3f}" for c in changes)
            rows.append(f"| {recipe} | {seed} | {', '.join(sources)} | {epochs} | {z:g} | {cells} |")
    if not rows:
        return ""
    return ("\n\nSeed spread: the largest |seed 0 - seed N| over the sources both held out (2 px ODS F). Where "
            "the two runs trained different numbers of epochs (the same --max-minutes on a slower machine), "
            "a row measures the seed and the budget together, not the seed spread.\n\n"
            "| recipe | seed | sources | epochs, seed 0 / seed N | zoom | fixed 1 | auto | best fixed factor |\n"
            "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))


def render_table(record: Path) -> str:
    """Every recorded experiment under today's scales.choose, replayed from its arrays (the line's own
    policies are those of the rule it was recorded under); then the summary per recipe."""
    done = read_record(record)
    rows = ["| experiment | zoom | label width (px) | fixed 1: ODS / F at t | auto: ODS / F at t | "
            "best fixed factor: ODS | fuse: ODS |", "|---|---|---|---|---|---|---|"]
    for name, line in done.items():
        policies = replay(load_arrays(record, line), scales.choose)
        for i, (z, r) in enumerate(policies.items()):
            rows.append(f"| {name} | {float(z):g} | {line['zoom']['label_width_px'][i]:.1f} | "
                        f"{r['fixed_1'][0]:.3f} / {r['fixed_1'][1]:.3f} | {r['auto'][0]:.3f} / {r['auto'][1]:.3f} | "
                        f"{r['oracle'][0]:g}: {r['oracle'][1]:.3f} | {r['fuse'][0]:.3f} |")
    groups = recipe_groups(done, record)
    fused = render_fused(groups)
    return "\n".join(rows) + "\n\n" + render_summary(groups, done) + (f"\n\n{fused}" if fused else "")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
