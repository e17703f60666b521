"""The one inference path: a run's (or an ensemble's) network loaded for inference, and the
probability map of an image of any size (padding to the pooling grid, overlapping tiles beyond the
one-pass limit, the 8 rotations/flips of TTA, the scale policy), plus evaluate(), which scores a
dataset's images through a predictor.Predictor (the seam every caller predicts through) for training's
validation and evaluate.py alike.
"""
import argparse
import json
import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import metrics
import scales
from engine import Engine, add_engine_options
from losses import compute_loss
from models import fold_batchnorm
from rundir import RunError, load_config_with_source, load_weights, model_from_config, run_state

# ---------------------------------------------------------------- loading

def add_inference_options(p: argparse.ArgumentParser) -> None:
    """The options of evaluate.py and predict.py that choose the weights and how they run."""
    p.add_argument("--tta", action="store_true", help="average the 8 rotations/flips (8x slower)")
    p.add_argument("--checkpoint", default="best.pt", help="best.pt or last.pt")
    scales.add_scale_option(p, None)
    add_engine_options(p)


def load_run_model(name: str, engine: Engine, which: str = "best.pt") -> tuple[torch.nn.Module, dict]:
    """The model of a run or bundle, with its config (threshold checked, 0.5 if absent); ready for inference."""
    config, source = load_config_with_source(name)
    config["threshold_source"] = source
    state, path = run_state(name, which, engine.device)
    model = model_from_config(config)
    load_weights(model, state, path)
    config["checkpoint"] = str(path)
    return for_inference(model, engine), config


def use_scale(config: dict, scale: float | str | None) -> None:
    """The run's scale policy, or `scale` when given, with the threshold chosen under that scale where
    config.json keeps one (thresholds_by_scale: a bundle whose policy changed after training keeps
    the threshold of each policy, so --scale 1 restores the old behaviour whole)."""
    config["scale"] = config["scale"] if scale is None else scale
    chosen = config["thresholds_by_scale"].get(scales.policy_key(config["scale"]))
    if chosen is not None:
        config["threshold"] = chosen


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
        self.input_multiple = math.lcm(*(model_stride(m) for m in members))

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
              "thresholds_by_scale": {},   # one member's per-scale thresholds are not the ensemble's
              "checkpoint": " + ".join(c["checkpoint"] for c in configs),
              "threshold": round(float(np.mean([c["threshold"] for c in configs])), 2)}   # on the 0.01 grid
    return Ensemble([model for model, _ in loaded]).eval(), config


# ---------------------------------------------------------------- inference

TILE, OVERLAP = 1024, 128   # the one-pass limit and tile overlap of training's validation, evaluate.py and predict.py


def model_stride(model: torch.nn.Module) -> int:
    """What the network's input sides must divide by (2 ** its poolings)."""
    return getattr(model, "input_multiple", 16)


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
        out = model(engine.to_device(pad_to_multiple(x, model_stride(model))))
    return out[..., :h, :w].float()


def dihedral(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """The k-th of the 8 rotations/flips of the square's symmetry group (and its inverse)."""
    flip, rot = k >= 4, k % 4
    if inverse:
        x = torch.rot90(x, -rot, (-2, -1))
        return torch.flip(x, (-1,)) if flip else x
    x = torch.flip(x, (-1,)) if flip else x
    return torch.rot90(x, rot, (-2, -1))


def tile_layout(size: int, tile: int, overlap: int, stride: int = 16) -> tuple[int, list[int]]:
    """Tile side and starts along one axis of a padded image (a multiple of `stride`): the fewest tiles
    of at most `tile` px overlapping by at least `overlap`, spread evenly on the network's pooling grid,
    each as small as that allows, so no pixel is computed more often than it must be (a 4000 px side:
    5 tiles of 912, not 1024)."""
    if size <= tile:
        return size, [0]
    sides = range(stride, tile - tile % stride + 1, stride)
    if not sides or sides[-1] - overlap < stride:
        raise RunError(f"--tile {tile} with --overlap {overlap} leaves no step on this model's {stride} px "
                       f"grid: use --tile of at least --overlap + {stride}")
    for n in range(max(2, math.ceil((size - overlap) / (tile - overlap))), size // stride + 2):
        for side in sides:
            # starts rounded down to the grid lie at most one grid step more than (size - side) / (n - 1) apart
            if side - overlap >= stride * math.ceil((size - side) / ((n - 1) * stride)):
                return side, [stride * (i * (size - side) // (n - 1) // stride) for i in range(n - 1)] + [size - side]
    raise AssertionError("unreachable: n - 1 = size / stride tiles step one grid cell apart")


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


# Who hears about each tile (done, total) while a large image is predicted: a progress bar is a caller's
# concern, so it is set around a call (reporting_tiles) rather than threaded through every signature.
TILE_PROGRESS: ContextVar = ContextVar("tile_progress", default=None)


@contextmanager
def reporting_tiles(callback):
    """Within the block, callback(done, total) after each tile of every tiled pass."""
    token = TILE_PROGRESS.set(callback)
    try:
        yield
    finally:
        TILE_PROGRESS.reset(token)


def predict_tiled(model, x: torch.Tensor, engine: Engine, tile: int, overlap: int) -> tuple[torch.Tensor, int]:
    """Bx3xHxW -> Bx1xHxW probability from overlapping tiles; also returns the tile count.

    Padded to a multiple of the model's stride first, as the one pass is, so every tile starts on the
    network's pooling grid."""
    height, width = x.shape[-2:]
    stride = model_stride(model)
    x = pad_to_multiple(x, stride)
    b, _, h, w = x.shape
    (th, tops), (tw, lefts) = tile_layout(h, tile, overlap, stride), tile_layout(w, tile, overlap, stride)
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
            if TILE_PROGRESS.get():
                TILE_PROGRESS.get()(count, len(tops) * len(lefts))
    return (total / weight)[..., :height, :width], count


def resample(x: torch.Tensor, size: tuple[int, int], enlarge: str = "bicubic") -> torch.Tensor:
    """BxCxHxW to `size`: area averaging to shrink (fine texture does not alias into false cracks),
    `enlarge` (bicubic for photos, bilinear for probability maps, which must not overshoot) to grow."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if size[0] <= h and size[1] <= w:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=enlarge, align_corners=False)


def scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    return max(round(h * scale), 1), max(round(w * scale), 1)


@torch.inference_mode()
def predict_probability(model, x: torch.Tensor, engine: Engine, tta: bool = False,
                        tile: int = TILE, overlap: int = OVERLAP, scale: float = 1.0) -> torch.Tensor:
    """Bx3xHxW image -> Bx1xHxW fp32 crack probability at full resolution (CPU tensor).

    With `scale` != 1 the network sees the image resampled by that factor, and its map is resampled
    back onto the image's own grid, so masks, scores, lengths and widths stay in the image's pixels.
    One pass when both sides fit in `tile`, overlapping tiles otherwise; with `tta`
    the mean probability over the 8 rotations/flips."""
    if scale != 1:
        return predict_on_grid(model, x, engine, scale, tta, tile, overlap)[1]

    def one_view(view):
        if max(view.shape[-2:]) <= tile:
            return torch.sigmoid(forward_logits(model, view, engine)).cpu()
        return predict_tiled(model, view, engine, tile, overlap)[0]
    if not tta:
        return one_view(x)
    return sum(dihedral(one_view(dihedral(x, k)), k, inverse=True) for k in range(8)) / 8


def predict_on_grid(model, x: torch.Tensor, engine: Engine, factor: float, tta: bool = False,
                    tile: int = TILE, overlap: int = OVERLAP) -> tuple[torch.Tensor, torch.Tensor]:
    """(the map on the network's grid, that map on the image's grid) for `x` seen at `factor`."""
    net = predict_probability(model, resample(x, scaled_size(*x.shape[-2:], factor)), engine, tta, tile, overlap)
    return net, to_image_grid(net, x)


def to_image_grid(net: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A map predicted at another size brought back onto x's grid (bilinear: no overshoot)."""
    return resample(net, tuple(x.shape[-2:]), enlarge="bilinear")


@dataclass
class Scaled:
    """A map on the image's grid, the factor it was predicted at and, under auto, the features
    scales.choose() saw ({factor: scales.MapFeatures}, measured as far as choose() read them)."""
    prob: torch.Tensor
    factor: float
    features: dict


def predict_scaled(model, x: torch.Tensor, engine: Engine, scale: float | str = 1.0, tta: bool = False,
                   tile: int = TILE, overlap: int = OVERLAP) -> Scaled:
    """predict_probability at a fixed factor, or under `auto` at the factor scales.choose() picks for this
    image from its maps at every candidate factor (the chosen one is returned; 1x3xHxW only: the choice
    is per image)."""
    if scale != "auto":
        return Scaled(predict_probability(model, x, engine, tta, tile, overlap, scale), float(scale), {})
    if x.shape[0] != 1:
        raise ValueError("--scale auto chooses per image: predict one image at a time")
    h, w = x.shape[-2:]
    grid = model_stride(model)
    nets, found = {}, {}
    for f in sorted(scales.scoring_factors(h, w, grid), key=lambda f: f > 1):   # enlarging waits for the map at 1
        if f > 1 and not scales.wants_enlarging(found[1.0]):
            continue
        nets[f] = predict_probability(model, resample(x, scaled_size(h, w, f)), engine, tta, tile, overlap)
        found[f] = scales.MapFeatures(nets[f][0, 0].numpy())
    factor = scales.choose(found, scales.candidates(h, w, grid))
    if factor not in nets:
        return Scaled(predict_probability(model, x, engine, tta, tile, overlap, factor), factor, found)
    prob = to_image_grid(nets[factor], x)   # only the chosen map comes back
    if scales.RULE.fuse and factor != 1:
        prob = (prob + to_image_grid(nets[1.0], x)) / 2
    return Scaled(prob, factor, found)


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



@dataclass(frozen=True)
class EvalOptions:
    """What evaluate() counts: counts at each pixel tolerance over the threshold grid
    (metrics.DEFAULT_THRESHOLDS when None); the mean loss too when loss_name is set."""
    loss_name: str | None = None
    tolerances: tuple[int, ...] = (0,)
    thresholds: tuple[float, ...] | None = None


@torch.inference_mode()
def evaluate(predictor, dataset, options: EvalOptions = EvalOptions(), on_image=None) -> dict:
    """Predict every full image of `dataset` and count (cntP, sumP, cntR, sumR) per threshold.

    The maps come from `predictor` (predictor.Predictor: its scale policy, TTA and tiles), the seam
    predict.py uses, so a threshold chosen here (training's validation) is applied to the same maps
    later. Returns {"names", "factors" (each image's scale), "loss" (None without options.loss_name),
    "counts": {tol: (N,T,4)}}. `on_image(item, prob)` is called per image (panels, saving maps)."""
    predictor.model.eval()
    engine = predictor.engine
    rows = []
    indices = shard(list(range(len(dataset))), engine)
    tolerances = options.tolerances
    for index in tqdm(indices, desc="evaluate", unit="image", leave=False, disable=not engine.main, mininterval=1):
        item = dataset[index]
        mask, roi = item["mask"][0].numpy(), item["roi"][0].numpy()
        scaled = predictor.predict_tensor(item["image"][None])
        prob = scaled.prob
        loss = None if options.loss_name is None else \
            float(compute_loss(options.loss_name, probability_logits(prob), item["mask"][None]))
        prob = prob[0, 0].numpy()
        counts = [metrics.image_counts(prob, mask, tolerance=t, thresholds=options.thresholds, roi=roi)
                  for t in tolerances]
        rows.append((item["name"], loss, counts, scaled.factor))
        if on_image is not None:
            on_image(item, prob)
    rows = gather(rows, engine)
    losses = [row[1] for row in rows if row[1] is not None]
    return {"names": [row[0] for row in rows], "factors": [row[3] for row in rows],
            "loss": float(np.mean(losses)) if losses else None,
            "counts": {t: np.stack([row[2][i] for row in rows]) for i, t in enumerate(tolerances)}}


def probability_logits(prob: torch.Tensor) -> torch.Tensor:
    """Logits back from the (possibly tiled or TTA-averaged) probabilities, for the loss functions.

    Clamped where fp32 probabilities saturate (|logit| > 16); below that the round trip is exact
    to fp32 precision, so a one-pass image's loss is that of its logits."""
    return torch.logit(prob, eps=1e-7)
