"""What the scripts share: the run directory, device and precision, checkpoints, and the
single inference path (pad, tile, TTA) plus the evaluation routine used by train.py and
evaluate.py alike.
"""
import argparse
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import metrics
from dataset import DatasetError
from losses import compute_loss
from models import build_model, fold_batchnorm
from visuals import WriteError

MODELS_DIR = Path("models")
RUNS_DIR = Path("runs")
REPO_DIR = Path(__file__).resolve().parent
PRETRAINED_DIR = REPO_DIR / "pretrained"   # found from any working directory
DEFAULT_BUNDLE = "crackseg-general"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
NAME_RULE = "letters, digits, '_', '-' and '.', not starting with '.' (it names a folder under models/ or --data-dir)"


class RunError(Exception):
    """A problem with a run directory or checkpoint; the message says what to do."""
    exit_code = 2


class Diverged(RunError):
    """Training produced a non-finite loss."""
    exit_code = 1


# ---------------------------------------------------------------- run directory

def name_arg(text: str) -> str:
    """argparse type of every run and dataset name: a name such as '..' or '/home' would make a
    folder (or an --overwrite) reach outside models/ or the data folder."""
    if not NAME_PATTERN.fullmatch(text):
        plus = " ('+' joins an ensemble's members, RUN1+RUN2, in evaluate.py and predict.py)" if "+" in text else ""
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid name: use {NAME_RULE}{plus}")
    return text


def runs_arg(text: str) -> str:
    """argparse type of RUN or RUN1+RUN2+... (an ensemble): each member a valid name."""
    for member in text.split("+"):
        name_arg(member)
    return text


def own_folder(root: Path, name: str) -> Path:
    """root/name, proven to lie strictly inside root (no '..', no symlink out) before anything deletes it."""
    folder = root / name
    inside = folder.resolve().parent == root.resolve() and not folder.is_symlink()
    if not NAME_PATTERN.fullmatch(name) or not inside:
        raise RunError(f"refusing to remove {folder}: it does not resolve to a folder directly inside {root}/")
    return folder


def remove_run(name: str) -> None:
    """--overwrite: delete models/NAME and runs/NAME, and nothing else."""
    folders = [own_folder(MODELS_DIR, name), own_folder(RUNS_DIR, name)]   # both checked before either goes
    for folder in folders:
        if folder.exists():
            shutil.rmtree(folder)


def json_dump(path: Path, obj) -> None:
    """Write atomically: a crash mid-write never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def fresh_run_name(name: str | None, default: str, overwrite: bool) -> str:
    """An explicit name must be new (or --overwrite); the default gets _2, _3, ... instead."""
    if name and bundle_dir(name):
        raise RunError(f"{name!r} is the name of a bundled model ({bundle_dir(name)}); choose another --name "
                       f"(fine-tune it with --init-from {name})")
    if name:
        if (MODELS_DIR / name).exists() and not overwrite:
            raise RunError(f"run {MODELS_DIR / name} already exists; use --resume {name} to "
                           "continue it, --overwrite to replace it, or another --name")
        return name
    candidate, n = default, 1
    while (MODELS_DIR / candidate).exists():
        n += 1
        candidate = f"{default}_{n}"
    return candidate


def bundle_dir(name: str) -> Path | None:
    """pretrained/NAME/ when NAME is a model shipped with crackseg, else None."""
    folder = PRETRAINED_DIR / name
    return folder if name and (folder / "config.json").is_file() else None


def load_config(name: str) -> dict:
    """A run's config.json, or a bundled model's (bundled names come first: train.py refuses them)."""
    path = (bundle_dir(name) or MODELS_DIR / name) / "config.json"
    if not path.is_file():
        runs = sorted(p.name for p in MODELS_DIR.glob("*/config.json"))
        known = ", ".join(p.split("/")[0] for p in runs) or "none"
        raise RunError(f"no run {name!r}: {path} does not exist (runs under {MODELS_DIR}/: {known})")
    return json.loads(path.read_text())


def run_datasets(config: dict) -> list[str]:
    """The training datasets of a run (runs of one dataset stored a name, not a list)."""
    return [config["dataset"]] if isinstance(config["dataset"], str) else list(config["dataset"])


def read_split(name: str) -> dict[str, dict[str, list[str]]]:
    """{DATASET: {"train": [...], "val": [...]}} of a run; runs of one dataset stored {"train", "val", ...}."""
    split = json.loads(((bundle_dir(name) or MODELS_DIR / name) / "split.json").read_text())
    if "train" in split:
        return {run_datasets(load_config(name))[0]: {"train": split["train"], "val": split["val"]}}
    return split


def provenance() -> dict:
    """Git commit and package versions, saved with every run."""
    import albumentations
    import cv2
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"git_commit": commit or "unknown", "python": sys.version.split()[0],
            "torch": torch.__version__, "numpy": np.__version__, "opencv": cv2.__version__,
            "albumentations": albumentations.__version__}


# ---------------------------------------------------------------- device and precision

@dataclass
class Engine:
    """Device, autocast dtype and memory format, decided once at start-up."""
    device: torch.device
    dtype: torch.dtype | None = None
    channels_last: bool = True
    rank: int = 0
    world: int = 1

    def describe(self) -> str:
        """'cpu fp32 NCHW', 'cuda:0 bf16 channels_last': what every script prints at start."""
        dtype = str(self.dtype or "fp32").replace("torch.bfloat16", "bf16").replace("torch.float16", "fp16")
        return f"{self.device} {dtype} {'channels_last' if self.channels_last else 'NCHW'}"

    def record(self) -> dict:
        """The engine as metrics.json and config.json store it."""
        device, precision, memory_format = self.describe().split()
        return {"device": device, "precision": precision, "memory_format": memory_format}

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else nullcontext()

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    @property
    def main(self) -> bool:
        return self.rank == 0


def auto_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware runs it fast, fp16 on older GPUs, fp32 otherwise."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without them bf16 is emulated and no faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return "avx512_bf16" in flags or "amx_bf16" in flags or "AMX" in torch.backends.cpu.get_cpu_capability()


def channels_last_rule(dtype: torch.dtype | None) -> bool:
    """channels_last pays only under bf16/fp16 autocast (oneDNN's and cuDNN's fast low-precision
    kernels want it); in fp32 on a CPU without native bf16 it measured slower than NCHW
    (0.85x training, 0.95x inference on an AVX2 machine)."""
    return dtype in (torch.bfloat16, torch.float16)


def make_engine(device: str = "auto", precision: str = "auto", channels_last: bool | None = None,
                fixed_shapes: bool = False) -> Engine:
    """channels_last None: channels_last_rule for the chosen precision; True/False force it.
    fixed_shapes: the inputs have one size (training crops), so cuDNN may benchmark kernels once;
    evaluation and prediction see a new size per image, where it would re-tune each time."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = fixed_shapes
    if precision == "fp16" and dev.type != "cuda":
        raise RunError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    dtype = {"auto": auto_dtype(dev), "fp32": None, "bf16": torch.bfloat16,
             "fp16": torch.float16}[precision]
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if channels_last is None:
        channels_last = channels_last_rule(dtype)
    return Engine(dev, dtype, channels_last, rank, world)


# ---------------------------------------------------------------- checkpoints

# The Ctrl-C or SIGTERM received (0: none) and how many signals_held blocks are open. A flag, not
# only an exception: an exception the handler raises inside library code that swallows it (a
# __del__ run by the garbage collector prints "Exception ignored" and goes on) would lose the
# signal, so train.py also asks raise_requested_stop() at every step.
_stop = {"signal": 0, "held": 0}


def _on_stop_signal(signum, frame):
    _stop["signal"] = signum
    if not _stop["held"]:
        raise_requested_stop()


def raise_requested_stop() -> None:
    """Raise KeyboardInterrupt or Terminated if Ctrl-C or SIGTERM arrived since run_cli started."""
    if _stop["signal"] == signal.SIGINT:
        raise KeyboardInterrupt
    if _stop["signal"] == signal.SIGTERM:
        raise Terminated()


@contextmanager
def signals_held():
    """Ctrl-C and SIGTERM wait until the block is done, then stop the program (blocks nest).

    A flag rather than a signal mask: a blocked signal is delivered to another thread, and
    Python then runs the handler in the main thread anyway, inside the block."""
    _stop["held"] += 1
    try:
        yield
    finally:
        _stop["held"] -= 1
    if not _stop["held"]:
        raise_requested_stop()


def save_checkpoint(path: Path, state: dict) -> None:
    """Temporary file then rename, never interrupted: a crash leaves the previous checkpoint whole."""
    tmp = path.with_name(path.name + ".tmp")
    with signals_held():
        torch.save(state, tmp)
        os.replace(tmp, path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu", bare: bool = False) -> dict:
    """weights_only=True: a checkpoint from a stranger cannot run code when loaded.
    bare: a plain state dict (a bundled model.pt), not a crackseg training checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        raise RunError(f"{path} holds objects other than tensors and plain values, so it was "
                       f"refused unloaded (it could run code): {str(err).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise RunError(f"{path} is truncated or not a PyTorch checkpoint ({err}); "
                       "use another checkpoint of the run (last.pt or best.pt)") from None
    if not isinstance(state, dict) or not (bare or ("model" in state and "config" in state)):
        raise RunError(f"{path} is not a crackseg checkpoint (no 'model' and 'config' entries)")
    return state


def model_from_config(config: dict) -> torch.nn.Module:
    """Runs from before --align-corners existed were trained with the reference's True."""
    return build_model(config["arch"], deep_supervision=config.get("deep_supervision", False),
                       base_width=config.get("base_width", 32), align_corners=config.get("align_corners", True))


def load_weights(model: torch.nn.Module, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        detail = " ".join(str(err).split())[:300]
        raise RunError(f"{path} does not fit a {type(model).__name__} of this configuration "
                       f"(it was saved by a {state['config'].get('arch')} run): {detail}") from None


def run_state(name: str, which: str = "best.pt", device: torch.device | str = "cpu") -> tuple[dict, Path]:
    """The weights of a run (its checkpoint) or of a bundled model, as {"model", "config"}, and their file."""
    bundle = bundle_dir(name)
    if bundle:
        return load_bundle(bundle, device), bundle / "model.pt"
    path = MODELS_DIR / name / which
    return load_checkpoint(path, device), path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(folder: Path, device: torch.device | str = "cpu") -> dict:
    """A bundled model: model.pt (half-precision weights only) checked against the sha256 in config.json
    before it is opened, loaded with weights_only=True, and widened to fp32 (the engine picks the precision)."""
    config = json.loads((folder / "config.json").read_text())
    path = folder / "model.pt"
    restore = f"restore it with `git checkout -- pretrained/{folder.name}/model.pt`"
    if not path.is_file():
        raise RunError(f"{path} is missing: {restore}")
    found = file_sha256(path)
    if found != config.get("sha256"):
        raise RunError(f"{path} does not match the sha256 in {folder / 'config.json'} (expected "
                       f"{config.get('sha256')}, found {found}): the file is damaged or was replaced; {restore}")
    state = load_checkpoint(path, device, bare=True)
    return {"model": {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, "config": config}


LOCAL_KEYS = ("data_dir", "name", "resume", "overwrite", "init_from", "device", "workers", "cache", "preset",
              "panels_every")   # paths and machine settings: meaningless in a shipped model


def export_bundle(run: str, folder: Path) -> dict:
    """Write a finished run as a bundled model: model.pt (best.pt's weights only, half precision),
    config.json (no local paths, with model.pt's sha256) and split.json. Returns the config."""
    state, _ = run_state(run)
    folder.mkdir(parents=True, exist_ok=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(half, folder / "model.pt")
    config = {k: v for k, v in load_config(run).items() if k not in LOCAL_KEYS}
    config.update({"exported_from": run, "weights": "fp16", "sha256": file_sha256(folder / "model.pt")})
    json_dump(folder / "config.json", config)
    json_dump(folder / "split.json", read_split(run))
    return config


def load_run_model(name: str, engine: Engine, which: str = "best.pt") -> tuple[torch.nn.Module, dict]:
    """The model of a run or bundle, with its config (threshold checked, 0.5 if absent); ready for inference."""
    config = load_config(name)
    config["threshold_source"] = "config.json" if "threshold" in config else "default"
    config["threshold"] = config.get("threshold", 0.5)
    if not (0 <= config["threshold"] < 1 and round(config["threshold"], 2) == config["threshold"]):
        raise RunError(f"{name}'s config.json: threshold {config['threshold']!r} must be one of "
                       "0.00, 0.01, ..., 0.99 (the grid every score is counted on)")
    state, path = run_state(name, which, engine.device)
    model = model_from_config(config)
    load_weights(model, state, path)
    config["checkpoint"] = str(path)
    return for_inference(model, engine), config


def for_inference(model: torch.nn.Module, engine: Engine) -> torch.nn.Module:
    """The one form every prediction is made with (training's validation, evaluate.py, predict.py):
    eval mode, BatchNorm folded into the convolutions, on the engine's device and memory format.
    Folding changes float rounding, which under bf16 autocast flips pixels at the threshold, so a
    threshold chosen on unfolded maps would not be the one users' maps get."""
    fold_batchnorm(model.eval()).to(engine.device)
    if engine.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


class Ensemble(torch.nn.Module):
    """Several runs as one model: the logit of their mean probability."""

    def __init__(self, members: list[torch.nn.Module]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prob = torch.stack([member(x).float().sigmoid() for member in self.members]).mean(0)
        return torch.logit(prob, eps=1e-7)


PREPROCESSING = ("minmax", "normalize", "clahe")


def load_runs(name: str, engine: Engine, which: str = "best.pt") -> tuple[torch.nn.Module, dict]:
    """RUN: that run's model; RUN1+RUN2+...: an Ensemble of runs that preprocess alike.

    The ensemble's config is the first run's, with the members' mean threshold and their names."""
    names = name.split("+")
    loaded = [load_run_model(member, engine, which) for member in names]
    if len(loaded) == 1:
        return loaded[0]
    configs = [config for _, config in loaded]
    for key in PREPROCESSING:
        if len({json.dumps(c.get(key)) for c in configs}) > 1:
            raise RunError(f"runs {', '.join(names)} differ in {key}; an ensemble needs one preprocessing")
    config = {**configs[0], "members": list(names), "threshold_source": "the members' mean",
              "checkpoint": " + ".join(c["checkpoint"] for c in configs),
              "threshold": round(float(np.mean([c["threshold"] for c in configs])), 2)}   # on the 0.01 grid
    return Ensemble([model for model, _ in loaded]).eval(), config


# ---------------------------------------------------------------- inference

TILE, OVERLAP = 1024, 128   # the one-pass limit and tile overlap of training's validation, evaluate.py and predict.py

def pad_to_multiple(x: torch.Tensor, multiple: int = 16) -> torch.Tensor:
    """Pad the bottom and right edges so both sides divide by `multiple` (mirror where possible)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def forward_logits(model: torch.nn.Module, x: torch.Tensor, engine: Engine) -> torch.Tensor:
    """Bx3xHxW (any H, W) -> Bx1xHxW fp32 logits."""
    h, w = x.shape[-2:]
    with engine.autocast():
        out = model(engine.to_device(pad_to_multiple(x)))
    return out[..., :h, :w].float()


def dihedral(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """The k-th of the 8 rotations/flips of the square's symmetry group (and its inverse)."""
    flip, rot = k >= 4, k % 4
    if inverse:
        x = torch.rot90(x, -rot, (-2, -1))
        return torch.flip(x, (-1,)) if flip else x
    x = torch.flip(x, (-1,)) if flip else x
    return torch.rot90(x, rot, (-2, -1))


def tile_layout(size: int, tile: int, overlap: int) -> tuple[int, list[int]]:
    """Tile side and starts along one axis of a padded image (a multiple of 16): the fewest tiles of at
    most `tile` px overlapping by at least `overlap`, spread evenly on the 16-pixel pooling grid, so
    no pixel is computed more often than it must be (a 4000 px side: 5 tiles of 928, not 1024)."""
    if size <= tile:
        return size, [0]
    n = math.ceil((size - overlap) / (tile - overlap))
    while True:   # +15 per seam: rounding the starts down to the grid can cost up to 15 px of overlap
        side = 16 * math.ceil((size + (n - 1) * (overlap + 15)) / n / 16)
        if side <= tile:
            break
        n += 1
    return side, [16 * (i * (size - side) // (n - 1) // 16) for i in range(n - 1)] + [size - side]


def blend_ramp(n: int, overlap: int, start_inside: bool, end_inside: bool) -> torch.Tensor:
    """Weights along one side of a tile. A tile's outer pixels are computed with zero padding where
    the one pass saw real context, so near an edge inside the image its map is least like the one
    pass's: the outer 3/8 of the overlap get no weight, the middle quarter ramps up, the inner 3/8
    are full. Neighbours overlap by at least `overlap`, so every pixel keeps a positive weight.
    Edges on the image border are full weight: there the one pass had no context either."""
    margin, ramp = 3 * overlap // 8, max(overlap - 2 * (3 * overlap // 8), 1)
    i = torch.arange(n, dtype=torch.float32)

    def side(distance, inside):
        return torch.clamp((distance - margin + 1) / ramp, 0, 1) if inside else torch.ones(n)
    return side(i, start_inside) * side(n - 1 - i, end_inside)


def predict_tiled(model, x: torch.Tensor, engine: Engine, tile: int, overlap: int) -> tuple[torch.Tensor, int]:
    """Bx3xHxW -> Bx1xHxW probability from overlapping tiles; also returns the tile count.

    Padded to a multiple of 16 first, as the one pass is, so every tile starts on the network's
    16-pixel pooling grid."""
    height, width = x.shape[-2:]
    x = pad_to_multiple(x)
    b, _, h, w = x.shape
    (th, tops), (tw, lefts) = tile_layout(h, tile, overlap), tile_layout(w, tile, overlap)
    total = torch.zeros(b, 1, h, w)
    weight = torch.zeros(1, 1, h, w)
    count = 0
    for top in tops:
        for left in lefts:
            window = (blend_ramp(th, overlap, top > 0, top + th < h)[:, None]
                      * blend_ramp(tw, overlap, left > 0, left + tw < w)[None, :])
            patch = x[..., top:top + th, left:left + tw]
            prob = torch.sigmoid(forward_logits(model, patch, engine)).cpu()
            total[..., top:top + th, left:left + tw] += prob * window
            weight[..., top:top + th, left:left + tw] += window
            count += 1
    return (total / weight)[..., :height, :width], count


@torch.inference_mode()
def predict_probability(model, x: torch.Tensor, engine: Engine, tta: bool = False,
                        tile: int = TILE, overlap: int = OVERLAP) -> torch.Tensor:
    """Bx3xHxW image -> Bx1xHxW fp32 crack probability at full resolution (CPU tensor).

    One pass when both sides fit in `tile`, overlapping tiles otherwise; with `tta`
    the mean probability over the 8 rotations/flips."""
    def one_view(view):
        if max(view.shape[-2:]) <= tile:
            return torch.sigmoid(forward_logits(model, view, engine)).cpu()
        return predict_tiled(model, view, engine, tile, overlap)[0]
    if not tta:
        return one_view(x)
    return sum(dihedral(one_view(dihedral(x, k)), k, inverse=True) for k in range(8)) / 8


# ---------------------------------------------------------------- evaluation

def shard(indices: list[int], engine: Engine) -> list[int]:
    return indices[engine.rank::engine.world]


def gather(items: list, engine: Engine) -> list:
    """Concatenate per-rank lists on every rank (validation counts are summed, not averaged)."""
    if engine.world == 1:
        return items
    parts = [None] * engine.world
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


@torch.inference_mode()
def evaluate(model, dataset, engine: Engine, loss_name: str | None = None, tolerances=(0,),
             thresholds=None, tta: bool = False, on_image=None, tile: int = TILE, overlap: int = OVERLAP) -> dict:
    """Predict every full image of `dataset` and count (cntP, sumP, cntR, sumR) per threshold.

    The maps come from predict_probability, the path predict.py uses, so a threshold chosen here
    (training's validation) is applied to the same maps later. Returns {"names", "loss" (None without
    loss_name), "counts": {tol: (N,T,4)}}. `on_image(item, prob)` is called per image (panels, saving maps)."""
    model.eval()
    rows = []
    indices = shard(list(range(len(dataset))), engine)
    for index in tqdm(indices, desc="evaluate", unit="image", leave=False, disable=not engine.main, mininterval=1):
        item = dataset[index]
        image, mask, roi = item["image"][None], item["mask"][0].numpy(), item["roi"][0].numpy()
        prob = predict_probability(model, image, engine, tta=tta, tile=tile, overlap=overlap)
        loss = None if loss_name is None else \
            float(compute_loss(loss_name, probability_logits(prob), item["mask"][None]))
        prob = prob[0, 0].numpy()
        counts = [metrics.image_counts(prob, mask, tolerance=t, thresholds=thresholds, roi=roi)
                  for t in tolerances]
        rows.append((item["name"], loss, counts))
        if on_image is not None:
            on_image(item, prob)
    rows = gather(rows, engine)
    losses = [row[1] for row in rows if row[1] is not None]
    return {"names": [row[0] for row in rows],
            "loss": float(np.mean(losses)) if losses else None,
            "counts": {t: np.stack([row[2][i] for row in rows]) for i, t in enumerate(tolerances)}}


def probability_logits(prob: torch.Tensor) -> torch.Tensor:
    """Logits back from the (possibly tiled or TTA-averaged) probabilities, for the loss functions.

    Clamped where fp32 probabilities saturate (|logit| > 16); below that the round trip is exact
    to fp32 precision, so a one-pass image's loss is that of its logits."""
    return torch.logit(prob, eps=1e-7)


# ---------------------------------------------------------------- command-line entry

class Terminated(BaseException):
    """SIGTERM, turned into an exception so the scripts clean up as for Ctrl-C.

    A BaseException, like KeyboardInterrupt: library code's `except Exception` must not swallow it."""


def run_cli(main) -> None:
    """Run `main()`: user errors exit 2 with one clear message, Ctrl-C 130, SIGTERM 143."""
    _stop.update(signal=0, held=0)
    signal.signal(signal.SIGINT, _on_stop_signal)
    signal.signal(signal.SIGTERM, _on_stop_signal)
    try:
        code = main()
    except (DatasetError, RunError) as err:
        print(f"error: {err}", file=sys.stderr)
        code = getattr(err, "exit_code", 2)
    except WriteError as err:   # the machine, not the command: exit 1
        print(f"error: {err}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        code = 130
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        code = 143
    sys.exit(code or 0)
