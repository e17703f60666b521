"""Cracks at a camera's zoom, on ten sources: each scored by a model that never trained on it, every
allowed factor's map of every photo recorded, so that any auto rule is replayed without predicting again
(benchmarks/autorule.py chooses the rule from these records).

    python benchmarks/framezoom.py --list                   # every experiment's exact commands
    python benchmarks/framezoom.py --commit                 # run what the record lacks, committing each line
    python benchmarks/framezoom.py --table-only             # the tables, from the record alone
    python benchmarks/framezoom.py --score RUN --source CFD --zooms 1 2 --out models/x   # one run's scores

Zoom as a camera zooms (augment.zoom_frame): zoom-in enlarges the photo and cuts it back to its own
frame size around a seeded crack pixel (the same window for every factor and rule), zoom-out shrinks
the whole photo. benchmarks/zoom.py's zoom enlarged whole photos (a 544x384 photo at zoom 4 became
2176x1536, blurry and smooth): its rows stay as a separate table and no longer decide.

Sources and models:
- the four old sources (DEEPCRACK_TEST, CFD, CRACKMAP, MASONRY) at zooms 0.5, 1, 2 and 4, each scored
  by the chosen recipe (zoomrecord.CHOSEN) trained on the three others for STEPS optimizer steps (equal
  steps: a wall-clock budget trains fewer on a CPU without native bf16);
- UAVCRACKX8 at zooms 0.5, 1, 2, 4, and UAVCRACKX4, UAVCRACKX16 (the same road at the drone camera's
  other optical zooms: the ladder), GAPS384, AIGLERN, SHADOWCRACK at their own zoom, by the bundle,
  which never saw any of them.
For every photo and factor the record keeps the 2 px counts at thresholds 0.00, 0.05, ..., 1.00 and at
the model's threshold, the label-free scales.features(), and the counts of the chosen map fused with
the map at 1 (WINDOWS); and the same for the model's own validation images at their zoom, from which
each policy's threshold is chosen (fixed 1's from maps at 1, auto's from maps made under auto).
"""
import argparse
import json
import os
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))   # runner, when run by render_docs.py

import metrics  # noqa: E402
import scales  # noqa: E402
from augment import zoom_frame  # noqa: E402
from dataset import read_sample, scan_dataset, split_ids  # noqa: E402
from rundir import read_split  # noqa: E402
from autorule import RECORD, TEN_PREFIX, WINDOWS, render_shrink_gates, render_tables, render_ten_tables  # noqa: E402
from runner import (CAMERA, GROUP_TEST, MODELS, ROOT, SHIPPED, TEST, TRAIN, UPSAMPLING, add_common_args,  # noqa: E402
                    finished_training, network_args, other_groups, others, read_record, run_all, steps_recipe,
                    training_summary)
import sourcegroups  # noqa: E402
import zoomrecord  # noqa: E402
from zoomrecord import ARMS, CHOSEN, label_width, load_unseen, read_arrays, save_arrays, score_maps  # noqa: E402

STEPS, EPOCH_SIZE, BATCH = 4000, 400, 4        # optimizer steps of every leave-one-out run: 40 epochs of 400 crops
SAFETY_MINUTES = 150                           # --max-minutes as a net only: the steps end the run
ZOOMS = (0.5, 1.0, 2.0, 4.0)
BUNDLE = "crackseg-general"
ZOOMED_NEW = ["UAVCRACKX8"]                    # a new source at every zoom
NATIVE_NEW = ["UAVCRACKX4", "UAVCRACKX16", "GAPS384", "AIGLERN", "SHADOWCRACK"]   # at their own zoom
PREFIX = "zoom_"


def loo_name(source: str) -> str:
    return f"{CHOSEN}_{STEPS}steps_{source}"


def experiments() -> dict[str, dict]:
    found = {loo_name(s): {"source": TEST[s], "train": others(s), "zooms": ZOOMS, "run": PREFIX + loo_name(s)}
             for s in TRAIN}
    found.update({f"bundle_{s}": {"source": s, "train": None, "zooms": ZOOMS if s in ZOOMED_NEW else (1.0,),
                                  "run": BUNDLE} for s in ZOOMED_NEW + NATIVE_NEW})
    return found | ten_source_experiments()


def ten_source_experiments() -> dict[str, dict]:
    """The ten-source bundle's recipe (sourcegroups.CHOSEN) at the same zooms: every source scored by that
    recipe's run without the source's group (tensources.py trains them); kept apart from the rows the
    auto rule was chosen on (autorule.TEN_PREFIX), they check that rule with the new bundle's recipe."""
    if not sourcegroups.CHOSEN:
        return {}
    group_of = {test: g for g, tests in GROUP_TEST.items() for test in tests}
    sources = [*TEST.values(), *ZOOMED_NEW, *NATIVE_NEW]
    return {f"{TEN_PREFIX}{s}": {"source": s, "train": None, "zooms": ZOOMS if s in TEST.values() or s in ZOOMED_NEW
                                 else (1.0,), "run": f"{sourcegroups.PREFIX}{sourcegroups.CHOSEN}_{group_of[s]}",
                                 "group": group_of[s]}
            for s in sources}


EXPERIMENTS = experiments()


def train_command(args, e: dict) -> list[str]:
    """The chosen recipe without the held-out source, for STEPS optimizer steps."""
    recipe = steps_recipe(STEPS, EPOCH_SIZE, BATCH)
    return [sys.executable, "train.py", "--dataset", *e["train"], "--data-dir", args.data_dir, "--name", e["run"],
            "--overwrite", "--max-minutes", str(SAFETY_MINUTES), *recipe, *CAMERA, *network_args(SHIPPED),
            *UPSAMPLING, *ARMS[CHOSEN]]


def score_command(args, name: str, e: dict) -> list[str]:
    return [sys.executable, "benchmarks/framezoom.py", "--score", e["run"], "--source", e["source"],
            "--zooms", *(f"{z:g}" for z in e["zooms"]), "--data-dir", args.data_dir,
            "--out", str(Path("models") / f"framezoom_{name}")]


def commands(args, name: str) -> list[list[str]]:
    e = EXPERIMENTS[name]
    if "group" in e:   # a ten-source run is tensources.py's: trained again only on a machine that lacks it
        return [ten_source_training(args, e["group"]), score_command(args, name, e)]
    return ([train_command(args, e)] if e["train"] else []) + [score_command(args, name, e)]


def ten_source_training(args, group: str) -> list[str]:
    run = f"{sourcegroups.PREFIX}{sourcegroups.CHOSEN}_{group}"
    return sourcegroups.train_command(args.data_dir, run, other_groups(group), sourcegroups.CHOSEN, group)


def already_trained(cmd: list[str]) -> bool:
    """A run that finished its planned steps on this machine (runner.finished_training): a leave-one-out
    run the queue trained before the scores' code was committed (zoom.py's chosen: depth 5), or the
    ten-source recipe's run tensources.py trained."""
    ten_source = cmd[1] == "train.py" and cmd[cmd.index("--name") + 1].startswith(sourcegroups.PREFIX)
    return finished_training(cmd, None if ten_source else {"depth": 5})


# ---------------------------------------------------------------- scoring one model on one source

def validation_samples(run: str, data_dir: Path, split: dict | None = None) -> list:
    """The run's validation images, where its threshold for each policy is chosen: from its split.json,
    or from `split` ({DATASET: {"val": [stems]}}, in --dataset order) where that file is gone."""
    chosen = []
    for dataset, parts in (split or read_split(run)).items():
        val = set(parts["val"])
        chosen += [s for s in scan_dataset(data_dir, dataset)[0] if s.stem in val]
    return chosen


def score_block(predictor, labelled: list[tuple], t_index: int) -> dict:
    """score_maps over a list of (image, mask, roi), stacked."""
    parts = [score_maps(predictor, item, t_index, WINDOWS) for item in labelled]
    found = {key: np.stack([p[i] for p in parts]) for i, key in enumerate(("counts", "features", "valid", "live"))}
    return found | {"short_side": np.array([min(image.shape[:2]) for image, _, _ in labelled])}


def window_seed(stem: str, z: float) -> np.random.Generator:
    """The frame of a zoomed photo: the same for every run, factor and rule."""
    return np.random.default_rng([zlib.crc32(stem.encode()), round(z * 1000)])


def score_run(run: str, source: str, data_dir: Path, zooms, out: Path) -> dict:
    """Every zoom of `source` and the run's validation images scored; arrays and info into `out`."""
    predictor = load_unseen(run, source)
    config = predictor.config
    t_index = metrics.threshold_index(config["threshold"])
    val = score_block(predictor, [read_sample(s) for s in validation_samples(run, data_dir)], t_index)
    samples = scan_dataset(data_dir, source)[0]
    blocks, widths = [], []
    for z in zooms:
        labelled = []
        for sample in samples:
            image, mask, roi = read_sample(sample)
            image, (mask, roi) = zoom_frame(image, [mask, roi], z, window_seed(sample.stem, z))
            labelled.append((image, mask, roi))
        blocks.append(score_block(predictor, labelled, t_index))
        widths.append(label_width([mask for _, mask, _ in labelled]))
        print(f"{run} {source} zoom {z:g}: done, median label width {widths[-1]:.1f} px", flush=True)
    arrays = {key: np.stack([b[key] for b in blocks]) for key in blocks[0]}
    arrays.update({f"val_{key}": value for key, value in val.items() if key != "live"})
    out.mkdir(parents=True, exist_ok=True)
    save_arrays(out / "arrays.json.gz", {**arrays, "names": np.array([s.stem for s in samples]),
                                         "zooms": np.array(zooms), "windows": windows_array()})
    info = {"source": source, "zooms": list(zooms), "threshold": config["threshold"], "label_width_px": widths,
            "images": len(samples), "validation_images": int(val["counts"].shape[0]), "model": run}
    (out / "info.json").write_text(json.dumps(info))
    return info


def windows_array() -> np.ndarray:
    """WINDOWS as a rectangle (unused places 0), for the arrays file."""
    width = max(len(w) for w in WINDOWS)
    return np.array([list(w) + [0.0] * (width - len(w)) for w in WINDOWS])


def summarize(name: str, record: Path) -> dict:
    """The line's results; the arrays are copied beside `record` (committed with the line)."""
    e = EXPERIMENTS[name]
    out = MODELS / f"framezoom_{name}"
    info = json.loads((out / "info.json").read_text())
    line = {"attachments": [f"framezoom/{name}.json.gz"], "zoom": info, "model": e["run"]}
    (record.parent / "framezoom").mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "arrays.json.gz", record.parent / line["attachments"][0])
    if e["train"]:
        run = MODELS / e["run"]
        minutes = (os.path.getmtime(run / "log.csv") - os.path.getmtime(run / "split.json")) / 60
        line.update({"trained_on": e["train"], "steps": STEPS, "training": training_summary(e["run"]),
                     "training_wall_minutes": round(minutes, 1)})
    return line


# ---------------------------------------------------------------- photo sizes for older records

def zoomed_short_side(height: int, width: int, z: float, frame: bool) -> int:
    """The short side of a photo at zoom z: shrunk whole below 1; above it, the frame kept (this script)
    or the whole photo enlarged (zoom.py's earlier benchmark)."""
    if frame and z > 1:
        return min(height, width)
    return min(max(round(height * z), 1), max(round(width * z), 1))


TRAIN_SPLIT = (0.1, 0)   # train.py's --val-split and --seed defaults, which every run scored here kept


def rebuilt_split(name: str, data_dir: Path) -> dict:
    """The split of the run that scored experiment `name`, drawn again as train.py draws it, over its
    training sets in --dataset order: the leave-one-out run's, the ten-source recipe's without the
    group, or (bundle_ rows) the four-source bundle's."""
    e = EXPERIMENTS[name]
    datasets = other_groups(e["group"]) if "group" in e else e["train"] or list(TRAIN.values())
    return {d: {"val": split_ids([s.stem for s in scan_dataset(data_dir, d)[0]], *TRAIN_SPLIT)[1]}
            for d in datasets}


def exact_validation_sides(name: str, arrays: dict, data_dir: Path) -> np.ndarray:
    """The short sides of the validation photos of experiment `name`, checked against what the record
    kept of them: as many photos, and the shrinking factors scales.allowed() gives each size for the
    network's grid equal to those recorded valid."""
    rebuilt = validation_samples(EXPERIMENTS[name]["run"], data_dir, rebuilt_split(name, data_dir))
    sides = np.array([min(read_sample(s)[0].shape[:2]) for s in rebuilt])
    recorded = arrays["val_valid"][:, :len(scales.FACTORS)]
    shrink = np.array(scales.FACTORS) < 1
    agrees = len(sides) == len(recorded) and any(
        np.array_equal(sides[:, None] * np.array(scales.FACTORS)[shrink] >= scales.min_side(grid), recorded[:, shrink])
        for grid in (16, 32, 64))
    if not agrees:
        raise SystemExit(f"{name}: the rebuilt validation photos do not match its recorded ones; leave its sizes")
    return sides


def add_short_sides(data_dir: Path) -> list[str]:
    """Give every recorded arrays file its photos' short sides where it lacks them (made before sizes were
    kept: its test photos' from the photos, by name and zoom) or holds only a lower bound of its validation
    photos' (an earlier version of this step): what the replays need to strike the shrinking factors
    scales.candidates() strikes. Returns the files rewritten."""
    done = []
    for record, frame in ((RECORD, True), (zoomrecord.RECORD, False)):
        for name, line in read_record(record).items():
            if not line.get("attachments"):
                continue
            path = record.parent / line["attachments"][0]
            arrays = read_arrays(path)
            changed = "short_side" not in arrays
            if changed:
                samples = {s.stem: s for s in scan_dataset(data_dir, line["zoom"]["source"])[0]}
                shapes = [read_sample(samples[n])[0].shape[:2] for n in arrays["names"].tolist()]
                arrays["short_side"] = np.array([[zoomed_short_side(h, w, z, frame) for h, w in shapes]
                                                 for z in arrays["zooms"].tolist()])
            if "val_valid" in arrays and record == RECORD and name in EXPERIMENTS:
                sides = exact_validation_sides(name, arrays, data_dir)
                changed = changed or not np.array_equal(arrays.get("val_short_side"), sides)
                arrays["val_short_side"] = sides
            if changed:
                save_arrays(path, arrays)
                done.append(str(path.relative_to(ROOT)))
    return done


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, RECORD, list(EXPERIMENTS))
    p.add_argument("--score", metavar="RUN", help="score one model at every zoom (what an experiment runs)")
    p.add_argument("--source", help="with --score: the held-out source")
    p.add_argument("--zooms", type=float, nargs="+", default=list(ZOOMS), help="with --score: the zooms")
    p.add_argument("--out", type=Path, help="with --score: where the arrays go")
    p.add_argument("--add-short-sides", action="store_true",
                   help="only give recorded arrays their photos' exact sizes where they lack them (needs --data-dir)")
    args = p.parse_args()
    if args.add_short_sides:
        print("\n".join(add_short_sides(Path(args.data_dir))) or "every arrays file has its photo sizes")
        return
    if args.score:
        print(json.dumps(score_run(args.score, args.source, Path(args.data_dir), args.zooms, args.out)))
        return
    if not args.table_only:
        run_all({name: commands(args, name) for name in EXPERIMENTS}, args,
                lambda name: summarize(name, args.record), skip=already_trained)
    if not args.list:
        print(render_tables(args.record), render_ten_tables(args.record), render_shrink_gates(args.record),
              sep="\n\n")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
