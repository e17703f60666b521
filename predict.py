"""Predict crack maps for photos of any size with a trained run, measure every crack, and report.

    python predict.py photos/                                      # the bundled model -> ./predictions/...
    python predict.py photos/ --report --mm-per-px 0.5             # + report.html, widths in mm and classes
    python predict.py --name dc_main survey/ --out survey_cracks   # a run of yours, a folder of your choice
    python predict.py --name dc_main "site/**/*.jpg" --min-area 50 --width-classes 0.3 1 3
    python predict.py --name SYNTHETIC_UNet inputs/SYNTHETIC/images --device cpu   # CPU smoke run
    python evaluate.py --pred-dir predictions/<run>-<time> --test CFD --data-dir ../shared/data

INPUT is an image file, a folder (searched recursively for .jpg .png .bmp .tif .webp .heic; folders
holding a .crackseg-predictions marker, earlier outputs, are skipped) or a quoted glob pattern.
Outputs go to --out (default ./predictions/<run>-<YYYYmmdd-HHMMSS>/, a new folder each run; an
existing one is refused unless empty or --overwrite, which replaces only an earlier run's outputs:
outputs.py), mirroring the input tree (a file given by name lands at the top):
<stem>_prob.png (p = value/255, scorable by evaluate.py --pred-dir), <stem>_mask.png (0/255, the
counted cracks: p > threshold without pieces under --min-area), <stem>_overlay.jpg (the counted
cracks outlined in magenta, their pixels as photographed, with their ids; --no-overlay: none),
summary.csv (one row per photo, with its EXIF position and time), cracks.csv (one row per crack),
cracks.geojson (the positioned photos) and with --report a self-contained report.html (report.py).
The threshold is the run's validation ODS threshold from config.json (0.5 if absent).

Images up to --tile pixels a side are predicted in one pass, larger ones in overlapping
tiles blended with a smooth window (inference.predict_probability, the path evaluate.py uses).
Unlike the dataset loader, photos are turned upright by their EXIF orientation tag (phones
store portraits sideways), so every output and every position and angle in the CSVs are in the
upright frame. Gray and RGBA files are read as RGB (alpha dropped); 16-bit files scaled to 8-bit.

Measurements (measure.measure_cracks): a crack is an 8-connected piece of the mask. Its length is
that of its skeleton (Zhang-Suen thinning; 1 per axial and sqrt(2) per diagonal link) plus half the
width at each end, exact along rows, columns and diagonals, up to ~8% long at angles in between for
cracks up to 3 px wide and ~16% for 8 px wide ones (the skeleton zigzags);
its width at each skeleton pixel comes from a precise distance transform of the mask upsampled 2x
(exact along rows and columns, the mean within 0.4 px at any angle for widths 1 to 8); its max
width is the 95th percentile along the skeleton; its orientation the principal axis: longitudinal
within 20 degrees of the photo's vertical, transverse within 20 degrees of its horizontal, else
diagonal. Width classes (with --mm-per-px) come from the mean width and --width-classes.
Exit status: 0 all images done, 1 some unreadable (named on stderr, the rest done), 2 usage error.
"""
import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataset import IMAGE_EXTENSIONS, DatasetError
from engine import make_engine
from inference import OVERLAP, TILE, add_inference_options, reporting_tiles
from measure import class_names, crack_summary, measure_cracks, width_class
import scales
from outputs import (MARKER, check_out_dir, check_resume, clear_ranks, default_out, prepare_out_dir, rank_done,
                     ranks_done, read_records, record_path, write_record, write_tables, write_text_whole, write_whole)
import photometa
from photometa import read_where_and_when
from predictor import MapOptions, Predictor, read_photo
from rundir import DEFAULT_BUNDLE, PRETRAINED_DIR, RunError, bundle_dir, runs_arg
from utils import run_cli
from visuals import crack_overlay, label_cracks, probability_png

COLUMNS = ["image", "width", "height", "scale", "threshold", "crack_found", "cracks", "crack_fraction",
           "length_px", "longest_px", "mean_width_px", "max_width_px"]
MM_COLUMNS = ["length_mm", "longest_mm", "mean_width_mm", "max_width_mm"]
CRACK_COLUMNS = ["image", "crack", "x", "y", "w", "h", "length_px", "mean_width_px", "median_width_px",
                 "max_width_px", "area_px", "angle_deg", "orientation"]
CRACK_MM_COLUMNS = ["length_mm", "mean_width_mm", "median_width_mm", "max_width_mm", "area_mm2", "width_class"]
# Example edges only (mean width, mm): hairline < 1 <= medium < 3 <= wide. Practice differs by surface:
# concrete codes tolerate 0.1-0.4 mm, pavement surveys grade severity at about 6 and 19 mm. Set yours.
WIDTH_CLASSES = (1.0, 3.0)
TILE_BAR_FROM = 5   # photos of more tiles than this minus one get a bar of their own


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", type=runs_arg,
                   help="run under models/ (or bundled model) that predicts; RUN1+RUN2 = their ensemble "
                        f"(mean probability); default: the bundled {DEFAULT_BUNDLE}")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or quoted glob patterns")
    p.add_argument("--out", type=Path, help="output folder (default: ./predictions/<run>-<YYYYmmdd-HHMMSS>/)")
    p.add_argument("--resume", type=Path, metavar="OUT",
                   help="finish a stopped run in its output folder OUT: photos whose files are complete are "
                        "kept, the rest predicted, the summaries rebuilt (refused if the settings differ)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out, only if an earlier predict.py run made it (its marker) "
                        "and it holds no input")
    p.add_argument("--threshold", type=float, help="crack where p > this (default: the run's, else 0.5)")
    p.add_argument("--overlay", action=argparse.BooleanOptionalAction, default=True,
                   help="write the photo with the counted cracks outlined in magenta and their ids (default: on)")
    p.add_argument("--report", action="store_true",
                   help="also write report.html: every photo, most crack length first (writes the overlays)")
    p.add_argument("--min-area", type=int, default=20, help="pieces under this many pixels are not cracks")
    p.add_argument("--mm-per-px", type=float, help="scale of the photos: adds lengths and widths in mm")
    p.add_argument("--width-classes", type=float, nargs="+", default=list(WIDTH_CLASSES), metavar="MM",
                   help="edges of the width classes by mean width in mm, with --mm-per-px (default 1 3: "
                        "hairline / medium / wide; examples, not a standard)")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="who runs the network: PyTorch, or onnxruntime on export.py's models/RUN/model.onnx "
                        "(fp32; the same preprocessing, tiling and --scale)")
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
    if args.width_classes != sorted(set(args.width_classes)) or args.width_classes[0] <= 0:
        parser.error("--width-classes must be increasing positive widths in mm, e.g. 1 3")
    args.overlay = args.overlay or args.report   # the report's cards show the overlays
    if args.resume and (args.out or args.overwrite):
        parser.error("--resume OUT names the folder to finish: leave --out and --overwrite out")
    if args.min_area < 1:
        parser.error("--min-area must be >= 1")
    return args


# ---------------------------------------------------------------- finding and reading images

def walk_images(folder: Path) -> list[Path]:
    """Every file under `folder`, sorted, skipping folders that hold predict.py's marker (its outputs)."""
    files = []
    for root, dirs, names in os.walk(folder):
        if MARKER in names:
            dirs[:] = []
            continue
        dirs.sort()
        files += [Path(root) / n for n in sorted(names)]
    return files


def images_under(root: Path, paths: list[Path], out_dir: Path) -> list[tuple[Path, Path]]:
    """(image, path relative to root) for image files among paths and inside folders among them."""
    files = []
    for path in paths:
        files += walk_images(path) if path.is_dir() else [path]
    return [(f, f.relative_to(root)) for f in files
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in f.relative_to(root).parts)
            and not (f.parent / MARKER).is_file()          # a glob's match inside earlier outputs
            and not f.resolve().is_relative_to(out_dir)]  # this run's outputs are not inputs


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


def in_mm(row: dict, keys: list[str], mm_per_px: float) -> dict:
    """The mm columns of `keys` (lengths and widths; area in mm^2)."""
    return {k.replace("_px", "_mm").replace("area_mm", "area_mm2"):
            round(row[k] * (mm_per_px ** 2 if k == "area_px" else mm_per_px), 4) for k in keys}


def crack_rows(rel: Path, cracks: list[dict], args) -> list[dict]:
    rows = []
    for c in cracks:
        row = {"image": rel.as_posix(), "crack": c["id"], **{k: c[k] for k in ("x", "y", "w", "h")},
               **{k: round(c[k], 2) for k in ("length_px", "mean_width_px", "median_width_px", "max_width_px")},
               "area_px": c["area"], "angle_deg": c["angle_deg"], "orientation": c["orientation"]}
        if args.mm_per_px:
            row.update(in_mm(row, ["length_px", "mean_width_px", "median_width_px", "max_width_px", "area_px"],
                             args.mm_per_px))
            row["width_class"] = width_class(row["mean_width_mm"], args.width_classes)
        rows.append(row)
    return rows


def summary_row(rel: Path, kept: np.ndarray, cracks: list[dict], threshold: float, factor: float, args,
                where: dict) -> dict:
    """summary.csv's row of one photo; `where`: its EXIF position and time (photometa, "" where none)."""
    stats = crack_summary(kept, cracks)
    row = {"image": rel.as_posix(), "width": kept.shape[1], "height": kept.shape[0], "scale": factor,
           "threshold": threshold, "crack_found": int(bool(cracks)), "cracks": len(cracks),
           "crack_fraction": round(stats["crack_fraction"], 6),
           **{k: round(stats[k], 2) for k in ("length_px", "longest_px", "mean_width_px", "max_width_px")}}
    if args.mm_per_px:
        row.update(in_mm(row, ["length_px", "longest_px", "mean_width_px", "max_width_px"], args.mm_per_px))
    row.update(where)
    return row


def write_photo_outputs(base: Path, image: np.ndarray, prob: np.ndarray, kept: np.ndarray, cracks: list[dict],
                        overlay: bool) -> None:
    """The photo's files, each written whole (outputs.write_whole)."""
    write_whole(Path(f"{base}_prob.png"), probability_png(prob))   # also makes the folder
    write_whole(Path(f"{base}_mask.png"), kept.astype(np.uint8) * 255)
    if overlay:
        write_whole(Path(f"{base}_overlay.jpg"), label_cracks(crack_overlay(image, kept), cracks))


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


class TileBar:
    """A second bar for the tiles of a photo of more than TILE_BAR_FROM - 1 tiles (each tiled pass anew)."""

    def __init__(self):
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if total < TILE_BAR_FROM:
            return
        if self.bar is None or done == 1:
            self.close()
            self.bar = tqdm(total=total, unit="tile", desc="  tiles", leave=False, file=sys.stderr, position=1)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ---------------------------------------------------------------- main

def choose_model(args) -> Predictor:
    """The run that predicts (the bundle when --name is absent), loaded once under its scale policy."""
    if args.name is None:
        if not bundle_dir(DEFAULT_BUNDLE):
            raise RunError(f"no --name given and no bundled model in {PRETRAINED_DIR / DEFAULT_BUNDLE}; "
                           "name a run under models/ with --name")
        args.name = DEFAULT_BUNDLE
        print(f"no --name: using the bundled model {DEFAULT_BUNDLE} ({bundle_dir(DEFAULT_BUNDLE)})")
    return Predictor.load(args.name, backend=args.backend, checkpoint=args.checkpoint, scale=args.scale,
                          engine=make_engine(args.device, args.precision, args.channels_last),
                          options=MapOptions(args.tta, args.tile, args.overlap))


def predict_all(items, predictor: Predictor, args, out_dir: Path) -> int:
    """Every photo not done yet in turn (sizes differ; batching gains little next to decoding and writing):
    its files, then its record. An unreadable file, or one that runs out of memory, is reported and
    skipped (it gets no record), the rest still done. Returns how many photos this call predicted."""
    tiles, done = TileBar(), 0
    todo = [(path, rel) for path, rel in items if not record_path(out_dir, rel).is_file()]
    for path, rel in tqdm(todo, unit="photo", file=sys.stderr, position=0):
        try:
            with reporting_tiles(tiles):
                image = read_photo(path)
                found = predictor.predict(image, str(path))
        except DatasetError as err:
            tqdm.write(f"skipped {err}", file=sys.stderr)
            continue
        except (MemoryError, RuntimeError) as err:   # torch.OutOfMemoryError is a RuntimeError
            if not out_of_memory(err):
                raise
            tqdm.write(f"skipped {path}: out of memory ({first_line(err)}); lower --tile "
                       f"(now {args.tile}, e.g. --tile {max(args.tile // 2, 256)}) or use --device cpu",
                       file=sys.stderr)
            release_memory(predictor.engine)
            continue
        finally:
            tiles.close()
        kept, cracks = measure_cracks(found.prob > args.threshold, args.min_area)
        base = out_dir / rel.parent / rel.stem
        write_photo_outputs(base, image, found.prob, kept, cracks, args.overlay)
        row = summary_row(rel, kept, cracks, args.threshold, found.factor, args, read_where_and_when(path))
        write_record(out_dir, rel, {"summary": row, "cracks": crack_rows(rel, cracks, args), "source": str(path),
                                    "overlay": f"{base}_overlay.jpg" if args.overlay else None})
        done += 1
    return done


def summarize(items, args, config: dict, out_dir: Path) -> tuple[list[dict], list[Path], Path | None]:
    """summary.csv, cracks.csv, cracks.geojson and (--report) report.html from every photo's record, in
    input order; returns the photos, the inputs without a record (skipped) and the report's path."""
    records = read_records(out_dir, [rel for _, rel in items])
    photos = list(records.values())
    mm = bool(args.mm_per_px)
    columns = (COLUMNS + (MM_COLUMNS if mm else []) + photometa.COLUMNS,
               CRACK_COLUMNS + (CRACK_MM_COLUMNS if mm else []))
    write_tables(out_dir, photos, columns)
    failed = [path for path, rel in items if rel not in records]
    report = None
    if args.report:
        from report import write_report
        factors = scales.tally([p["summary"]["scale"] for p in photos])
        report = write_report(out_dir, {**settings(args, config), "factors": factors}, photos, failed)
    write_geojson(out_dir, photos, report is not None)
    return photos, failed, report


def write_geojson(out_dir: Path, photos: list[dict], with_report: bool) -> None:
    """cracks.geojson: one Point per photo whose EXIF holds a position, with its summary row (and its
    card in report.html)."""
    from report import card_anchors
    anchors = card_anchors(photos) if with_report else None
    collection = photometa.geojson([p["summary"] for p in photos], anchors)
    write_text_whole(out_dir / "cracks.geojson", json.dumps(collection, indent=1) + "\n")


def settings(args, config: dict) -> dict:
    """What the report and the start line say about how the photos were read."""
    return {"model": args.name, "arch": config["arch"], "threshold": args.threshold, "scale": args.scale,
            "mm_per_px": args.mm_per_px, "min_area": args.min_area, "terms": config.get("terms"),
            "width_classes": class_names(args.width_classes) if args.mm_per_px else None}


def main(argv=None) -> int:
    # 1. arguments, the model under its scale policy, threshold
    args = get_args(argv)
    predictor = choose_model(args)
    config = predictor.config
    source = config["threshold_source"] if args.threshold is None else "--threshold"
    args.threshold = predictor.threshold if args.threshold is None else args.threshold
    args.scale = predictor.scale
    # 2. the images and the output folder: a missing INPUT or a folder of the user's stops everything
    #    before any work, as a typo should. Under torchrun rank 0 decides and prepares the folder.
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    out_dir = args.resume or args.out or default_out(args.name)
    roots = [glob_root(p) for p in args.inputs if glob_root(p).exists()]
    check_out_dir(out_dir, roots)   # before the scan, which leaves out what lies inside --out
    items = find_inputs(args.inputs, out_dir.resolve())
    if rank == 0:
        open_out_dir(out_dir, roots + [image for image, _ in items], args)
    if world > 1:
        out_dir = share_out_dir(out_dir)
        items = find_inputs(args.inputs, out_dir.resolve())
    print(f"{args.name}: {config['arch']} ({args.checkpoint}, {args.backend}), {predictor.engine.describe()}, "
          f"threshold {args.threshold:g} ({source}), scale {args.scale}; {len(items)} photo(s) -> {out_dir}"
          + (f"; rank {rank} of {world}" if world > 1 else ""))
    if config.get("terms") and rank == 0:
        print(f"terms of {args.name}: {config['terms']}")
    # 3. this process's share of the photos not done yet; the summaries from every photo's record, also
    #    after Ctrl-C, by the last rank to finish (or --resume OUT)
    started = time.perf_counter()
    share = items[rank::world]
    try:
        predicted = predict_all(share, predictor, args, out_dir)
    finally:
        if world > 1:
            rank_done(out_dir, rank, world, len(read_records(out_dir, [rel for _, rel in share])))
        counts = ranks_done(out_dir, world) if world > 1 else {0: len(items)}
        if counts is not None:
            photos, failed, report = summarize(items, args, config, out_dir)
    # 4. what was done, where it is
    elapsed = max(time.perf_counter() - started, 1e-9)
    if counts is None:
        print(f"rank {rank}: {predicted} photo(s) predicted ({predicted / elapsed:.2f} photos/s); the last rank "
              f"to finish writes the summaries (or: python predict.py {' '.join(args.inputs)} --resume {out_dir})")
        return 0
    for r, n in counts.items() if world > 1 else ():
        print(f"rank {r}: {n} photos")
    print(f"scale {args.scale}: {scales.tally([p['summary']['scale'] for p in photos])}")
    print(f"wrote {len(photos)} prediction(s) ({predicted} now), summary.csv and cracks.csv to {out_dir} "
          f"({predicted / elapsed:.2f} photos/s)"
          + (f"; report: {report}" if report else "")
          + (f"; {len(failed)} file(s) skipped (unreadable or out of memory): {', '.join(map(str, failed))}"
             if failed else ""))
    return 1 if failed else 0


def open_out_dir(out_dir: Path, inputs: list[Path], args) -> None:
    """A new marked folder for this run, or --resume's folder checked against this run's settings."""
    check_out_dir(out_dir, inputs)
    if args.resume:
        check_resume(out_dir, inputs, output_settings(args))
        clear_ranks(out_dir)
    else:
        prepare_out_dir(out_dir, inputs, args.overwrite, output_settings(args))


def share_out_dir(out_dir: Path) -> Path:
    """Under torchrun: rank 0's folder (its default name has rank 0's clock), sent once rank 0 made it
    ready; the one collective of the run (over the group engine.make_engine opened), after which every
    rank goes its own pace."""
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    chosen = [str(out_dir)]
    dist.broadcast_object_list(chosen, src=0)
    dist.destroy_process_group()
    return Path(chosen[0])


def output_settings(args) -> dict:
    """What the maps, masks and numbers in an output folder depend on (kept in its marker)."""
    return {"model": args.name, "threshold": args.threshold, "scale": args.scale, "min_area": args.min_area,
            "mm_per_px": args.mm_per_px}


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_cli(main)
