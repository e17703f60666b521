"""Train a single-output crack segmentation network.

    python train.py --preset fast                       # synthetic data, CPU, ~3 minutes
    python train.py --dataset CRACKTREE260 --arch UNet  # the reference recipe
    python train.py --dataset DEEPCRACK_TRAIN --data-dir ../shared/data --crop 256 --max-minutes 60
    python train.py --dataset DEEPCRACK_TRAIN --data-dir ../shared/data --preset recipe --max-minutes 60
    python train.py --resume DEEPCRACK_TRAIN_UNet       # continue after Ctrl-C
    torchrun --nproc_per_node=2 train.py --dataset CRACKTREE260   # DDP, one process per GPU
    tensorboard --logdir runs

Everything a run makes lives in models/<name>/ (config.json, split.json, log.csv,
last.pt, best.pt) and runs/<name>/ (TensorBoard).
"""
import argparse
import random
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.tensorboard import SummaryWriter

from augment import CAMERA_PARTS, padding_share, photo_transform, train_transform
from crops import TileMosaic, add_negatives, mosaic_members, mosaic_side
from dataset import CrackDataset, DatasetError, Intensity, scan_dataset, split_ids
from engine import make_engine
from rundir import (MODELS_DIR, RUNS_DIR, RunError, fresh_run_name, load_checkpoint, load_config, provenance,
                    read_split, remove_run, run_datasets, run_state, write_config, write_split)
from training import (RunFiles, build_state, check_replicas_agree, end_epoch, keep_log_rows_before, make_train_loader,
                      restore, resume_progress, start_epoch, sync_buffers, train_one_epoch, validate,
                      validates_after)
from trainoptions import (PRESETS, Loading, Optimisation, Validation, add_data_options, add_machine_options,
                          add_model_options, add_optimisation_options, add_run_options)
from utils import run_cli

# what --init-from takes from the parent
PARENT_KEYS = ("arch", "base_width", "depth", "bottleneck_dilation", "deep_supervision", "align_corners", "minmax",
               "normalize", "clahe")
RESUME_OVERRIDES = {"epochs", "max_minutes", "workers", "device", "cache", "panels_every", "val_every"}


# ---------------------------------------------------------------- options

def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, help="fast: synthetic data, 128 crops, 40 epochs; "
                   "finetune: 5 minutes on a few photos of your own (with --init-from); recipe: the README's "
                   "measured recipe (256 crops, cosine from lr 1e-3, photometric, scale and camera augmentation, "
                   "width-4 UNet; give --max-minutes)")
    add_data_options(p.add_argument_group("data"))
    add_model_options(p.add_argument_group("model and loss"))
    add_optimisation_options(p.add_argument_group("optimisation"))
    add_machine_options(p.add_argument_group("machine"))
    add_run_options(p.add_argument_group("run"))
    return p


def typed_options(argv=None) -> set[str]:
    """The options on the command line, whatever their values (a value equal to its default counts)."""
    parser = get_args_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))


def check_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every numeric option, and every combination that cannot run, refused at parse time (exit 2)."""
    rules = [
        (args.crop >= 2**args.depth and args.crop % 2**args.depth == 0,
         f"--crop must be a positive multiple of {2**args.depth} ({args.depth} poolings)"),
        (args.depth == 4 or args.arch == "UNet", f"--depth {args.depth} needs --arch UNet"),
        (args.bottleneck_dilation == 1 or args.arch == "UNet",
         f"--bottleneck-dilation {args.bottleneck_dilation} needs --arch UNet"),
        (0 <= args.val_split < 1, "--val-split must be in [0, 1) (0: train on every image, no validation)"),
        (args.workers >= 0, "--workers must be >= 0"),
        (args.epoch_size >= 0, "--epoch-size must be >= 0 (0: one crop per training image)"),
        (args.base_width >= 1, "--base-width must be >= 1"),
        (args.epochs >= 1, "--epochs must be >= 1"),
        (args.batch_size >= 1, "--batch-size must be >= 1"),
        (args.lr > 0, "--lr must be > 0"),
        (0 <= args.momentum < 1, "--momentum must be in [0, 1)"),
        (args.weight_decay >= 0, "--weight-decay must be >= 0"),
        (args.patience >= 0, "--patience must be >= 0"),
        (0 < args.factor < 1, "--factor must be in (0, 1)"),
        (0 <= args.min_lr <= args.lr, "--min-lr must be in [0, --lr]"),
        (args.max_minutes is None or args.max_minutes > 0, "--max-minutes must be > 0"),
        (0 <= args.ema < 1, "--ema must be in [0, 1) (0 = off)"),
        (0 <= args.seed < 2**32, "--seed must be in [0, 2**32)"),
        (args.panels_every >= 1, "--panels-every must be >= 1"),
        (args.val_every >= 1, "--val-every must be >= 1"),
        (args.val_every == 1 or args.scheduler != "ReduceLROnPlateau",
         "--val-every > 1 leaves epochs without the validation loss ReduceLROnPlateau steps on; "
         "use --scheduler CosineAnnealingLR or none"),
        (not args.scale_aug_range or 0 < args.scale_aug_range[0] <= args.scale_aug_range[1],
         "--scale-aug-range needs 0 < LO <= HI"),
        (not (args.scale_aug_range and args.resize), "--scale-aug-range crops; it cannot go with --resize"),
        (len(set(args.dataset)) == len(args.dataset), "--dataset names a dataset twice"),
        (all(name in args.dataset for name, _ in args.thicken_labels),
         "--thicken-labels names a dataset that --dataset does not"),
        (0 <= args.hard_negatives < 1, "--hard-negatives is a share of the crops: 0 <= SHARE < 1"),
        (not args.hard_negatives or args.cache, "--hard-negatives mines the decoded photos: add --cache"),
        (all(d in args.dataset for _, members in args.groups for d in members),
         "--groups names a dataset that --dataset does not"),
        (len([d for _, members in args.groups for d in members]) == len({d for _, m in args.groups for d in m}),
         "--groups puts a dataset in two groups"),
        (not args.groups or args.sampling == "group", "--groups needs --sampling group"),
        (not args.deep_supervision or args.arch == "NestedUNet",
         f"--deep-supervision needs --arch NestedUNet ({args.arch} has one output)"),
        (args.val_split > 0 or args.scheduler != "ReduceLROnPlateau",
         "--val-split 0 leaves no validation loss for ReduceLROnPlateau; use --scheduler CosineAnnealingLR or none"),
    ]
    for ok, message in rules:
        if not ok:
            parser.error(message)


def get_args(argv=None) -> argparse.Namespace:
    parser = get_args_parser()
    preset = parser.parse_known_args(argv)[0].preset
    if preset:
        parser.set_defaults(**PRESETS[preset])
    args = parser.parse_args(argv)
    if args.camera_aug == []:
        args.camera_aug = list(CAMERA_PARTS)
    if args.resume:
        args = resumed_args(args, typed_options(argv))
        args.dataset = run_datasets(vars(args))
    elif args.init_from:
        inherit_parent(parser, args, typed_options(argv))
    check_values(parser, args)
    return args


def resumed_args(args: argparse.Namespace, typed: set[str]) -> argparse.Namespace:
    """The run's own settings, except the options --resume may change that were typed; say what is ignored."""
    config = load_config(args.resume)
    saved = {k: config.get(k, v) for k, v in vars(args).items()}   # options newer than the run: today's defaults
    ignored = sorted(typed - RESUME_OVERRIDES - {"resume"})
    if ignored:
        print("note: --resume keeps the run's settings; ignored: "
              + ", ".join(f"--{k.replace('_', '-')} (the run has {saved.get(k)!r})" for k in ignored))
    saved.update({k: getattr(args, k) for k in RESUME_OVERRIDES & typed})
    return argparse.Namespace(**{**saved, "resume": args.resume, "name": args.resume})


def inherit_parent(parser: argparse.ArgumentParser, args: argparse.Namespace, typed: set[str]) -> None:
    """A fine-tuned run has its parent's network and input scaling: other weights would not load,
    another scaling would feed the weights images they never saw. Typing a different value is an error."""
    config = load_config(args.init_from)
    for key in PARENT_KEYS:
        parent = config.get(key, parser.get_default(key))
        if key in typed and getattr(args, key) != parent:
            option = f"--{key.replace('_', '-')} {getattr(args, key)}"
            parser.error(f"{option} differs from --init-from {args.init_from}'s {parent}: a fine-tuned run"
                         " keeps its parent's network and preprocessing (drop the option)")
        setattr(args, key, parent)


# ---------------------------------------------------------------- data

def prepare_data(args, engine):
    """Scan every file of every dataset once (all problems reported together, before a run directory
    exists), then split each dataset with its own seeded validation split.

    Returns (training set, {dataset: validation set}, split, training images per dataset)."""
    data_dir = Path(args.data_dir)
    if "SYNTHETIC" in args.dataset and not (data_dir / "SYNTHETIC").exists() and engine.main:
        from synthetic import make_synthetic_dataset
        print(f"generating the synthetic dataset in {data_dir / 'SYNTHETIC'}")
        make_synthetic_dataset(data_dir, "SYNTHETIC")
    if engine.world > 1:
        dist.barrier()
    scanned = scan_datasets(data_dir, args.dataset, keep=args.cache)
    if args.resume:
        split = read_split(args.name)
    else:
        split = {name: dict(zip(("train", "val"), split_ids([s.stem for s in samples], args.val_split, args.seed),
                                strict=True)) for name, (samples, _) in scanned.items()}
    intensity = Intensity(minmax=args.minmax, clahe=args.clahe,
                          normalize=tuple(args.normalize) if args.normalize else None)
    train_samples, train_arrays, train_thicken, val = [], [], [], {}
    thicken = dict(args.thicken_labels)
    for name, (samples, decoded) in scanned.items():
        by_stem = {s.stem: i for i, s in enumerate(samples)}
        missing = [i for part in ("train", "val") for i in split[name][part] if i not in by_stem]
        if missing:
            raise RunError(f"the run's split names images no longer in {data_dir / name}: {missing[:5]}")
        train_idx, val_idx = ([by_stem[i] for i in split[name][part]] for part in ("train", "val"))
        train_samples += [samples[i] for i in train_idx]
        train_arrays += [decoded[i] for i in train_idx] if decoded else []
        train_thicken += [thicken.get(name, 0)] * len(train_idx)
        if val_idx:
            val[name] = CrackDataset([samples[i] for i in val_idx], intensity,
                                     decoded=[decoded[i] for i in val_idx] if decoded else None,
                                     thicken=[thicken.get(name, 0)] * len(val_idx))
    camera = tuple(args.camera_aug or ())
    train_set = CrackDataset(train_samples, intensity,
                             train_transform(args.crop, args.resize, args.scale_aug, "scale" in camera,
                                             args.scale_aug_range),
                             train_arrays or None, photo_transform(args.photometric, camera), train_thicken)
    sizes = [len(split[name]["train"]) for name in scanned]
    # negatives are half the crop wide (a whole crop's crack-free window is rare), laid 2x2 in a crop
    mined = add_negatives(train_set, args.crop // 2) if args.hard_negatives else 0
    if mined and engine.main:
        print(f"--hard-negatives: {mined} crack-free windows of {args.crop // 2} px mined, "
              f"{args.hard_negatives:.0%} of the crops")
    if args.small_tiles == "mosaic" or mined:
        train_set.fill = TileMosaic(train_set.labelled, mosaic_members(sizes, mined, args.small_tiles == "mosaic"),
                                    args.crop, mosaic_side(args.crop, args.scale_aug_range))
    return train_set, val, split, sizes


def scan_datasets(data_dir: Path, names: list[str], keep: bool) -> dict[str, tuple[list, list]]:
    """{name: (samples, decoded arrays if keep)}; the problems of every dataset in one error."""
    scanned, problems = {}, []
    for name in names:
        try:
            samples, decoded, notes = scan_dataset(data_dir, name, keep=keep)
        except DatasetError as err:
            problems.append(str(err))
            continue
        for note in notes:
            print("note:", note)
        scanned[name] = (samples, decoded)
    if problems:
        raise DatasetError("\n".join(problems))
    return scanned


# ---------------------------------------------------------------- the run

def start_engine(args):
    """Device and precision; every random generator seeded (each DDP rank its own torch stream)."""
    # Before any OpenCV call: the DataLoader workers forked later share the cores already, and a
    # fork taken while OpenCV's thread pool is live can deadlock them. (evaluate/predict keep the pool.)
    cv2.setNumThreads(1)
    engine = make_engine(args.device, args.precision, args.channels_last, fixed_shapes=not args.deterministic)
    torch.manual_seed(args.seed + engine.rank)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    return engine


def open_run_dir(args, engine, split: dict, start: int) -> tuple[Path, dict]:
    """Name the run (rank 0 decides), write config.json and split.json; a resume keeps both.

    --overwrite removes the old run's folders (models/ and runs/) whole before anything is written,
    so no evaluation, prediction or TensorBoard curve of the old run mixes into the new one."""
    if not args.resume:
        if engine.main:
            args.name = fresh_run_name(args.name, f"{'-'.join(args.dataset)}_{args.arch}", args.overwrite)
        if engine.world > 1:
            names = [args.name]
            dist.broadcast_object_list(names)
            args.name = names[0]
    run_dir = MODELS_DIR / args.name
    config = load_config(args.name) if args.resume else {"provenance": provenance()}
    config.update(vars(args))
    if engine.main:
        if not args.resume:
            remove_run(args.name)
        run_dir.mkdir(parents=True, exist_ok=True)
        if args.resume:
            keep_log_rows_before(run_dir / "log.csv", start)
        else:
            write_split(run_dir, split)
        write_config(run_dir, config)
    if engine.world > 1:
        dist.barrier()   # no rank opens the run's folders while rank 0 may still be clearing them
    return run_dir, config


def finish(state, args, engine, run_dir: Path, validated: bool) -> None:
    """Say why training stopped and where the checkpoints are; under torchrun check that every rank
    holds the same weights, then shut the process group down."""
    if engine.main and args.max_minutes and state.progress.seconds() >= 60 * args.max_minutes:
        print(f"stopped: --max-minutes {args.max_minutes:g} spent after {state.progress.steps} steps")
    if engine.world > 1:
        sync_buffers(state.model, engine)
        check_replicas_agree(state.validated, engine)
        dist.barrier()
        dist.destroy_process_group()   # an orderly gloo/NCCL shutdown: no "terminate called" at exit
    if engine.main:
        print(f"best validation ODS F {state.best:.4f}; checkpoints in {run_dir}" if validated else
              f"no validation split: best.pt is the last epoch; checkpoints in {run_dir}")


# ---------------------------------------------------------------- main

def main() -> int:
    # 1. configuration, device and precision
    args = get_args()
    engine = start_engine(args)

    # 2. data and checkpoints: every problem is found before anything is written
    train_set, val_sets, split, sizes = prepare_data(args, engine)
    fine_tune = args.init_from and not args.resume   # a resumed run has its own weights: never the parent's
    parent = run_state(args.init_from) if fine_tune else None
    resume_state = load_checkpoint(MODELS_DIR / args.name / "last.pt") if args.resume else None

    # 3. model, optimiser, schedule (a resumed run: all three as last.pt left them)
    options = vars(args)
    loading, opt = Loading.from_options(options), Optimisation.from_options(options)
    loader = make_train_loader(train_set, sizes, loading, engine)
    state = build_state(opt, engine, len(loader), parent)
    start = 1
    if resume_state:
        start = restore(resume_state, MODELS_DIR / args.name / "last.pt", state)
        resume_progress(resume_state, state.progress, opt, args.name, len(loader))

    # 4. the run directory (only the main process writes)
    run_dir, config = open_run_dir(args, engine, split, start)
    if engine.main:
        print(f"run {run_dir}: {len(train_set)} training / {sum(map(len, val_sets.values()))} validation images"
              f"{' from ' + ', '.join(args.dataset) if len(args.dataset) > 1 else ''}, "
              f"{engine.describe()}")
    if args.scale_aug_range and engine.main:
        config["scale_aug_padding_share"] = padding_share(train_set.image_sizes(), args.crop, args.scale_aug_range)
        print(f"--scale-aug-range {args.scale_aug_range[0]:g}-{args.scale_aug_range[1]:g}: "
              f"{config['scale_aug_padding_share']:.1%} of the crops' pixels are mirrored padding")
    files = RunFiles(run_dir, config, SummaryWriter(RUNS_DIR / args.name) if engine.main else None)

    # 5. epochs: train, validate, log, checkpoint, until the plan (--epochs, --max-minutes) is done
    # (progress.fraction() is rank 0's clock: every DDP rank stops and validates after the same epochs)
    stop = state.progress.fraction() >= 1   # a resumed run may have nothing left
    try:
        for epoch in range(start, args.epochs + 1):
            if stop:
                break
            start_epoch(loader, loading, engine, epoch)
            row = {"epoch": epoch, **train_one_epoch(state, loader, engine, opt, epoch, run_dir)}
            sync_buffers(state.validated, engine)
            stop = epoch == args.epochs or state.progress.fraction() >= 1
            curves = {}
            if val_sets and validates_after(epoch, args.val_every, last=stop):
                scores, curves = validate(state.validated, val_sets, engine, Validation.from_options(options), epoch,
                                          files.writer)
                row.update(scores)
                stop = stop or state.progress.fraction() >= 1   # --max-minutes counts validation's time too
            end_epoch(state, files, row, curves, engine, validating=bool(val_sets))
    finally:
        if files.writer:
            files.writer.close()

    # 6. the end: why training stopped, every DDP rank holding the same weights
    finish(state, args, engine, run_dir, validated=bool(val_sets))
    return 0


if __name__ == "__main__":
    run_cli(main)
