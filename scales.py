"""The scale policy: at which factor the network sees a photo, chosen per photo without labels.

The network learned cracks a few pixels wide (the sources' median label width is 3-7 px). A close-up
phone photo shows cracks 12-40 px wide, which the model traces as the gaps between stones; shown the
photo shrunk so the crack is a few pixels wide again, it finds the crack as one band. `--scale auto`
predicts the photo's map at every allowed factor (1/2, 1/4 and 1/8 cost a third of one full-size pass
together; 2 only for photos small enough), measures the cracks each map shows (features(), no label
involved), and choose() picks the factor from those measurements, whose map is then used. This
module is numpy only: inference.py runs the passes, and benchmarks/zoom.py replays choose() on
recorded features to compare rules without retraining.
"""
import argparse
import math
from collections.abc import Mapping

import numpy as np

from measure import crack_length, crack_widths, skeletonize, without_specks

FACTORS = (2.0, 1.0, 0.5, 0.25, 0.125)   # the factors auto may choose
MIN_SIDE = 128           # a shrinking factor is allowed while the photo's short side stays this long
MAX_MEGAPIXELS = 4.0     # an enlarging factor is allowed while the network's input stays this small
FEATURE_THRESHOLD = 0.5  # features describe p > 0.5, whatever the run's threshold (the choice must not move with it)
MIN_PIECE = 8            # pixels: smaller pieces of a map are noise, not cracks
TARGET_WIDTH = 5.0       # px at the network's input: the middle of the widths it was trained on
MIN_LENGTH = 16          # px of skeleton on a scoring map: less is no crack
SHRINK_BONUS = 0.015     # sureness credited to each halving of the photo (see choose())


def scale_arg(text: str) -> float | str:
    """argparse type of --scale: `auto` or a factor between 1/16 and 4."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 1 / 16 <= value <= 4:
        raise argparse.ArgumentTypeError(f"{text!r}: give auto or a factor between 0.0625 and 4 (1 = as is)")
    return value


def add_scale_option(p, default: float | None) -> None:
    what = ("the factor validation predicts at, stored as the run's scale policy (config key scale) that "
            "evaluate.py and predict.py then use" if default is not None else
            "resample each photo by this factor before the network sees it (the map returns to the photo's "
            "grid); default: the run's own policy (config key scale), else 1")
    p.add_argument("--scale", type=scale_arg, default=default, metavar="S|auto",
                   help=what + "; auto chooses per photo from its shrunk maps (see scales.py)")


def policy_key(scale: float | str) -> str:
    """A scale as config.json's thresholds_by_scale names it: "auto", "1", "0.5"."""
    return scale if scale == "auto" else f"{float(scale):g}"


def allowed(height: int, width: int) -> list[float]:
    """The factors auto may use for a photo of this size: 1 always, shrinking ones while the short
    side stays >= MIN_SIDE, enlarging ones while the network's input stays <= MAX_MEGAPIXELS."""
    short, megapixels = min(height, width), height * width / 1e6
    return [f for f in FACTORS if f == 1 or (f < 1 and short * f >= MIN_SIDE)
            or (f > 1 and megapixels * f * f <= MAX_MEGAPIXELS)]


def scoring_factors(height: int, width: int) -> list[float]:
    """The factors whose maps auto predicts before choosing: every allowed one (the chosen map is
    reused, so on a photo too large to enlarge this costs 1/4 + 1/16 + 1/64 of a pass on top of the
    full-size one)."""
    return allowed(height, width)


class MapFeatures(Mapping):
    """Label-free measurements of one map on the network's grid, each computed when first read: how
    much crack, how long, how wide (px at the network's input), and how sure. choose() reads sureness
    for every map but the skeleton (length) only of the maps it considers, so a live choice skips the
    full-size map's thinning whenever a smaller map wins."""
    KEYS = ("fraction", "pieces", "length", "median_width", "mean_p", "sureness")

    def __init__(self, prob: np.ndarray):
        self.prob = prob
        self.found = {}

    def __iter__(self):
        return iter(self.KEYS)

    def __len__(self):
        return len(self.KEYS)

    def __getitem__(self, key: str):
        if key not in self.KEYS:
            raise KeyError(key)
        if key not in self.found:
            self.measure(key)
        return self.found[key]

    def measure(self, key: str) -> None:
        prob = self.prob
        if key == "sureness":
            unsure = prob > 0.1
            self.found[key] = round(float(np.abs(2 * prob[unsure] - 1).mean()), 4) if unsure.any() else 1.0
            return
        if "pieces" not in self.found:
            self.mask, self.found["pieces"] = without_specks(prob > FEATURE_THRESHOLD, MIN_PIECE)
            self.found["fraction"] = round(float(self.mask.mean()), 6)
            self.found["mean_p"] = round(float(prob[self.mask].mean()), 4) if self.mask.any() else 0.0
        if key in ("length", "median_width") and "length" not in self.found:
            self.skeleton = skeletonize(self.mask)
            self.found["length"] = round(float(crack_length(self.skeleton)), 1)
        if key == "median_width":
            widths = crack_widths(self.mask, self.skeleton)
            self.found[key] = round(float(np.median(widths)), 2) if widths.size else 0.0


def features(prob: np.ndarray) -> dict:
    """Every MapFeatures measurement of one map (what benchmarks/zoom.py records)."""
    return dict(MapFeatures(prob))


def nearest(factor: float, candidates: list[float]) -> float:
    """The candidate nearest `factor` on a log scale."""
    return min(candidates, key=lambda f: abs(math.log(f / factor)))


def choose(found: dict[float, Mapping], candidates: list[float]) -> float:
    """The factor for one photo from the features of its maps ({factor: MapFeatures}): the one whose
    map is surest (sureness: the mean |2p - 1| where p > 0.1), each halving of the photo credited
    SHRINK_BONUS (ties to the factor nearer 1), among maps that show a crack of at least MIN_LENGTH
    px. The network is surest where a crack looks as wide as the cracks it learned: a wide crack at
    full size is traced as uncertain texture, a thin one shrunk fades. No crack on any map: 1, the
    photo as it is.

    Replayed on benchmarks/zoom.py's recorded features, two width-based rules fell short on CFD's
    thin cracks (0.14 2 px ODS F under scale 1 at zoom 1): the factor whose width is nearest 5 px,
    and coarse to fine (trusting the coarsest map that shows the crack). Sureness alone left 0.030
    to the best fixed factor at zoom 4 (mean of the four 12-minute w4 rows); where two maps are
    nearly as sure, the coarser one scored better on the three wide-crack sources, and a bonus of
    0.01-0.025 per halving brought that to 0.012-0.015 while costing CFD's thin cracks no more than
    0.01 at zoom 1 (0.015: the middle of that plateau; docs/zoom.md)."""
    surest_first = sorted((f for f in found if f in candidates),
                          key=lambda f: (found[f]["sureness"] - SHRINK_BONUS * math.log2(f), -abs(math.log(f))),
                          reverse=True)
    return next((f for f in surest_first if found[f]["length"] >= MIN_LENGTH), 1.0)
