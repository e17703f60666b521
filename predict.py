"""Predict crack maps for photos of any size with a trained run, and measure the cracks.

    python predict.py photo.jpg                                    # the bundled model (when shipped)
    python predict.py --name dc_main photo.jpg                     # -> models/dc_main/predictions/
    python predict.py --name dc_main survey/ --out survey_cracks --overlay   # a folder, recursively
    python predict.py --name dc_main "site/**/*.jpg" --mm-per-px 0.25 --min-area 50
    python predict.py --name SYNTHETIC_UNet inputs/SYNTHETIC/images --device cpu   # CPU smoke run
    python evaluate.py --pred-dir models/dc_main/predictions --test CFD --data-dir ../shared/data

INPUT is an image file, a folder (searched recursively for .jpg .png .bmp .tif .webp .heic) or a quoted
glob pattern. Outputs mirror the input tree under --out (a file given by name lands at the top):
<stem>_prob.png (p = value/255, scorable by evaluate.py --pred-dir), <stem>_mask.png (0/255,
p > threshold), with --overlay <stem>_overlay.jpg, and summary.csv with one row per image.
The threshold is the run's validation ODS threshold from config.json (0.5 if absent).

Images up to --tile pixels a side are predicted in one pass, larger ones in overlapping
tiles blended with a smooth window (inference.predict_probability, the path evaluate.py uses).
Unlike the dataset loader, photos are turned upright by their EXIF orientation tag (phones
store portraits sideways), so every output and width/height in summary.csv are in the upright
frame. Gray and RGBA files are read as RGB (alpha dropped); 16-bit files scaled to 8-bit.

Measurements (summary.csv) use the mask without its pieces under --min-area pixels (noise);
the written mask keeps them. Length is that of the skeleton (Zhang-Suen thinning): 1 per axial
and sqrt(2) per diagonal link: exact along rows, columns and diagonals, up to ~12% long at
angles in between (the skeleton zigzags). Width at each skeleton pixel comes from a precise
distance transform of the mask upsampled 2x (see measure.crack_widths): exact for every width along rows
and columns, the mean within 0.4 px at any angle for widths 1 to 8 (tests/test_predict.py).
Exit status: 0 all images done, 1 some unreadable (named on stderr, the rest done), 2 usage error.
"""
import argparse
import csv
import glob
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from dataset import HEIF_EXTENSIONS, IMAGE_EXTENSIONS, DatasetError, Intensity, check_header, preprocess, read_heif
from engine import make_engine
from inference import OVERLAP, TILE, add_inference_options, load_runs, predict_scaled
from measure import measure
from rundir import DEFAULT_BUNDLE, MODELS_DIR, PRETRAINED_DIR, REPO_DIR, RunError, bundle_dir, runs_arg
from utils import run_cli
from visuals import crack_overlay, save_probability, write_image

COLUMNS = ["image", "width", "height", "scale", "threshold", "crack_fraction", "components", "length_px",
           "mean_width_px", "max_width_px"]
MM_COLUMNS = ["length_mm", "mean_width_mm", "max_width_mm"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", type=runs_arg,
                   help="run under models/ (or bundled model) that predicts; RUN1+RUN2 = their ensemble "
                        f"(mean probability); default: the bundled {DEFAULT_BUNDLE}")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or quoted glob patterns")
    p.add_argument("--out", type=Path, help="output folder (default: models/RUN/predictions/)")
    p.add_argument("--threshold", type=float, help="crack where p > this (default: the run's, else 0.5)")
    p.add_argument("--overlay", action="store_true", help="also write the photo with cracks drawn in magenta")
    p.add_argument("--min-area", type=int, default=20, help="pieces under this many pixels are not measured")
    p.add_argument("--mm-per-px", type=float, help="scale of the photos: adds lengths and widths in mm")
    p.add_argument("--tile", type=int, default=TILE,
                   help="largest side predicted in one pass; lower it (e.g. 512) if memory runs out")
    p.add_argument("--overlap", type=int, default=OVERLAP, help="pixels shared by neighbouring tiles")
    add_inference_options(p)
    return p


def get_args(argv=None) -> argparse.Namespace:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.tile < 32 or args.tile % 16 or args.overlap % 16 or not 0 <= args.overlap < args.tile:
        # multiples of 16 keep the tiles on the network's pooling grid
        parser.error("need --tile and --overlap multiples of 16 with --tile >= 32 and 0 <= --overlap < --tile")
    if args.threshold is not None and not 0 <= args.threshold < 1:
        parser.error("--threshold must be in [0, 1)")
    if args.mm_per_px is not None and args.mm_per_px <= 0:
        parser.error("--mm-per-px must be positive")
    return args


# ---------------------------------------------------------------- finding and reading images

def images_under(root: Path, paths: list[Path], out_dir: Path) -> list[tuple[Path, Path]]:
    """(image, path relative to root) for image files among paths and inside folders among them."""
    files = []
    for path in paths:
        files += sorted(path.rglob("*")) if path.is_dir() else [path]
    return [(f, f.relative_to(root)) for f in files
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in f.relative_to(root).parts)
            and not f.resolve().is_relative_to(out_dir)]  # earlier outputs are not inputs


def glob_root(pattern: str) -> Path:
    """The folders before the first wildcard: a glob's matches are mirrored relative to them."""
    parts = []
    for part in Path(pattern).parts:
        if any(c in part for c in "*?["):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def find_inputs(patterns: list[str], out_dir: Path) -> list[tuple[Path, Path]]:
    """Every INPUT as (image, output path relative to --out); a glob mirrors the tree below its fixed part."""
    found: dict[Path, tuple[Path, Path]] = {}
    missing = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_file():  # named explicitly: taken whatever its extension
            pairs = [(path, Path(path.name))]
        elif path.is_dir():
            pairs = images_under(path, [path], out_dir)
        else:
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
            pairs = images_under(glob_root(pattern), matches, out_dir)
        if not pairs:
            missing.append(pattern)
        for image, rel in pairs:
            found.setdefault(image.resolve(), (image, rel))  # a file reached twice is done once
    if missing:
        raise DatasetError(f"no images found for {', '.join(map(repr, missing))}: give image files, folders "
                           f"or quoted glob patterns such as 'photos/**/*.jpg' ({' '.join(sorted(IMAGE_EXTENSIONS))})")
    by_output: dict[Path, list[Path]] = {}
    for image, rel in found.values():
        by_output.setdefault(rel.with_suffix(""), []).append(image)
    clashes = [" and ".join(map(str, images)) for images in by_output.values() if len(images) > 1]
    if clashes:
        raise DatasetError("these inputs would write the same outputs; rename one or predict them "
                           "separately: " + "; ".join(clashes))
    return list(found.values())


def check_out_dir(out_dir: Path, patterns: list[str], items: list[tuple[Path, Path]]) -> None:
    """--out may be any folder except one that is, or holds, an input, the working directory, the
    repository or the home directory: outputs written there would land among the user's own files."""
    out = out_dir.resolve()
    protected = [("the working directory", Path.cwd()), ("the repository", REPO_DIR),
                 ("the home directory", Path.home())]
    protected += [(f"the input {glob_root(p)}", glob_root(p)) for p in patterns if glob_root(p).exists()]
    protected += [(f"the input {image}", image) for image, _ in items]
    for what, path in protected:
        if path.resolve().is_relative_to(out):
            raise RunError(f"--out {out_dir} is or contains {what}; give a new or empty folder of its own "
                           "(for example --out predictions/run1)")


def read_photo(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB, upright: IMREAD_COLOR applies the EXIF orientation (dataset.read_image does not)."""
    check_header(path)
    if path.suffix.lower() in HEIF_EXTENSIONS:
        return cv2.cvtColor(read_heif(path), cv2.COLOR_BGR2RGB)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise DatasetError(f"{path}: OpenCV cannot decode it (truncated, corrupt or an unsupported format)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------- one image

def predict_image(path: Path, model, engine, intensity: Intensity, args) -> tuple[np.ndarray, np.ndarray, float]:
    """(HxWx3 uint8 RGB photo, HxW float32 crack probability at full resolution, the scale it was seen at)."""
    image = read_photo(path)
    x = preprocess(image, intensity, str(path))                           # HxWx3 float32
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]  # 1x3xHxW
    scaled = predict_scaled(model, x, engine, args.scale, args.tta, args.tile, args.overlap)
    return image, scaled.prob[0, 0].numpy(), scaled.factor


def summary_row(rel: Path, mask: np.ndarray, threshold: float, factor: float, args) -> dict:
    stats = measure(mask, args.min_area)
    row = {"image": rel.as_posix(), "width": mask.shape[1], "height": mask.shape[0], "scale": factor,
           "threshold": threshold,
           "crack_fraction": round(stats["crack_fraction"], 6), "components": stats["components"],
           **{k: round(stats[k], 2) for k in ("length_px", "mean_width_px", "max_width_px")}}
    if args.mm_per_px:
        for key in ("length_px", "mean_width_px", "max_width_px"):
            row[key.replace("_px", "_mm")] = round(stats[key] * args.mm_per_px, 4)
    return row


def out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's refusal, which PyTorch raises as a RuntimeError."""
    text = str(err).lower()
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in text \
        or "can't allocate memory" in text or "not enough memory" in text


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def release_memory(engine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    # 1. arguments, device, model and threshold
    args = get_args(argv)
    if args.name is None:
        if not bundle_dir(DEFAULT_BUNDLE):
            raise RunError(f"no --name given and no bundled model in {PRETRAINED_DIR / DEFAULT_BUNDLE}; "
                           "name a run under models/ with --name")
        args.name = DEFAULT_BUNDLE
        print(f"no --name: using the bundled model {DEFAULT_BUNDLE} ({bundle_dir(DEFAULT_BUNDLE)})")
    out_dir = args.out or MODELS_DIR / args.name / "predictions"
    engine = make_engine(args.device, args.precision, args.channels_last)
    model, config = load_runs(args.name, engine, args.checkpoint)
    intensity = Intensity.from_config(config)
    threshold = config["threshold"] if args.threshold is None else args.threshold
    args.scale = config["scale"] if args.scale is None else args.scale
    source = config["threshold_source"] if args.threshold is None else "--threshold"
    # 2. the images: a missing INPUT stops everything before any work, as a typo should
    check_out_dir(out_dir, args.inputs, [])
    items = find_inputs(args.inputs, out_dir.resolve())
    check_out_dir(out_dir, args.inputs, items)
    print(f"{args.name}: {config['arch']} ({args.checkpoint}), {engine.describe()}, "
          f"threshold {threshold:g} ({source}), scale {args.scale}; {len(items)} image(s) -> {out_dir}")
    # 3. one image at a time (sizes differ; batching gains little next to decoding and writing);
    #    an unreadable file is reported and skipped, the rest still done
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    with open(out_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + (MM_COLUMNS if args.mm_per_px else []))
        writer.writeheader()
        for path, rel in tqdm(items, unit="image", file=sys.stderr):
            try:
                image, prob, factor = predict_image(path, model, engine, intensity, args)
            except DatasetError as err:
                tqdm.write(f"skipped {err}", file=sys.stderr)
                failed.append(path)
                continue
            except (MemoryError, RuntimeError) as err:   # torch.OutOfMemoryError is a RuntimeError
                if not out_of_memory(err):
                    raise
                tqdm.write(f"skipped {path}: out of memory ({first_line(err)}); lower --tile "
                           f"(now {args.tile}, e.g. --tile {max(args.tile // 2, 256)}) or use --device cpu",
                           file=sys.stderr)
                failed.append(path)
                release_memory(engine)
                continue
            mask = prob > threshold
            base = out_dir / rel.parent / rel.stem
            save_probability(Path(f"{base}_prob.png"), prob)  # also makes the folder
            write_image(Path(f"{base}_mask.png"), mask.astype(np.uint8) * 255)
            if args.overlay:
                write_image(Path(f"{base}_overlay.jpg"), crack_overlay(image, mask))
            writer.writerow(summary_row(rel, mask, threshold, factor, args))
            f.flush()  # a long run interrupted still leaves the rows done so far
    # 4. report
    print(f"wrote {len(items) - len(failed)} prediction(s) and summary.csv to {out_dir}"
          + (f"; {len(failed)} file(s) skipped (unreadable or out of memory): {', '.join(map(str, failed))}"
             if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_cli(main)
