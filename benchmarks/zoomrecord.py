"""benchmarks/zoom.py's record: the per-image arrays beside it and the scale policies replayed from
them, and every factor's map of one image scored (score_maps), shared by zoom.py (which writes and
renders the record), framezoom.py (the camera's zoom) and general_model.py (whose --replace compares
the chosen recipe's leave-one-out rows). No entry point."""
import gzip
import json
from pathlib import Path

import numpy as np

import metrics
import scales
from inference import model_stride
from measure import crack_widths, skeletonize
from predictor import Predictor
from rundir import run_datasets
from runner import MINUTES, RESULTS, TEST, TRAIN

GRID = tuple(range(0, 101, 5))   # indices into metrics.DEFAULT_THRESHOLDS (0.00 ... 1.00)
FEATURE_KEYS = scales.MapFeatures.KEYS
RECORD = RESULTS / "zoom.jsonl"
# the recipe arms of steps 4 and 5 at 12 minutes on two held-out sources, beyond the shipped network
# with the upsampling loss_align.py adopted (train.py options); more join as they are built
ARMS = {"w4": [],
        "range4": ["--scale-aug-range", "0.25", "4"],    # step 4: labelled 3-7 px cracks drawn 1-28 px wide
        "range8": ["--scale-aug-range", "0.35", "8"],    # ... 1-56 px: the widest users' photos show
        "depth5": ["--depth", "5"],                      # step 5: a fifth pooling level, twice the view
        "dilated2": ["--bottleneck-dilation", "2"]}      # ... the bottleneck's taps 2 apart: radius 110 -> 142 px
# the recipe trained leave one source out at the full leave-one-out budget, on all four sources
# (depth5: consistent small gains at the best factor on both arm sources at 12 minutes)
CHOSEN = "depth5"
# the fused maps the record keeps beside the single factors: the mean of the allowed maps among each
# window's factors. The first is the fixed fusion of the first rows (older arrays keep only it); the
# rest are every run of two and three neighbours on scales.FACTORS, so a rule that fuses the chosen
# map with the maps next to it is replayed (fused_window())
WINDOWS = ((1.0, 0.5, 0.25), (2.0, 1.0), (1.0, 0.5), (0.5, 0.25), (0.25, 0.125), (2.0, 1.0, 0.5),
           (0.5, 0.25, 0.125))
# what a replayed rule may fuse around the factor it chose: the chosen map with the next coarser one
# ("down"), or with both neighbours ("centre")
NEIGHBOURS = {"down": (1.0, 0.5), "centre": (2.0, 1.0, 0.5)}


def fused_window(factor: float, around: tuple[float, ...]) -> int | None:
    """The index in WINDOWS of the maps at factor * each of `around` that scales.FACTORS holds
    (None: the chosen map alone)."""
    members = tuple(factor * a for a in around if factor * a in scales.FACTORS)
    return WINDOWS.index(members) if len(members) > 1 else None


TOLERANCE = 2   # px: the records count 2 px matches
# the groups of the ten sources a model is held out from (and a rule chosen leave-one-out over): the
# drone's three optical zooms are one road
GROUPS = {"DEEPCRACK_TEST": "DEEPCRACK", "CFD": "CFD", "CRACKMAP": "CRACKMAP", "MASONRY": "MASONRY",
          "UAVCRACKX4": "UAVCRACKX", "UAVCRACKX8": "UAVCRACKX", "UAVCRACKX16": "UAVCRACKX",
          "GAPS384": "GAPS384", "AIGLERN": "AIGLERN", "SHADOWCRACK": "SHADOWCRACK"}


def family(dataset: str) -> str:
    """The group a dataset's photos come from (DEEPCRACK_TRAIN and DEEPCRACK_TEST: DEEPCRACK)."""
    return next((s for s in TRAIN if dataset in (TRAIN[s], TEST[s])), GROUPS.get(dataset, dataset))


def load_unseen(run: str, source: str) -> Predictor:
    """The predictor of `run` (its own threshold, any scale: the records hold every factor), refused when
    it trained on any photo of `source`'s group."""
    predictor = Predictor.load(run)
    trained = run_datasets(predictor.config)
    if family(source) in {family(d) for d in trained}:
        raise SystemExit(f"{run} trained on {', '.join(trained)}, which holds {family(source)}'s photos: "
                         f"it cannot score {source}")
    return predictor


def score_maps(predictor: Predictor, labelled: tuple, t_index: int, windows: tuple) -> tuple:
    """One image (image, mask, roi): counts (F+W, K, 4) for every factor scales.allowed() permits and
    every fused window (the mean of its allowed maps), features (F, n), valid (F+W,), and the factor
    the live rule chose (F: scales.FACTORS, W: `windows`, K: GRID and the run's threshold)."""
    image, mask, roi = labelled
    x = predictor.tensor(image, "")
    keep = list(GRID) + [t_index]
    n = len(scales.FACTORS)
    counts = np.zeros((n + len(windows), len(keep), 4), np.int64)
    found = np.zeros((n, len(FEATURE_KEYS)), np.float32)
    valid = np.zeros(n + len(windows), bool)
    grid = model_stride(predictor.model)
    permitted = scales.allowed(*image.shape[:2], grid)
    maps, feats = {}, {}
    for factor, (net, prob) in predictor.maps_at(x, permitted).items():
        i = scales.FACTORS.index(factor)
        maps[factor], feats[factor] = prob, scales.features(net)
        found[i] = [feats[factor][k] for k in FEATURE_KEYS]
        counts[i] = metrics.image_counts(prob, mask, tolerance=TOLERANCE, roi=roi)[keep]
        valid[i] = True
    for j, window in enumerate(windows):
        members = [f for f in window if f in maps]   # where a factor is not allowed: those there are
        if len(members) == 1:   # one map: its own counts, not counted again
            counts[n + j] = counts[scales.FACTORS.index(members[0])]
        elif members:
            fused = np.mean([maps[f] for f in members], 0)
            counts[n + j] = metrics.image_counts(fused, mask, tolerance=TOLERANCE, roi=roi)[keep]
        valid[n + j] = bool(members)
    scoring = scales.scoring_factors(*image.shape[:2], grid)
    live = scales.choose({f: feats[f] for f in scoring}, permitted)
    return counts, found, valid, live


def label_width(masks: list[np.ndarray]) -> float:
    """The median width of the labels' cracks, px (as label_widths.py measures it)."""
    widths = [crack_widths(m, skeletonize(m)) for m in masks]
    return float(np.median(np.concatenate(widths)))


def lodo_name(source: str, seed: int = 0) -> str:
    """The experiment of the chosen recipe trained without `source` for MINUTES (seed 0, or a second
    seed's rerun, which measures the spread at that budget)."""
    return f"{CHOSEN}_{MINUTES}min_{source}" if seed == 0 else f"{CHOSEN}_{MINUTES}min_seed{seed}_{source}"


def dataset_f(counts: np.ndarray) -> tuple[float, float]:
    """(ODS F over the grid, F at the run's threshold) of summed (K, 4) counts."""
    cnt_p, sum_p, cnt_r, sum_r = (counts[:, i].astype(np.float64) for i in range(4))
    p = np.divide(cnt_p, sum_p, out=np.zeros_like(cnt_p), where=sum_p > 0)
    r = np.divide(cnt_r, sum_r, out=np.zeros_like(cnt_r), where=sum_r > 0)
    f = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=p + r > 0)
    return float(f[:-1].max()), float(f[-1])


def choosable(arrays: dict, zi: int | None = None, min_side: int | None = None) -> np.ndarray:
    """The recorded valid factors (scales.allowed, the network's bound) of zoom index `zi`'s photos (None:
    the validation photos), less the shrinking ones scales.candidates() strikes for a photo's short side
    (under min_side, default scales.SHRINK_MIN_SIDE)."""
    valid = (arrays["val_valid"] if zi is None else arrays["valid"][zi])[:, :len(scales.FACTORS)].copy()
    if "short_side" not in arrays:
        raise KeyError("arrays without photo sizes: run python benchmarks/framezoom.py --add-short-sides")
    short = arrays["val_short_side"] if zi is None else arrays["short_side"][zi]
    min_side = scales.SHRINK_MIN_SIDE if min_side is None else min_side
    valid[np.ix_(short < min_side, np.array(scales.FACTORS) < 1)] = False
    return valid


def replay(arrays: dict, rule) -> dict[float, dict]:
    """Per zoom: fixed 1, auto under `rule` (scales.choose's signature), the oracle fixed factor, fuse."""
    factors = list(scales.FACTORS)
    results = {}
    for zi, z in enumerate(arrays["zooms"]):
        counts, found, valid = arrays["counts"][zi], arrays["features"][zi], arrays["valid"][zi]
        fixed = {f: dataset_f(counts[:, i].sum(0)) for i, f in enumerate(factors) if valid[:, i].all()}
        chosen = []
        allowed_here = choosable(arrays, zi)
        for n in range(counts.shape[0]):
            permitted = [f for i, f in enumerate(factors) if allowed_here[n, i]]
            scoring = {f: dict(zip(FEATURE_KEYS, found[n, factors.index(f)].tolist(), strict=True))
                       for f in permitted}   # auto sees every allowed factor's map (scales.scoring_factors)
            chosen.append(factors.index(rule(scoring, permitted)))
        auto = dataset_f(counts[np.arange(len(chosen)), chosen].sum(0))
        fused = {name: dataset_f(sum(fused_counts(counts[n], chosen[n], around) for n in range(len(chosen))))
                 for name, around in NEIGHBOURS.items() if counts.shape[1] == len(factors) + len(WINDOWS)}
        live = [factors.index(f) for f in arrays["live"][zi]]
        best = max(fixed, key=lambda f: fixed[f][0])
        results[float(z)] = {"fixed_1": fixed[1.0], "auto": auto, "oracle": (best, *fixed[best]),
                             "fuse": dataset_f(counts[:, len(factors)].sum(0)),
                             **{f"auto_{name}": f for name, f in fused.items()},
                             "auto_factors": np.bincount(chosen, minlength=len(factors)).tolist(),
                             "replayed_as_live": float(np.mean(np.array(live) == np.array(chosen)))}
    return results


def fused_counts(counts: np.ndarray, chosen: int, around: tuple[float, ...]) -> np.ndarray:
    """One image's (K, 4) counts of the chosen factor's map fused with its neighbours."""
    window = fused_window(scales.FACTORS[chosen], around)
    return counts[chosen] if window is None else counts[len(scales.FACTORS) + window]


def load_arrays(record: Path, line: dict) -> dict:
    """The per-image arrays a record line refers to (kept beside the record)."""
    return read_arrays(record.parent / line["attachments"][0])


def save_arrays(path: Path, arrays: dict) -> None:
    """Measurements as gzipped JSON text (lists and dtypes), not a binary blob beside the record."""
    found = {k: {"dtype": str(v.dtype), "data": v.tolist()} for k, v in arrays.items()}
    with gzip.open(path, "wt") as f:
        json.dump(found, f, separators=(",", ":"))


def read_arrays(path: Path) -> dict:
    with gzip.open(path, "rt") as f:
        return {k: np.array(v["data"], dtype=v["dtype"]) for k, v in json.load(f).items()}


