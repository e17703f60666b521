"""The training machinery train.py runs, one epoch at a time: the data loader, the
network with its optimiser and schedule (TrainState: what a step changes and last.pt stores), the
optimisation step, validation through the one inference path, checkpoints and the log, and what
--resume restores. train.py decides the run's options and directory; this module trains.

Progress decides the cosine schedule and when to stop (the larger of --epochs' steps done and
--max-minutes spent), so a run stopped by the clock still ends annealed.
"""
import copy
import csv
import math
import random
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

import metrics
from crops import WithNegatives
from dataset import EpochSampler
from inference import EvalOptions, evaluate, for_inference
from losses import compute_loss
from models import freeze_encoder
from predictor import Predictor
from rundir import (DEFAULT_THRESHOLD, Diverged, RunError, load_weights, model_from_config, save_checkpoint,
                    stored_config, write_config)
from trainoptions import Loading, Optimisation, Validation
from utils import raise_requested_stop, signals_held

F1_THRESHOLD_INDEX = 50  # t = 0.50 in metrics.DEFAULT_THRESHOLDS
THRESHOLD_TOLERANCE = 2  # px: the run's threshold is chosen at the literature's tolerance


# ---------------------------------------------------------------- data loading

def seed_worker(worker_id: int) -> None:
    """Each worker gets its own augmentation stream; Ctrl-C is the main process's business."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(info.seed % 2**32)
    np.random.seed(info.seed % 2**32)
    random.seed(info.seed)


def make_train_loader(train_set, sizes: list[int], loading: Loading, engine) -> DataLoader:
    sampler = EpochSampler(sizes, loading.sampling, loading.seed, engine.rank, engine.world,
                           loading.epoch_size or None, loading.group_numbers())
    negatives = len(train_set) - sum(sizes)   # crops.add_negatives appended them after the photos
    if loading.hard_negatives and negatives:
        sampler = WithNegatives(sampler, sum(sizes), negatives, loading.hard_negatives)
    return DataLoader(train_set, batch_size=loading.batch_size, sampler=sampler,
                      num_workers=loading.workers, worker_init_fn=seed_worker,
                      persistent_workers=loading.workers > 0, pin_memory=engine.device.type == "cuda",
                      drop_last=len(sampler) >= loading.batch_size)


def start_epoch(loader: DataLoader, loading: Loading, engine, epoch: int) -> None:
    """Shuffle and augmentation streams depend on (seed, epoch) only, so a resumed run repeats them."""
    loader.sampler.set_epoch(epoch)
    if loading.workers == 0:
        loader.dataset.reseed((loading.seed * 1_000_003 + epoch * engine.world + engine.rank) % 2**32)


# ---------------------------------------------------------------- model, optimiser, schedule

def build_optimisation(opt: Optimisation, engine):
    """The network on the engine's device and memory format, its optimiser, the
    ReduceLROnPlateau schedule (None otherwise) and the loss scaler (active under fp16 only)."""
    model = model_from_config(asdict(opt))
    if opt.freeze_encoder:
        freeze_encoder(model)
    if opt.sync_bn and engine.world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(engine.device)
    if engine.channels_last:
        model.to(memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if opt.optimizer == "Adam":
        optimizer = torch.optim.Adam(trainable, lr=opt.lr, weight_decay=opt.weight_decay)
    else:
        optimizer = torch.optim.SGD(trainable, lr=opt.lr, momentum=opt.momentum,
                                    weight_decay=opt.weight_decay, nesterov=True)
    scheduler = None   # CosineAnnealingLR follows Progress (cosine_lr); "none" keeps --lr
    if opt.scheduler == "ReduceLROnPlateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", patience=opt.patience, factor=opt.factor, min_lr=opt.min_lr)
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


@dataclass
class TrainState:
    """What an optimisation step changes and last.pt stores: the raw weights the optimiser steps, the
    optimiser, the loss scaler, the ReduceLROnPlateau schedule (None otherwise), the weight average
    (--ema), the progress through the plan and the best validation ODS F so far."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    scheduler: object = None
    average: WeightAverage | None = None
    progress: Progress | None = None
    best: float = -1.0
    stepped: torch.nn.Module | None = None   # what the forward pass runs: DDP's wrapper of model under torchrun

    @property
    def forward_model(self) -> torch.nn.Module:
        return self.model if self.stepped is None else self.stepped

    @property
    def validated(self) -> torch.nn.Module:
        """The weights validated, saved as "model" and used later: the average under --ema."""
        return self.average.model if self.average else self.model


def build_state(opt: Optimisation, engine, steps_per_epoch: int, parent: tuple[dict, Path] | None = None) -> TrainState:
    """A fresh TrainState, starting from the parent's weights (state, path) when fine-tuning."""
    model, optimizer, scheduler, scaler = build_optimisation(opt, engine)
    if parent:
        load_weights(model, *parent)
    # DDP broadcasts rank 0's weights when it wraps the model: the average must start from those,
    # not from each rank's own random init
    stepped = torch.nn.parallel.DistributedDataParallel(model) if engine.world > 1 else None
    average = WeightAverage(model, opt.ema) if opt.ema else None
    progress = Progress(opt.epochs * steps_per_epoch, opt.max_minutes, engine)
    return TrainState(model, optimizer, scaler, scheduler, average, progress, stepped=stepped)


# ---------------------------------------------------------------- one epoch

def train_step(state: TrainState, images, masks, engine, loss_name: str,
               check=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The one optimisation step (benchmarks/bench_train.py times this same function)."""
    with engine.autocast():
        outputs = state.forward_model(images)
    loss = compute_loss(loss_name, outputs, masks)   # fp32, whatever the autocast dtype
    if check is not None:
        check(loss)                                   # before the step: bad weights never reach last.pt
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    logits = outputs[-1] if isinstance(outputs, (list, tuple)) else outputs
    return loss.detach(), logits.detach()


def train_one_epoch(state: TrainState, loader, engine, opt: Optimisation, epoch: int, run_dir: Path) -> dict:
    """One pass over the training crops, cut short when the run's progress reaches 1 (the budget);
    returns mean loss, scores at 0.5 and the fraction of time spent waiting for data."""
    state.forward_model.train()
    total = torch.zeros((), device=engine.device)
    hits = torch.zeros(3, device=engine.device, dtype=torch.int64)   # TP, predicted, true at p > 0.5
    steps, waited = 0, 0.0
    started = tick = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch} train", leave=False, disable=not engine.main, mininterval=1)
    for step, batch in enumerate(bar):
        raise_requested_stop()   # a Ctrl-C whose exception library code swallowed still stops here
        waited += time.perf_counter() - tick
        fraction = state.progress.fraction()
        if fraction >= 1:
            break
        if opt.scheduler == "CosineAnnealingLR":
            set_lr(state.optimizer, cosine_lr(fraction, opt.lr, opt.min_lr))
        images, masks = engine.to_device(batch["image"]), batch["mask"].to(engine.device, non_blocking=True)
        where = {"epoch": epoch, "step": step, "names": batch["name"], "run_dir": run_dir}
        loss, logits = train_step(state, images, masks, engine, opt.loss,
                                  check=partial(check_finite, engine=engine, **where))
        state.progress.steps += 1
        if state.average is not None:
            state.average.update()
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
            "lr": state.optimizer.param_groups[0]["lr"], "steps": steps, "data_wait": waited / max(elapsed, 1e-9),
            "images_per_s": steps * opt.batch_size * engine.world / max(elapsed, 1e-9)}


def count_hits(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(TP, predicted, true) pixel counts at p > 0.5, i.e. logit > 0, kept on the device."""
    pred, true = logits > 0, masks > 0.5
    return torch.stack([(pred & true).sum(), pred.sum(), true.sum()])


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


def sync_buffers(model: torch.nn.Module, engine) -> None:
    """Rank 0's BatchNorm statistics on every rank: DDP broadcasts buffers only before a training
    forward, so after the last one each rank holds its own, and validation must score the saved model."""
    if engine.world > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def check_replicas_agree(model, engine) -> None:
    """DDP must leave every rank with the same weights and BatchNorm statistics; say so, or stop loudly."""
    flat = torch.cat([v.detach().double().flatten() for v in model.state_dict().values()])
    checksum = float((flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64).remainder(97)).sum())
    sums = [None] * engine.world
    dist.all_gather_object(sums, checksum)
    print(f"rank {engine.rank}: parameter and buffer checksum {checksum:.12e}", flush=True)
    if len(set(sums)) != 1:
        raise RunError(f"DDP replicas diverged: parameter and buffer checksums {sums}")


# ---------------------------------------------------------------- validation

def validate(model, val_sets: dict, engine, settings: Validation, epoch: int, writer) -> tuple[dict, dict]:
    """Each training dataset's validation split scored on its own. Means over datasets (a small set
    counts as much as a large one): val_ods_f1 (strict) chooses best.pt; val_threshold, the threshold
    that maximises the mean F at THRESHOLD_TOLERANCE px, becomes the run's threshold. Both rules see
    only the training sources, never a test source."""
    panels = []
    want_panels = engine.main and epoch % settings.panels_every == 0

    def keep_panel(item, prob):
        if want_panels and len(panels) < 3:
            panels.append(panel(item, prob))
    scored = for_inference(copy.deepcopy(model), engine)   # the form evaluate.py and predict.py load
    predictor = Predictor(scored, engine, {"scale": settings.scale})   # items come preprocessed: no intensity
    options = EvalOptions(loss_name=settings.loss, tolerances=(0, THRESHOLD_TOLERANCE))
    results = {name: evaluate(predictor, val_set, options, on_image=keep_panel) for name, val_set in val_sets.items()}
    strict = {name: metrics.summarize(r["counts"][0])["ods"]["f1"] for name, r in results.items()}
    curves = {name: metrics.f1_curve(r["counts"][THRESHOLD_TOLERANCE]) for name, r in results.items()}
    at_half = [metrics.scores_at(r["counts"][0], F1_THRESHOLD_INDEX) for r in results.values()]
    for i, image in enumerate(panels):
        writer.add_image(f"val_panels/{i}", image, epoch)
    row = {"val_loss": float(np.mean([r["loss"] for r in results.values()])),
           "val_iou": float(np.mean([s["iou"] for s in at_half])), "val_f1": float(np.mean([s["f1"] for s in at_half])),
           "val_ods_f1": float(np.mean(list(strict.values()))),
           "val_threshold": run_threshold(list(curves.values()))}
    if len(val_sets) > 1:
        row.update({f"val_ods_f1_{name}": f for name, f in strict.items()})
    return row, curves


def panel(item: dict, prob: np.ndarray) -> torch.Tensor:
    """3 x H x 3W image: input | ground truth | probability."""
    image = item["image"]
    image = (image - image.min()) / (image.max() - image.min() + 1e-8)
    mask = item["mask"].expand(3, -1, -1)
    prob = torch.as_tensor(prob, dtype=torch.float32).expand(3, -1, -1)
    return torch.cat([image, mask, prob], dim=2)


# ---------------------------------------------------------------- checkpoints and the log

@dataclass
class RunFiles:
    """Where an epoch's results go: models/<name>/ (log.csv, last.pt, best.pt), the run's config.json
    content, and the TensorBoard writer of runs/<name>/ (None on DDP ranks other than 0)."""
    folder: Path
    config: dict
    writer: object = None


def validates_after(epoch: int, every: int, last: bool) -> bool:
    """Whether validation follows this epoch (--val-every): the first, every `every`-th, and the last (of
    --epochs, or where the plan ran out), so a broken validation shows at once and the final weights are
    always scored."""
    return last or epoch == 1 or epoch % every == 0


def end_epoch(state: TrainState, files: RunFiles, row: dict, curves: dict, engine, validating: bool = True) -> None:
    """Step the plateau schedule and keep the best score; the main process logs the row and saves the
    checkpoints, and prints the row. A run without validation (`validating` false) keeps its last epoch
    as best; one that skipped validating this epoch (--val-every) keeps its best."""
    if state.scheduler is not None:
        state.scheduler.step(row["val_loss"])
    improved = row["val_ods_f1"] > state.best if "val_ods_f1" in row else not validating
    state.best = max(state.best, row.get("val_ods_f1", -1.0))
    if engine.main:
        with signals_held():   # the log row and last.pt always describe the same epoch
            log_epoch(files.writer, files.folder / "log.csv", row)
            save_epoch(state, files.folder, files.config, row, improved, curves)
        print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))


def run_threshold(curves: list) -> float:
    """The threshold maximising the mean validation F over the thresholds a run may keep (0.00-0.99: at
    1.00 no pixel is ever a crack); where validation found no crack at any threshold (F 0 everywhere,
    a run of one epoch on a few photos), the default 0.5: a threshold chosen from nothing is no choice."""
    usable = metrics.DEFAULT_THRESHOLDS[:-1]
    curves = [np.asarray(c)[:-1] for c in curves]
    if not np.any(np.mean(curves, axis=0) > 0):
        return DEFAULT_THRESHOLD
    return metrics.best_mean_threshold(curves, usable)


def save_epoch(state: TrainState, run_dir: Path, config: dict, row: dict, improved: bool, curves: dict) -> None:
    """last.pt every epoch, best.pt when validation improved; "model" is always the weights validated.
    config.json keeps the best epoch's validation F curves at 2 px, from which its threshold was chosen."""
    model, average = state.model, state.average
    weights = {"model": model.state_dict()} if average is None else {
        "model": average.model.state_dict(), "raw_model": model.state_dict(), "average_updates": average.updates}
    checkpoint = {**weights, "optimizer": state.optimizer.state_dict(),
                  "scheduler": state.scheduler.state_dict() if state.scheduler else None,
                  "scaler": state.scaler.state_dict(), "epoch": row["epoch"], "best": state.best, "rng": rng_state(),
                  "progress": state.progress.state(),
                  "config": {k: v for k, v in stored_config(config).items() if k != "provenance"},
                  "metrics": {k: v for k, v in row.items() if isinstance(v, (int, float)) and math.isfinite(v)}}
    save_checkpoint(run_dir / "last.pt", checkpoint)
    if improved:
        save_checkpoint(run_dir / "best.pt", checkpoint)
        config["threshold"] = row.get("val_threshold", DEFAULT_THRESHOLD)   # without validation: the default
        config["best_epoch"] = row["epoch"]
        config["val_f1_curves"] = {name: [round(float(f), 6) for f in curve] for name, curve in curves.items()}
        write_config(run_dir, config)


def log_epoch(writer, log_path: Path, row: dict) -> None:
    """One row of log.csv under the header its first row wrote (the first epoch is always validated, so
    an epoch --val-every skips leaves its validation columns empty)."""
    first = not log_path.exists()
    header = list(row) if first else log_path.read_text().split("\n", 1)[0].split(",")
    with open(log_path, "a", newline="") as f:
        out = csv.DictWriter(f, fieldnames=header, restval="")
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


# ---------------------------------------------------------------- --resume

def restore(checkpoint: dict, path: Path, state: TrainState) -> int:
    """Everything --resume needs from last.pt into state (best score included); returns the first epoch to run."""
    average = state.average
    if average is None:
        load_weights(state.model, checkpoint, path)
    else:   # "model" holds the average; the optimiser steps the raw weights
        load_weights(state.model, {**checkpoint, "model": checkpoint["raw_model"]}, path)
        load_weights(average.model, checkpoint, path)
        average.updates = checkpoint["average_updates"]
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    if state.scheduler and checkpoint.get("scheduler"):
        state.scheduler.load_state_dict(checkpoint["scheduler"])
    state.scaler.load_state_dict(checkpoint["scaler"])
    set_rng_state(checkpoint["rng"])
    state.best = checkpoint["best"]
    return checkpoint["epoch"] + 1


def resume_progress(state: dict, progress: Progress, opt: Optimisation, name: str, steps_per_epoch: int) -> None:
    """Continue the saved schedule of run `name`; a new --epochs or --max-minutes recomputes it over the new plan."""
    saved = state.get("progress") or {"steps": state["epoch"] * steps_per_epoch, "seconds": 0.0}
    progress.steps, progress.seconds_before = saved["steps"], saved["seconds"]
    now = progress.fraction()
    plan = f"{opt.epochs} epochs" + (f", {opt.max_minutes:g} minutes" if opt.max_minutes else "")
    if now >= 1:
        raise RunError(f"run {name} has finished its plan ({plan}); continue it with --resume {name} and a larger "
                       "--epochs or --max-minutes")
    old = state["config"]
    was = planned_fraction(saved["steps"], saved["seconds"], old["epochs"] * steps_per_epoch, old.get("max_minutes"))
    if opt.scheduler == "CosineAnnealingLR" and abs(now - was) > 1e-9:
        print(f"the cosine schedule is recomputed over the new plan ({plan}): the learning rate jumps from "
              f"{cosine_lr(was, opt.lr, opt.min_lr):.3g} to {cosine_lr(now, opt.lr, opt.min_lr):.3g}")
