"""Train a single-output crack segmentation network.

    python train.py --preset fast                       # synthetic data, CPU, ~3 minutes
    python train.py --dataset CRACKTREE260 --arch UNet  # the reference recipe
    python train.py --dataset DEEPCRACK_TRAIN --data-dir ../shared/data --crop 256 --max-minutes 60
    python train.py --resume DEEPCRACK_TRAIN_UNet       # continue after Ctrl-C
    torchrun --nproc_per_node=2 train.py --dataset CRACKTREE260   # DDP, one process per GPU
    tensorboard --logdir runs

Everything a run makes lives in models/<name>/ (config.json, split.json, log.csv,
last.pt, best.pt) and runs/<name>/ (TensorBoard).
"""
import argparse
import copy
import csv
import math
import random
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import metrics
from dataset import (CAMERA_PARTS, CrackDataset, DatasetError, EpochSampler, Intensity, photo_transform, scan_dataset,
                     split_ids, train_transform)
from losses import LOSSES, compute_loss
from models import ARCHS, freeze_encoder
from engine import make_engine
from inference import EvalOptions, evaluate, for_inference
from rundir import (MODELS_DIR, RUNS_DIR, Diverged, RunError, fresh_run_name, load_checkpoint, load_config,
                    load_weights, model_from_config, name_arg, provenance, read_split, remove_run, run_datasets,
                    run_state, save_checkpoint, write_config, write_split)
from utils import raise_requested_stop, run_cli, signals_held

PRESETS = {  # --preset NAME sets these defaults; flags given explicitly still win
    "fast": {"dataset": ["SYNTHETIC"], "epochs": 40, "crop": 128, "batch_size": 8, "lr": 1e-3,
             "scheduler": "CosineAnnealingLR", "max_minutes": 4.5},
    # a few labelled photos of a new surface, with --init-from (benchmarks/finetune.py measured it)
    "finetune": {"crop": 256, "batch_size": 4, "lr": 1e-3, "scheduler": "CosineAnnealingLR", "photometric": True,
                 "scale_aug": True, "camera_aug": list(CAMERA_PARTS), "cache": True, "epochs": 1000,
                 "epoch_size": 64, "max_minutes": 5},
}
# what --init-from takes from the parent
PARENT_KEYS = ("arch", "base_width", "deep_supervision", "align_corners", "minmax", "normalize", "clahe")
RESUME_OVERRIDES = {"epochs", "max_minutes", "workers", "device", "cache", "panels_every"}
F1_THRESHOLD_INDEX = 50  # t = 0.50 in metrics.DEFAULT_THRESHOLDS
THRESHOLD_TOLERANCE = 2  # px: the run's threshold is chosen at the literature's tolerance


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, help="fast: synthetic data, 128 crops, 40 epochs; "
                   "finetune: 5 minutes on a few photos of your own (with --init-from)")
    # data
    p.add_argument("--dataset", nargs="+", default=["SYNTHETIC"], metavar="DATASET", type=name_arg,
                   help="folders under --data-dir, one model on all of them; SYNTHETIC is made on first use")
    p.add_argument("--sampling", default="proportional", choices=["proportional", "equal"],
                   help="how an epoch (as many crops as training images) draws from several datasets: "
                        "each image once, or the same number of crops from each dataset")
    p.add_argument("--thicken-labels", nargs="+", default=[], type=dataset_pixels, metavar="DATASET=PX",
                   help="read DATASET's masks dilated by PX pixels (training and validation), for sources "
                        "labelled with thinner lines than the others (benchmarks/label_widths.py)")
    p.add_argument("--data-dir", default="inputs")
    p.add_argument("--val-split", type=float, default=0.1)
    p.add_argument("--crop", type=int, default=512, help="random crop side; 512 as in the reference, 256 on a CPU")
    p.add_argument("--resize", action="store_true", help="resize to --crop instead of cropping (kills thin cracks)")
    p.add_argument("--minmax", action=argparse.BooleanOptionalAction, default=True,
                   help="per-image min-max scaling to [0,1] (off: value/255)")
    p.add_argument("--normalize", type=float, nargs=2, metavar=("MEAN", "STD"),
                   help="after scaling to [0,1]; the reference tried 0.535 0.135")
    p.add_argument("--clahe", action="store_true", help="contrast-limited histogram equalisation first")
    p.add_argument("--photometric", action="store_true", help="random brightness/contrast augmentation")
    p.add_argument("--scale-aug", action="store_true", help="random scale 0.7-1.4 and rotation +-20 degrees")
    p.add_argument("--camera-aug", nargs="*", choices=CAMERA_PARTS, metavar="PART",
                   help="imitate other cameras on the uint8 photo: " + ", ".join(CAMERA_PARTS) + " (no PART: all)")
    p.add_argument("--epoch-size", type=int, default=0, metavar="CROPS",
                   help="crops per epoch (0: as many as training images); a few images need more per epoch")
    p.add_argument("--workers", type=int, default=2, help="DataLoader processes; 0 = in the main process")
    p.add_argument("--cache", action="store_true", help="keep decoded images in memory")
    # model and loss
    p.add_argument("--arch", default="UNet", choices=ARCHS)
    p.add_argument("--deep-supervision", action="store_true", help="NestedUNet only: loss on 4 heads")
    p.add_argument("--base-width", type=int, default=32, help="filters of the first block (32 = reference)")
    p.add_argument("--loss", default="BCEDiceLoss", choices=LOSSES,
                   help="BCEDiceLoss: the reference (Dice per crop); BCEDiceBatch: Dice over the batch, so "
                        "crack-free crops still give a gradient")
    p.add_argument("--align-corners", action=argparse.BooleanOptionalAction, default=True,
                   help="bilinear upsampling as the reference (True); False makes tiled predictions of "
                        "large photos match one pass (stored in config.json, inherited by --init-from)")
    # optimisation
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--optimizer", default="Adam", choices=["Adam", "SGD"])
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--momentum", type=float, default=0.9, help="SGD only")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--scheduler", default="ReduceLROnPlateau",
                   choices=["ReduceLROnPlateau", "CosineAnnealingLR", "none"])
    p.add_argument("--patience", type=int, default=10, help="ReduceLROnPlateau epochs without improvement")
    p.add_argument("--factor", type=float, default=0.1)
    p.add_argument("--min-lr", type=float, default=1e-8)
    p.add_argument("--max-minutes", type=float,
                   help="wall-clock budget: training stops when it is spent (mid-epoch: that epoch is then "
                        "validated and saved), and the cosine schedule spans it, so the run ends annealed")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="validate and save an exponential moving average of the weights and BatchNorm "
                        "statistics (e.g. 0.995 per step); 0 = off")
    # machine
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 on AVX-512 CPUs and recent GPUs, fp16 on older GPUs")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="memory format; default: channels_last under bf16/fp16 autocast, NCHW in fp32")
    p.add_argument("--sync-bn", action="store_true", help="synchronised BatchNorm under torchrun")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (slower); with --workers 0 a resumed run repeats exactly")
    # run
    p.add_argument("--name", type=name_arg, help="run name; default <DATASET>_<arch>, suffixed _2, _3 if taken")
    p.add_argument("--resume", metavar="RUN", type=name_arg, help="continue RUN after its last completed epoch")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --name")
    p.add_argument("--init-from", metavar="RUN", type=name_arg,
                   help="start from RUN's best weights (fine-tuning; crackseg-general is the bundled model); "
                        "the network and preprocessing options come from RUN")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="train only the decoder: encoder weights and BatchNorm statistics stay fixed")
    p.add_argument("--panels-every", type=int, default=5, help="epochs between TensorBoard panels")
    return p


def dataset_pixels(text: str) -> tuple[str, int]:
    name, _, pixels = text.partition("=")
    if not name or not pixels.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not DATASET=PIXELS (e.g. CFD=2)")
    return name_arg(name), int(pixels)


def typed_options(argv=None) -> set[str]:
    """The options on the command line, whatever their values (a value equal to its default counts)."""
    parser = get_args_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))


def check_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every numeric option, and every combination that cannot run, refused at parse time (exit 2)."""
    rules = [
        (args.crop >= 16 and args.crop % 16 == 0, "--crop must be a positive multiple of 16 (4 poolings)"),
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
        (len(set(args.dataset)) == len(args.dataset), "--dataset names a dataset twice"),
        (all(name in args.dataset for name, _ in args.thicken_labels),
         "--thicken-labels names a dataset that --dataset does not"),
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
                             train_transform(args.crop, args.resize, args.scale_aug, "scale" in camera),
                             train_arrays or None, photo_transform(args.photometric, camera), train_thicken)
    return train_set, val, split, [len(split[name]["train"]) for name in scanned]


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


def seed_worker(worker_id: int) -> None:
    """Each worker gets its own augmentation stream; Ctrl-C is the main process's business."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(info.seed % 2**32)
    np.random.seed(info.seed % 2**32)
    random.seed(info.seed)


def make_train_loader(train_set, sizes: list[int], args, engine) -> DataLoader:
    sampler = EpochSampler(sizes, args.sampling, args.seed, engine.rank, engine.world, args.epoch_size or None)
    return DataLoader(train_set, batch_size=args.batch_size, sampler=sampler,
                      num_workers=args.workers, worker_init_fn=seed_worker,
                      persistent_workers=args.workers > 0, pin_memory=engine.device.type == "cuda",
                      drop_last=len(sampler) >= args.batch_size)


def start_epoch(loader: DataLoader, args, engine, epoch: int) -> None:
    """Shuffle and augmentation streams depend on (seed, epoch) only, so a resumed run repeats them."""
    loader.sampler.set_epoch(epoch)
    if args.workers == 0:
        loader.dataset.reseed((args.seed * 1_000_003 + epoch * engine.world + engine.rank) % 2**32)


# ---------------------------------------------------------------- model and optimisation

def build_training(args, engine):
    model = model_from_config(vars(args))
    if args.freeze_encoder:
        freeze_encoder(model)
    if args.sync_bn and engine.world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(engine.device)
    if engine.channels_last:
        model.to(memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "Adam":
        optimizer = torch.optim.Adam(trainable, lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.SGD(trainable, lr=args.lr, momentum=args.momentum,
                                    weight_decay=args.weight_decay, nesterov=True)
    scheduler = None   # CosineAnnealingLR follows Progress (cosine_lr); "none" keeps --lr
    if args.scheduler == "ReduceLROnPlateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", patience=args.patience, factor=args.factor, min_lr=args.min_lr)
    scaler = torch.amp.GradScaler(engine.device.type, enabled=engine.dtype == torch.float16)
    return model, optimizer, scheduler, scaler


class Progress:
    """How far a run is through its planned work, from 0 to 1: the larger of the fraction of
    --epochs' steps done and of --max-minutes spent (training and validation), so the run ends at 1
    whichever limit comes first, and the cosine schedule (a function of it) always ends annealed.

    Rank 0's clock decides for every DDP rank: ranks that disagreed on the learning rate or on when
    to stop would diverge or hang in a collective."""

    def __init__(self, total_steps: int, max_minutes: float | None, engine, steps: int = 0, seconds: float = 0.0):
        self.total_steps, self.max_minutes = total_steps, max_minutes
        self.steps, self.seconds_before, self.engine = steps, seconds, engine
        self.clock = time.perf_counter()

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.clock

    def fraction(self) -> float:
        done = planned_fraction(self.steps, self.seconds(), self.total_steps, self.max_minutes)
        if self.engine.world > 1:
            shared = torch.tensor([done], dtype=torch.float64, device=self.engine.device)
            dist.broadcast(shared, 0)
            done = float(shared)
        return done

    def state(self) -> dict:
        return {"steps": self.steps, "seconds": self.seconds()}


def planned_fraction(steps: int, seconds: float, total_steps: int, max_minutes: float | None) -> float:
    done = steps / total_steps
    if max_minutes:
        done = max(done, seconds / (60 * max_minutes))
    return min(done, 1.0)


def cosine_lr(fraction: float, lr: float, min_lr: float) -> float:
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * fraction)) / 2


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class WeightAverage:
    """Exponential moving average of a model's weights and BatchNorm statistics.

    With batches of 4 crops the running BatchNorm statistics follow the last few batches, so the
    validation score of the raw weights jumps from epoch to epoch even when the learning rate is
    near zero; the average is steadier. The decay ramps up as (1 + n) / (10 + n) so the first,
    random weights do not linger in a short run.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        # state_dict tensors share storage with the modules: pair them once, not at every step
        self.pairs = list(zip(self.model.state_dict().values(), model.state_dict().values(), strict=True))

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = self.current_decay()
        for average, latest in self.pairs:
            if average.is_floating_point():
                average.lerp_(latest, 1 - decay)
            else:
                average.copy_(latest)


def rng_state() -> dict:
    """RNG states as tensors and lists, so checkpoints load with weights_only=True."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


def train_step(model, images, masks, optimizer, scaler, engine, loss_name: str, check=None) -> torch.Tensor:
    """The one optimisation step (benchmarks/bench_train.py times this same function)."""
    with engine.autocast():
        outputs = model(images)
    loss = compute_loss(loss_name, outputs, masks)   # fp32, whatever the autocast dtype
    if check is not None:
        check(loss)                                   # before the step: bad weights never reach last.pt
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    logits = outputs[-1] if isinstance(outputs, (list, tuple)) else outputs
    return loss.detach(), logits.detach()


def train_one_epoch(model, loader, optimizer, scaler, engine, args, epoch: int, run_dir: Path,
                    progress: Progress, average: WeightAverage | None = None) -> dict:
    """One pass over the training crops, cut short when the run's progress reaches 1 (the budget);
    returns mean loss, scores at 0.5 and the fraction of time spent waiting for data."""
    model.train()
    total = torch.zeros((), device=engine.device)
    hits = torch.zeros(3, device=engine.device, dtype=torch.int64)   # TP, predicted, true at p > 0.5
    steps, waited = 0, 0.0
    started = tick = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch} train", leave=False, disable=not engine.main, mininterval=1)
    for step, batch in enumerate(bar):
        raise_requested_stop()   # a Ctrl-C whose exception library code swallowed still stops here
        waited += time.perf_counter() - tick
        fraction = progress.fraction()
        if fraction >= 1:
            break
        if args.scheduler == "CosineAnnealingLR":
            set_lr(optimizer, cosine_lr(fraction, args.lr, args.min_lr))
        images, masks = engine.to_device(batch["image"]), batch["mask"].to(engine.device, non_blocking=True)
        where = {"epoch": epoch, "step": step, "names": batch["name"], "run_dir": run_dir}
        loss, logits = train_step(model, images, masks, optimizer, scaler, engine, args.loss,
                                  check=partial(check_finite, engine=engine, **where))
        progress.steps += 1
        if average is not None:
            average.update()
        total += loss
        hits += count_hits(logits, masks)
        steps += 1
        bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
        tick = time.perf_counter()
    bar.close()
    mean = total / max(steps, 1)
    if engine.world > 1:
        dist.all_reduce(mean)
        mean /= engine.world
        dist.all_reduce(hits)
    tp, predicted, true = hits.tolist()
    crops = metrics.scores_at(np.array([[tp, predicted, tp, true]]), 0)
    elapsed = time.perf_counter() - started
    return {"train_loss": float(mean), "train_iou": crops["iou"], "train_f1": crops["f1"],
            "lr": optimizer.param_groups[0]["lr"], "steps": steps, "data_wait": waited / max(elapsed, 1e-9),
            "images_per_s": steps * args.batch_size * engine.world / max(elapsed, 1e-9)}


def sync_buffers(model: torch.nn.Module, engine) -> None:
    """Rank 0's BatchNorm statistics on every rank: DDP broadcasts buffers only before a training
    forward, so after the last one each rank holds its own, and validation must score the saved model."""
    if engine.world > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def count_hits(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(TP, predicted, true) pixel counts at p > 0.5, i.e. logit > 0, kept on the device."""
    pred, true = logits > 0, masks > 0.5
    return torch.stack([(pred & true).sum(), pred.sum(), true.sum()])


def check_replicas_agree(model, engine) -> None:
    """DDP must leave every rank with the same weights and BatchNorm statistics; say so, or stop loudly."""
    flat = torch.cat([v.detach().double().flatten() for v in model.state_dict().values()])
    checksum = float((flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64).remainder(97)).sum())
    sums = [None] * engine.world
    dist.all_gather_object(sums, checksum)
    print(f"rank {engine.rank}: parameter and buffer checksum {checksum:.12e}", flush=True)
    if len(set(sums)) != 1:
        raise RunError(f"DDP replicas diverged: parameter and buffer checksums {sums}")


def check_finite(loss: torch.Tensor, engine, epoch: int, step: int, names, run_dir: Path) -> None:
    """Stop at once (every rank together) on NaN/inf, naming the batch and the last good checkpoint."""
    bad = (~torch.isfinite(loss.detach())).float()
    if engine.world > 1:
        dist.all_reduce(bad)
    if bad.item():
        last = run_dir / "last.pt"
        raise Diverged(f"non-finite loss at epoch {epoch}, step {step} (images: {', '.join(names)}); "
                       f"last good checkpoint: {last if last.exists() else 'none yet'}. "
                       "Try a lower --lr or --precision fp32")


# ---------------------------------------------------------------- logging

def panel(item: dict, prob: np.ndarray) -> torch.Tensor:
    """3 x H x 3W image: input | ground truth | probability."""
    image = item["image"]
    image = (image - image.min()) / (image.max() - image.min() + 1e-8)
    mask = item["mask"].expand(3, -1, -1)
    prob = torch.as_tensor(prob, dtype=torch.float32).expand(3, -1, -1)
    return torch.cat([image, mask, prob], dim=2)


def log_epoch(writer, log_path: Path, row: dict) -> None:
    first = not log_path.exists()
    with open(log_path, "a", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(row))
        if first:
            out.writeheader()
        out.writerow(row)
    for key, value in row.items():
        if key != "epoch":
            group = "loss" if key.endswith("loss") else "val" if key.startswith("val") else "train"
            writer.add_scalar(f"{group}/{key}", value, row["epoch"])
    writer.flush()


def keep_log_rows_before(log_path: Path, epoch: int) -> None:
    """A resumed run repeats the epochs after last.pt: drop their rows from an interrupted log."""
    if not log_path.exists():
        return
    lines = log_path.read_text().splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:] if int(line.split(",")[0]) < epoch]
    log_path.write_text("".join(kept))


def validate(model, val_sets: dict, engine, args, epoch: int, writer) -> dict:
    """Each training dataset's validation split scored on its own. Means over datasets (a small set
    counts as much as a large one): val_ods_f1 (strict) chooses best.pt; val_threshold, the threshold
    that maximises the mean F at THRESHOLD_TOLERANCE px, becomes the run's threshold. Both rules see
    only the training sources, never a test source."""
    panels = []
    want_panels = engine.main and epoch % args.panels_every == 0

    def keep_panel(item, prob):
        if want_panels and len(panels) < 3:
            panels.append(panel(item, prob))
    scored = for_inference(copy.deepcopy(model), engine)   # the form evaluate.py and predict.py load
    options = EvalOptions(loss_name=args.loss, tolerances=(0, THRESHOLD_TOLERANCE))
    results = {name: evaluate(scored, val_set, engine, options, on_image=keep_panel)
               for name, val_set in val_sets.items()}
    strict = {name: metrics.summarize(r["counts"][0])["ods"]["f1"] for name, r in results.items()}
    curves = {name: metrics.f1_curve(r["counts"][THRESHOLD_TOLERANCE]) for name, r in results.items()}
    at_half = [metrics.scores_at(r["counts"][0], F1_THRESHOLD_INDEX) for r in results.values()]
    for i, image in enumerate(panels):
        writer.add_image(f"val_panels/{i}", image, epoch)
    row = {"val_loss": float(np.mean([r["loss"] for r in results.values()])),
           "val_iou": float(np.mean([s["iou"] for s in at_half])), "val_f1": float(np.mean([s["f1"] for s in at_half])),
           "val_ods_f1": float(np.mean(list(strict.values()))),
           "val_threshold": metrics.best_mean_threshold(list(curves.values()))}
    if len(val_sets) > 1:
        row.update({f"val_ods_f1_{name}": f for name, f in strict.items()})
    return row, curves


# ---------------------------------------------------------------- main

def main() -> int:
    # 1. configuration, device and precision
    args = get_args()
    # Before any OpenCV call: the DataLoader workers forked later share the cores already, and a
    # fork taken while OpenCV's thread pool is live can deadlock them. (evaluate/predict keep the pool.)
    cv2.setNumThreads(1)
    engine = make_engine(args.device, args.precision, args.channels_last, fixed_shapes=not args.deterministic)
    torch.manual_seed(args.seed + engine.rank)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(args.seed)
    np.random.seed(args.seed)

    # 2. data: every problem is found before anything is written
    train_set, val_sets, split, sizes = prepare_data(args, engine)
    fine_tune = args.init_from and not args.resume   # a resumed run has its own weights: never the parent's
    init_state, init_path = run_state(args.init_from) if fine_tune else (None, None)
    resume_state = load_checkpoint(MODELS_DIR / args.name / "last.pt") if args.resume else None

    # 3. model, optimiser, schedule
    loader = make_train_loader(train_set, sizes, args, engine)
    model, optimizer, scheduler, scaler = build_training(args, engine)
    if init_state:
        load_weights(model, init_state, init_path)
    # DDP broadcasts rank 0's weights when it wraps the model: the average must start from those,
    # not from each rank's own random init
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if engine.world > 1 else model
    average = WeightAverage(model, args.ema) if args.ema else None
    start, best = 1, -1.0
    progress = Progress(args.epochs * len(loader), args.max_minutes, engine)
    if resume_state:
        start, best = restore(resume_state, MODELS_DIR / args.name / "last.pt", model, optimizer, scheduler, scaler,
                              average)
        resume_progress(resume_state, progress, args, len(loader))
    evaluated = average.model if average else model   # the weights validated, saved as "model", used later

    # 4. the run directory (only the main process writes)
    run_dir, config = open_run_dir(args, engine, split, start)
    if engine.main:
        print(f"run {run_dir}: {len(train_set)} training / {sum(map(len, val_sets.values()))} validation images"
              f"{' from ' + ', '.join(args.dataset) if len(args.dataset) > 1 else ''}, "
              f"{engine.describe()}")
    writer = SummaryWriter(RUNS_DIR / args.name) if engine.main else None

    # 5. epochs: train, validate, log, checkpoint, until the plan (--epochs, --max-minutes) is done
    try:
        for epoch in range(start, args.epochs + 1):
            if progress.fraction() >= 1:
                break
            start_epoch(loader, args, engine, epoch)
            row = {"epoch": epoch, **train_one_epoch(ddp_model, loader, optimizer, scaler, engine, args, epoch,
                                                       run_dir, progress, average)}
            sync_buffers(evaluated, engine)
            curves = {}
            if val_sets:
                scores, curves = validate(evaluated, val_sets, engine, args, epoch, writer)
                row.update(scores)
            if scheduler is not None:
                scheduler.step(row["val_loss"])
            improved = "val_ods_f1" not in row or row["val_ods_f1"] > best   # no validation: the last is best
            best = max(best, row.get("val_ods_f1", -1.0))
            if engine.main:
                with signals_held():   # the log row and last.pt always describe the same epoch
                    log_epoch(writer, run_dir / "log.csv", row)
                    save_epoch(run_dir, config, model, average, optimizer, scheduler, scaler, progress, best, row,
                               improved, curves)
                print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    finally:
        if writer:
            writer.close()
    if engine.main and args.max_minutes and progress.seconds() >= 60 * args.max_minutes:
        print(f"stopped: --max-minutes {args.max_minutes:g} spent after {progress.steps} steps")
    if engine.world > 1:
        sync_buffers(model, engine)
        check_replicas_agree(evaluated, engine)
        dist.barrier()
        dist.destroy_process_group()   # an orderly gloo/NCCL shutdown: no "terminate called" at exit
    if engine.main:
        print(f"best validation ODS F {best:.4f}; checkpoints in {run_dir}" if val_sets else
              f"no validation split: best.pt is the last epoch; checkpoints in {run_dir}")
    return 0


def restore(state: dict, path: Path, model, optimizer, scheduler, scaler, average) -> tuple[int, float]:
    """Everything --resume needs from last.pt; returns (first epoch to run, best score so far)."""
    if average is None:
        load_weights(model, state, path)
    else:   # "model" holds the average; the optimiser steps the raw weights
        load_weights(model, {**state, "model": state["raw_model"]}, path)
        load_weights(average.model, state, path)
        average.updates = state["average_updates"]
    optimizer.load_state_dict(state["optimizer"])
    if scheduler and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state["epoch"] + 1, state["best"]


def resume_progress(state: dict, progress: Progress, args, steps_per_epoch: int) -> None:
    """Continue the saved schedule; a new --epochs or --max-minutes recomputes it over the new plan."""
    saved = state.get("progress") or {"steps": state["epoch"] * steps_per_epoch, "seconds": 0.0}
    progress.steps, progress.seconds_before = saved["steps"], saved["seconds"]
    now = progress.fraction()
    if now >= 1:
        raise RunError(f"run {args.name} has finished its plan ({args.epochs} epochs"
                       + (f", {args.max_minutes:g} minutes" if args.max_minutes else "")
                       + f"); continue it with --resume {args.name} and a larger --epochs or --max-minutes")
    old = state["config"]
    was = planned_fraction(saved["steps"], saved["seconds"], old["epochs"] * steps_per_epoch, old.get("max_minutes"))
    if args.scheduler == "CosineAnnealingLR" and abs(now - was) > 1e-9:
        print(f"the cosine schedule is recomputed over the new plan ({args.epochs} epochs"
              + (f", {args.max_minutes:g} minutes" if args.max_minutes else "") + "): the learning rate jumps from "
              f"{cosine_lr(was, args.lr, args.min_lr):.3g} to {cosine_lr(now, args.lr, args.min_lr):.3g}")


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


def save_epoch(run_dir, config, model, average, optimizer, scheduler, scaler, progress, best, row, improved,
               curves: dict) -> None:
    """last.pt every epoch, best.pt when validation improved; "model" is always the weights validated.
    config.json keeps the best epoch's validation F curves at 2 px, from which its threshold was chosen."""
    weights = {"model": model.state_dict()} if average is None else {
        "model": average.model.state_dict(), "raw_model": model.state_dict(), "average_updates": average.updates}
    state = {**weights, "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict() if scheduler else None, "scaler": scaler.state_dict(),
             "epoch": row["epoch"], "best": best, "rng": rng_state(), "progress": progress.state(),
             "config": {k: v for k, v in config.items() if k != "provenance"},
             "metrics": {k: v for k, v in row.items() if isinstance(v, (int, float)) and math.isfinite(v)}}
    save_checkpoint(run_dir / "last.pt", state)
    if improved:
        save_checkpoint(run_dir / "best.pt", state)
        config["threshold"] = row.get("val_threshold", 0.5)   # 0.5 without validation
        config["best_epoch"] = row["epoch"]
        config["val_f1_curves"] = {name: [round(float(f), 6) for f in curve] for name, curve in curves.items()}
        write_config(run_dir, config)


if __name__ == "__main__":
    run_cli(main)
