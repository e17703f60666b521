"""Score crack probability maps with ODS / OIS / AP, strict and with a pixel tolerance.

    python evaluate.py --name SYNTHETIC_UNet --test SYNTHETIC            # its validation split only
    python evaluate.py --name run1 --test CRKWH100 CRACKLS315 --tolerance 0 2 --tta --save-images
    python evaluate.py --name run1 --test DEEPCRACK_TEST CFD --data-dir ../shared/data --device cpu
    python evaluate.py --pred-dir other_method/maps --test DEEPCRACK_TEST --data-dir ../shared/data

With --name the run's model predicts every image at full resolution with the run's own
preprocessing; with --pred-dir, 8-bit maps DIR/<stem>.png or DIR/<stem>_prob.png
(p = value/255) from any method are scored under the same protocol. Results go to
models/RUN/eval/DATASET/ (or DIR/eval/DATASET/) for the run's own settings, and to a folder named
after the settings given otherwise (DATASET_tta, DATASET_scale1, DATASET_last, DATASET_fp32 for
--precision fp32),
so no evaluation replaces another's: metrics.json, per_image.csv and, with --save-images,
<stem>_prob.png and <stem>_panel.jpg.
"""
import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

import metrics
from dataset import CrackDataset, DatasetError, Intensity, read_image, read_mask, read_raw, scan_dataset
from inference import EvalOptions, add_inference_options, evaluate
from engine import make_engine
from predictor import MapOptions, Predictor
from rundir import (MODELS_DIR, RUNS_DIR, RunError, eval_folder, json_dump, load_config, name_arg, provenance,
                    read_split, run_datasets, runs_arg)
from scales import scale_setting
from utils import run_cli
from visuals import error_overlay, label, save_probability, side_by_side, write_image


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--name", type=runs_arg,
                        help="run under models/ whose best.pt predicts the maps; RUN1+RUN2 = their "
                             "ensemble (mean probability), results under models/RUN1+RUN2/")
    source.add_argument("--pred-dir", type=Path, help="folder of 8-bit probability maps from any method")
    p.add_argument("--test", nargs="+", required=True, metavar="DATASET", type=name_arg,
                   help="datasets under --data-dir")
    p.add_argument("--data-dir", help="default: the run's --data-dir (inputs with --pred-dir or a bundled model)")
    p.add_argument("--tolerance", type=int, nargs="+", default=[0, 2],
                   help="pixel tolerances; 0 = strict, 2 = the crack-detection literature")
    p.add_argument("--save-images", action="store_true", help="write probability maps and panels")
    add_inference_options(p)
    return p


def get_args(argv=None) -> argparse.Namespace:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if min(args.tolerance) < 0:
        parser.error("--tolerance values must be >= 0 pixels (0 = strict matching)")
    return args


# ---------------------------------------------------------------- datasets

def test_samples(data_dir: Path, dataset: str, runs: list[str]):
    """A run's own training dataset is scored on that dataset's saved validation split only.

    For an ensemble: on the images in the validation split of every member trained on it,
    so that no member is scored on an image it trained on."""
    samples = scan_dataset(data_dir, dataset)[0]
    own = [run for run in runs if dataset in run_datasets(load_config(run))]   # by name: no other path can leak
    if own:
        val = set.intersection(*(set(read_split(run)[dataset]["val"]) for run in own))
        samples = [s for s in samples if s.stem in val]
        if not samples:
            raise RunError(f"{', '.join(own)} left no image of {dataset} outside every member's training set "
                           "(different or empty validation splits); evaluate them one by one")
        print(f"{dataset} is {' and '.join(own)}'s training set: scoring its {len(samples)} validation images only")
    return samples


def find_map(pred_dir: Path, stem: str) -> Path:
    for candidate in (pred_dir / f"{stem}.png", pred_dir / f"{stem}_prob.png"):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"no prediction map for {stem}: expected {pred_dir / stem}.png or {stem}_prob.png")


def read_map(path: Path, shape: tuple[int, int]) -> np.ndarray:
    prob = read_raw(path)
    if prob.dtype != np.uint8 or prob.ndim != 2:
        raise DatasetError(f"{path}: expected an 8-bit single-channel probability map "
                           f"(p = value/255), found {prob.dtype} with shape {prob.shape}")
    if prob.shape != shape:
        raise DatasetError(f"{path} is {prob.shape[1]}x{prob.shape[0]} but its mask is {shape[1]}x{shape[0]}")
    return prob


def score_pred_dir(pred_dir: Path, samples, tolerances) -> dict:
    """The same counts as evaluate() computes for a model, from maps on disk."""
    rows = []
    for sample in samples:
        mask = read_mask(sample.mask)
        prob = read_map(find_map(pred_dir, sample.stem), mask.shape)
        roi = read_mask(sample.roi) if sample.roi else None
        rows.append([metrics.image_counts(prob, mask, tolerance=t, roi=roi) for t in tolerances])
    return {"names": [s.stem for s in samples],
            "counts": {t: np.stack([row[i] for row in rows]) for i, t in enumerate(tolerances)}}


def score_run(predictor: Predictor, samples, tolerances: list[int], save_images: bool,
              out_dir: Path) -> tuple[dict, list[np.ndarray]]:
    """Predict with the run's own preprocessing. With --save-images, keep each probability map and a
    panel drawn from it at once; returns the result and the first three panels (for TensorBoard)."""
    by_stem, panels = {s.stem: s for s in samples}, []

    def save(item, prob):
        save_probability(out_dir / f"{item['name']}_prob.png", prob)
        panel = error_panel(by_stem[item["name"]], prob, predictor.threshold)
        write_image(out_dir / f"{item['name']}_panel.jpg", panel)
        if len(panels) < 3:
            panels.append(panel)
    data = CrackDataset(samples, Intensity.from_config(predictor.config))
    options = EvalOptions(tolerances=tuple(tolerances))
    result = evaluate(predictor, data, options, on_image=save if save_images else None)
    return result, panels


def error_panel(sample, prob: np.ndarray, threshold: float) -> np.ndarray:
    """input | ground truth | prediction | TP/FP/FN overlay, the prediction at the run's stored
    threshold (what predict.py's masks use), which is printed on it."""
    image, mask = read_image(sample.image), read_mask(sample.mask)
    pred = prob > threshold
    return side_by_side([image, mask, label(pred, f"p > {threshold:.2f}"),
                         error_overlay(image, pred, mask)])


# ---------------------------------------------------------------- reporting

def summarize_all(result: dict, dataset: str, tolerances, threshold: float | None = None) -> tuple[dict, list[dict]]:
    """metrics.json's content and per_image.csv's rows; with a run's threshold, also the scores at it
    (what predict.py's masks get), per tolerance and per image."""
    summary = {"dataset": dataset, "images": len(result["names"]), "results": []}
    per_image = []
    for t in tolerances:
        counts = result["counts"][t]
        s = metrics.summarize(counts)
        entry = {"tolerance": t, **{k: s[k] for k in ("ods", "ois", "ods_mean", "ois_mean", "ap")},
                 "f1_curve": [round(float(f), 6) for f in metrics.f1_curve(counts)]}   # F at t = 0.00 ... 1.00
        rows = [{"tolerance": t, "name": name, **row}
                for name, row in zip(result["names"], s["per_image"], strict=True)]
        if "factors" in result:   # a model's maps, not --pred-dir's
            for row, factor in zip(rows, result["factors"], strict=True):
                row["scale"] = factor
        if threshold is not None:
            k = metrics.threshold_index(threshold)
            at_run = metrics.scores_at(counts, k)
            entry["at_run_threshold"] = {"threshold": threshold,
                                         **{m: at_run[m] for m in ("precision", "recall", "f1")}}
            for row, image in zip(rows, counts, strict=True):
                row["f1_at_run"] = metrics.scores_at(image, k)["f1"]
        summary["results"].append(entry)
        per_image += rows
    return summary, per_image


def write_results(out_dir: Path, summary: dict, per_image: list[dict]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_dump(out_dir / "metrics.json", summary)
    with open(out_dir / "per_image.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(per_image[0]))
        writer.writeheader()
        writer.writerows(per_image)


def print_table(summaries: list[dict]) -> None:
    print(f"{'dataset':<18}{'tol':>4}{'images':>7}{'ODS t':>7}{'ODS P':>7}{'ODS R':>7}{'ODS F':>7}"
          f"{'OIS F':>7}{'mODS F':>8}{'mOIS F':>8}{'AP':>7}{'run t':>7}{'run F':>7}")
    for s in summaries:
        for r in s["results"]:
            o, run = r["ods"], r.get("at_run_threshold")
            print(f"{s['dataset']:<18}{r['tolerance']:>4}{s['images']:>7}{o['threshold']:>7.2f}"
                  f"{o['precision']:>7.4f}{o['recall']:>7.4f}{o['f1']:>7.4f}{r['ois']['f1']:>7.4f}"
                  f"{r['ods_mean']['f1']:>8.4f}{r['ois_mean']['f1']:>8.4f}{r['ap']:>7.4f}"
                  + (f"{run['threshold']:>7.2f}{run['f1']:>7.4f}" if run else f"{'-':>7}{'-':>7}"))


def log_tensorboard(run: str, summary: dict, result: dict, panels: list[np.ndarray]) -> None:
    """PR curves from the counts already made, and example panels, next to the training curves."""
    with SummaryWriter(RUNS_DIR / run) as writer:
        for t in result["counts"]:
            curve = metrics.pr_curve(result["counts"][t])
            writer.add_pr_curve_raw(f"eval/{summary['dataset']}/pr_tolerance_{t}", global_step=0, **curve)
        for i, panel in enumerate(panels):
            writer.add_image(f"eval/{summary['dataset']}/panel_{i}", panel, 0, dataformats="HWC")


# ---------------------------------------------------------------- main

def other_settings(args, own_scale) -> dict[str, str]:
    """The settings of this evaluation that are not the run's own (the folder's name says them)."""
    differs = {"tta": ""} if args.tta else {}
    if args.name and args.scale is not None:
        differs.update(scale_setting(args.scale, own_scale))
    if args.name and args.checkpoint != "best.pt":
        differs[Path(args.checkpoint).stem] = ""
    if args.name and args.precision != "auto":
        differs[args.precision] = ""
    return differs


def main() -> int:
    # 1. arguments, device, model
    args = get_args()
    config = predictor = None
    own_scale = None
    if args.name:
        predictor = Predictor.load(args.name, checkpoint=args.checkpoint, options=MapOptions(tta=args.tta),
                                   engine=make_engine(args.device, args.precision, args.channels_last))
        own_scale, engine = predictor.scale, predictor.engine
        predictor = predictor.at_scale(args.scale)   # and the threshold chosen under it, where the run keeps one
        config = predictor.config
        print(f"{args.name}: {config['arch']} ({args.checkpoint}), {engine.describe()}, scale {config['scale']}")
    data_dir = Path(args.data_dir or (config or {}).get("data_dir", "inputs"))   # a bundle keeps no local path
    summaries = []
    for dataset in args.test:
        # 2. the images to score
        samples = test_samples(data_dir, dataset, args.name.split("+") if args.name else [])
        out_dir = (MODELS_DIR / args.name if args.name else args.pred_dir) / "eval" / \
            eval_folder(dataset, other_settings(args, own_scale))
        # 3. counts for every threshold and tolerance in one pass per image
        if args.name:
            result, panels = score_run(predictor, samples, args.tolerance, args.save_images, out_dir)
        else:
            result = score_pred_dir(args.pred_dir, samples, args.tolerance)
        # 4. reports
        summary, per_image = summarize_all(result, dataset, args.tolerance, config["threshold"] if config else None)
        if args.name:
            summary["made_by"] = {**engine.record(), "checkpoint": config["checkpoint"],
                                  "commit": provenance()["git_commit"], "tta": args.tta, "scale": config["scale"]}
            summary["scales"] = dict(zip(result["names"], result["factors"], strict=True))
        write_results(out_dir, summary, per_image)
        if args.name:
            log_tensorboard(args.name, summary, result, panels)
        summaries.append(summary)
        print(f"wrote {out_dir}")
    print_table(summaries)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_cli(main)
