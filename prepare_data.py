"""Put crack datasets into the layout crackseg trains on: <data-dir>/<NAME>/images|masks.

Synthetic pavement cracks (no download; the default dataset and what the tests use):
    python prepare_data.py --synthetic --name SYNTHETIC
    python prepare_data.py --synthetic --name SYN_SMALL --count 12 --size 128 --seed 1

Convert a downloaded archive (SRC is only read; images are copied, masks become
single-channel 0/255 PNGs, paired by file stem):
    python prepare_data.py --from ~/Downloads/CrackTree260 --name CRACKTREE260
    python prepare_data.py --from ~/Downloads/CRKWH100 --name CRKWH100
    python prepare_data.py --from ~/Downloads/CrackLS315 --name CRACKLS315
    python prepare_data.py --from ~/Downloads/Stone331 --name STONE331      # + rois/
    python prepare_data.py --from ~/Downloads/CRACK500 --name CRACK500      # _TRAIN/_VAL/_TEST from its lists
    python prepare_data.py --from ~/Downloads/DeepCrack --name DEEPCRACK    # _TRAIN/_TEST
    python prepare_data.py --from ../shared/data/_raw/CrackForest --name CFD --data-dir /tmp/inputs
    python prepare_data.py --from my_photos --name MINE --overwrite          # images/ + masks/

Exit code 2 with a one-line message when the input is ambiguous (two candidate mask
folders, one stem with two extensions) or the output folder is already filled. Every dataset
folder written here holds a .crackseg-dataset marker: --overwrite replaces only such a folder,
never one a person made. Ctrl-C exits 130 and leaves no half-written folder.
"""
import argparse
import os
import re
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datafolder import check_replaceable, dataset_folder
from dataset import read_image, read_mask
from rundir import NAME_PATTERN, NAME_RULE
from synthetic import make_synthetic_dataset
from utils import ReportedError, run_cli
from visuals import write_image

FILE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".mat"}
# Where images and masks share a folder, the more photo-like extension is the image.
PHOTO_RANK = {".jpg": 0, ".jpeg": 0, ".tif": 1, ".tiff": 1, ".png": 2, ".bmp": 3, ".mat": 4}
SPLIT_WORDS = {"train": "TRAIN", "training": "TRAIN", "val": "VAL", "valid": "VAL",
               "validation": "VAL", "test": "TEST", "testing": "TEST"}


class ImportRefused(ReportedError):
    """Input we will not guess about; main() prints it and exits with code 2."""


# ---------------------------------------------------------------- output folders

def _check_output(out: Path, src: Path | None, overwrite: bool) -> None:
    """Refuse before writing anything: a filled folder without --overwrite, one crackseg did not make
    (even with --overwrite: only marked dataset folders are replaced), or one overlapping SRC."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ImportRefused(f"{out} exists and is not empty; pass --overwrite to replace it")
    check_replaceable(out)
    if src is not None:
        a, b = out.resolve(), src.resolve()
        if a.is_relative_to(b) or b.is_relative_to(a):
            raise ImportRefused(f"output {out} and source {src} overlap; SRC must stay untouched")


# ---------------------------------------------------------------- importer: pairing

@dataclass
class Plan:
    """One output dataset: stem -> (image, mask, roi or None), plus what could not be paired."""
    name: str
    pairs: dict = field(default_factory=dict)
    unpaired: list = field(default_factory=list)


def _words(name: str) -> list[str]:
    return re.split(r"[^a-z0-9]+", name.lower())


def _name_role(rel_dir: Path) -> str | None:
    """Role a folder's name announces (nearest named ancestor wins); None = mixed folder."""
    for part in reversed(rel_dir.parts):
        low, words = part.lower(), _words(part)
        if {"roi", "rois"} & set(words) or "region" in low:
            return "roi"
        if {"gt", "lab", "label", "labels", "ann"} & set(words) or "groundtruth" in low or "annot" in low:
            return "gt"
        if "mask" in low:
            return "maskword"
        if "img" in low or "image" in low:
            return "image"
    return None


def _split_of(rel_dir: Path) -> str | None:
    words = [w for part in rel_dir.parts for w in _words(part)]
    return next((SPLIT_WORDS[w] for w in words if w in SPLIT_WORDS), None)


def _split_mixed(paths: list[Path]) -> list[tuple[str, Path]]:
    """Files of one stem in a folder holding images and masks: a.jpg + a.png (CRACK500)."""
    paths = sorted(paths, key=lambda p: PHOTO_RANK[p.suffix.lower()])
    ranks = [PHOTO_RANK[p.suffix.lower()] for p in paths]
    if len(paths) == 1:
        return [("image" if ranks[0] <= 1 else "mask", paths[0])]
    if len(paths) == 2 and ranks[0] != ranks[1]:
        return [("image", paths[0]), ("mask", paths[1])]
    raise ImportRefused("cannot tell image from mask among " + ", ".join(map(str, paths)))


def _folder_roles(src: Path, files: list[Path]) -> dict[Path, str | None]:
    named = {d: _name_role(d.relative_to(src)) for d in sorted({f.parent for f in files})}
    # Stone331: next to a gt folder, a folder called "mask" is the evaluation region.
    maskword = "roi" if "gt" in named.values() else "mask"
    return {d: {"gt": "mask", "maskword": maskword}.get(r, r) for d, r in named.items()}


def _group_files(src: Path, files: list[Path]) -> dict:
    """{split: {role: {stem: path}}}, refusing rival folders and stems seen twice."""
    roles = _folder_roles(src, files)
    rivals = defaultdict(list)
    for folder, role in roles.items():
        if role is not None:
            rivals[(_split_of(folder.relative_to(src)), role)].append(folder)
    for (_, role), folders in sorted(rivals.items(), key=str):
        if len(folders) > 1:
            raise ImportRefused(f"two candidate {role} folders: " + ", ".join(map(str, folders))
                                + "; move one away or pass --from a folder holding just one")
    by_stem = defaultdict(list)
    for f in files:
        by_stem[(f.parent, f.stem)].append(f)
    groups = defaultdict(lambda: defaultdict(dict))
    for (folder, stem), paths in sorted(by_stem.items()):
        if roles[folder] is None:
            labelled = _split_mixed(paths)
        elif len(paths) > 1:
            raise ImportRefused(f"stem '{stem}' has several files: " + ", ".join(map(str, paths)))
        else:
            labelled = [(roles[folder], paths[0])]
        split = _split_of(folder.relative_to(src))
        for role, path in labelled:
            if stem in groups[split][role]:
                raise ImportRefused(f"two {role} files for '{stem}': {groups[split][role][stem]}, {path}")
            groups[split][role][stem] = path
    return groups


def _plan_group(name: str, group: dict) -> Plan:
    images, masks, rois = group["image"], group["mask"], group["roi"]
    plan = Plan(name, {s: (images[s], masks[s], rois.get(s)) for s in sorted(images.keys() & masks.keys())})
    plan.unpaired += [f"image without mask: {images[s]}" for s in sorted(images.keys() - masks.keys())]
    plan.unpaired += [f"mask without image: {masks[s]}" for s in sorted(masks.keys() - images.keys())]
    plan.unpaired += [f"roi without image: {rois[s]}" for s in sorted(rois.keys() - images.keys())]
    if rois:
        plan.unpaired += [f"image without roi (imported without one): {images[s]}" for s in plan.pairs if s not in rois]
    return plan


def _plans_from_lists(src: Path, name: str, lists: list[Path]) -> list[Plan]:
    """CRACK500 style: each line of train.txt/val.txt/test.txt is 'image_path mask_path'."""
    plans, seen = {}, {}
    for listing in lists:
        split = SPLIT_WORDS[listing.stem.lower()]
        if split in plans:
            raise ImportRefused(f"two {split.lower()} lists: {seen[split]}, {listing}; keep one")
        plan = plans[split] = Plan(f"{name}_{split}")
        seen[split] = listing
        for number, line in enumerate(listing.read_text().splitlines(), 1):
            if not line.strip():
                continue
            if len(line.split()) != 2:
                raise ImportRefused(f"{listing}:{number}: expected 'image_path mask_path', got {line!r}")
            # Paths are relative to the list's folder or to SRC, depending on who wrote the list.
            found = [next((p for p in (listing.parent / rel, src / rel) if p.is_file()), None)
                     for rel in line.split()]
            stem = Path(line.split()[0]).stem
            if None in found:
                plan.unpaired.append(f"{listing.name}:{number}: missing file in {line.strip()!r}")
            elif stem in plan.pairs and plan.pairs[stem][0] != found[0]:
                raise ImportRefused(f"{listing}: two images named '{stem}': {plan.pairs[stem][0]}, {found[0]}")
            else:
                plan.pairs[stem] = (found[0], found[1], None)
    return [plans[s] for s in ("TRAIN", "VAL", "TEST") if s in plans]


def plan_import(src: Path, name: str) -> tuple[list[Plan], list[str]]:
    """Pair the files under src into one Plan per output dataset; also return notes."""
    files = sorted(p for p in src.rglob("*") if p.is_file()
                   and not any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(src).parts))
    lists = [p for p in files if p.suffix == ".txt" and p.stem.lower() in SPLIT_WORDS]
    others = [p for p in files if p.suffix.lower() not in FILE_EXTENSIONS and p not in lists]
    files = [p for p in files if p.suffix.lower() in FILE_EXTENSIONS]
    notes = [f"ignored {len(others)} non-image files: " + ", ".join(p.name for p in others[:8])
             + (" ..." if len(others) > 8 else "")] if others else []
    if lists:
        plans = _plans_from_lists(src, name, lists)
        listed = {path for plan in plans for pair in plan.pairs.values() for path in pair}
        notes.append(f"used the lists {', '.join(p.name for p in lists)}; "
                     f"{len(set(files) - listed)} image/mask files are in no list")
        return plans, notes
    groups = _group_files(src, files)
    splits = sorted(s for s in groups if s is not None)
    if not splits:
        return [_plan_group(name, groups[None])], notes
    if None in groups:
        stray = sum(len(v) for v in groups[None].values())
        notes.append(f"ignored {stray} files outside the {'/'.join(s.lower() for s in splits)} folders")
    return [_plan_group(f"{name}_{s}", groups[s]) for s in splits], notes


# ---------------------------------------------------------------- importer: writing

def read_mat_mask(path: Path) -> np.ndarray:
    """CrackForest/BSDS .mat: crack = (groundTruth{1}.Segmentation == 2); 3 is enclosed background."""
    try:
        from scipy.io import loadmat  # only .mat ground truth needs scipy (it comes with scikit-learn)
    except ImportError:
        raise ImportRefused(f"{path}: reading .mat ground truth needs scipy (pip install scipy)") from None
    try:
        truth = loadmat(str(path), squeeze_me=True, struct_as_record=False)["groundTruth"]
        if isinstance(truth, np.ndarray):  # a cell of annotators: the first, as {1}
            truth = truth.flat[0]
        labels = np.asarray(truth.Segmentation)
    except (KeyError, AttributeError, IndexError, ValueError, NotImplementedError, OSError) as err:
        raise ImportRefused(f"{path}: no groundTruth{{1}}.Segmentation label map ({err!r})") from None
    return labels == 2


def write_plan(plan: Plan, out: Path) -> None:
    """Copy images, write 0/255 single-channel PNG masks (and rois) into out."""
    with dataset_folder(out) as tmp:
        for stem, (image_path, mask_path, roi_path) in plan.pairs.items():
            height, width = read_image(image_path).shape[:2]
            for kind, path in (("masks", mask_path), ("rois", roi_path)):
                if path is None:
                    continue
                crack = read_mat_mask(path) if path.suffix.lower() == ".mat" else read_mask(path)
                if crack.shape != (height, width):
                    raise ImportRefused(f"size mismatch: {image_path} is {width}x{height}, "
                                        f"{path} is {crack.shape[1]}x{crack.shape[0]}")
                (tmp / kind).mkdir(exist_ok=True)
                write_image(tmp / kind / f"{stem}.png", crack.astype(np.uint8) * 255)
            shutil.copy2(image_path, tmp / "images" / image_path.name)


def report(plans: list[Plan], notes: list[str], src: Path, data_dir: Path) -> None:
    """Say what was paired from where, and list every file that was not."""
    for plan in plans:
        where = []
        columns = list(zip(*plan.pairs.values(), strict=True))  # all images, all masks, all rois
        for kind, files in zip(("images", "masks", "rois"), columns, strict=False):
            found = sorted({f"{Path(os.path.relpath(p.parent, src)).as_posix()}/*{p.suffix}" for p in files if p})
            where += [f"{kind} {', '.join(found)}"] if found else []
        print(f"{data_dir / plan.name}: {len(plan.pairs)} pairs" + (f" ({'; '.join(where)})" if where else "")
              + (f"; {len(plan.unpaired)} left out or incomplete:" if plan.unpaired else ""))
        for line in plan.unpaired:
            print(f"  {line}")
    for note in notes:
        print(f"note: {note}")


# ---------------------------------------------------------------- entry point

def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", action="store_true", help="generate synthetic pavement cracks")
    source.add_argument("--from", dest="src", type=Path, help="downloaded dataset folder to convert")
    parser.add_argument("--name", help="output dataset name (default SYNTHETIC, or SRC's folder name upper-cased)")
    parser.add_argument("--data-dir", type=Path, default=Path("inputs"), help="where datasets live (default inputs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing output folders, only those an earlier prepare_data.py made (their "
                             ".crackseg-dataset marker); any other folder is refused, nothing deleted")
    # synthetic only
    parser.add_argument("--count", type=int, default=60, help="synthetic images (60 trains a UNet in minutes)")
    parser.add_argument("--size", type=int, nargs="+", default=[256], metavar="PX",
                        help="synthetic image size, e.g. 256 or 256 384 (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if len(args.size) > 2 or min(args.size) < 32 or args.count < 1:
        parser.error("--size takes 1 or 2 values >= 32 and --count must be >= 1")
    if args.name is not None and not NAME_PATTERN.fullmatch(args.name):
        parser.error(f"--name {args.name!r}: use {NAME_RULE}")
    return args


def main(argv=None) -> int:
    args = get_args(argv)
    try:
        if args.synthetic:
            # 1. Generate straight into the output folder.
            out = args.data_dir / (args.name or "SYNTHETIC")
            _check_output(out, None, args.overwrite)
            size = (args.size[0], args.size[-1])
            make_synthetic_dataset(args.data_dir, out.name, args.count, size, args.seed)
            print(f"{out}: {args.count} synthetic {size[0]}x{size[1]} pairs (seed {args.seed})")
            return 0
        # 1. Pair the source files by stem and tell what could not be paired.
        if not args.src.is_dir():
            raise ImportRefused(f"--from {args.src}: not a folder")
        plans, notes = plan_import(args.src, args.name or args.src.resolve().name.upper())
        report(plans, notes, args.src, args.data_dir)
        if not any(plan.pairs for plan in plans):
            raise ImportRefused(f"no image/mask pairs found under {args.src}")
        plans = [plan for plan in plans if plan.pairs]
        # 2. Refuse filled or overlapping output folders before writing any of them.
        for plan in plans:
            _check_output(args.data_dir / plan.name, args.src, args.overwrite)
        # 3. Write each dataset (masks read and binarised here, so bad files fail loudly).
        for plan in plans:
            write_plan(plan, args.data_dir / plan.name)
            print(f"wrote {args.data_dir / plan.name}")
    except ReportedError as err:   # ImportRefused, DatasetError (2); visuals.WriteError, a full disk (1)
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    run_cli(main)   # Ctrl-C: one line and exit 130, the half-written folder removed (datafolder.dataset_folder)
