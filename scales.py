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
from dataclasses import dataclass

import numpy as np

from measure import crack_length, crack_widths, skeletonize, without_specks

FACTORS = (2.0, 1.0, 0.5, 0.25, 0.125)   # the factors auto may choose
MIN_GRID_CELLS = 2       # a shrinking factor is allowed while the network's input keeps this many pooling cells
                         # across its short side (see allowed())
SHRINK_MIN_SIDE = 192    # px: auto never shrinks a photo whose short side is under this (see candidates())
MAX_MEGAPIXELS = 4.0     # an enlarging factor is allowed while the network's input stays this small
FEATURE_THRESHOLD = 0.5  # features describe p > 0.5, whatever the run's threshold (the choice must not move with it)
MIN_PIECE = 8            # pixels: smaller pieces of a map are noise, not cracks
TARGET_WIDTH = 5.0       # px at the network's input: the middle of the widths it was trained on
MIN_LENGTH = 16          # px of skeleton on a scoring map: less is no crack
SHRINK_BONUS = 0.015     # sureness credited to each halving of the photo (see choose())


@dataclass(frozen=True)
class Rule:
    """How auto departs from factor 1 (the photo as it is). `margin`: the sureness (with SHRINK_BONUS)
    by which the chosen factor's map must beat the map at 1; `width_gate`: shrink only where the map at
    1 shows cracks wider than this (px, its median width; None: no gate); `enlarge`: whether factors
    above 1 are candidates, and `enlarge_gate`: only where the map at 1 shows cracks no wider than
    this (None: always; the enlarged map, 4x the pixels, is then predicted only for those photos);
    `fuse`: return the mean of the chosen map and the map at 1. `legacy`: the scale issue's rule, the
    surest map wherever it lies (the map at 1 competes only when it shows a crack). `gate_at`: the width
    gate may read the map at 1/2 instead of the map at 1 (a wide crack at full size is traced as narrow
    pieces of texture; at 1/2 it is one wide band, a thin crack still a thin one)."""
    margin: float = 0.0
    width_gate: float | None = None
    enlarge: bool = True
    enlarge_gate: float | None = None
    fuse: bool = False
    legacy: bool = True
    gate_at: float = 1.0   # the map whose bands the width gate measures, in the photo's px (its width / factor)


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


def scale_setting(asked: float | str, own: float | str) -> dict[str, str]:
    """The scale part of an evaluation folder's name (rundir.eval_folder): none for the run's own policy."""
    return {} if policy_key(asked) == policy_key(own) else {"scale": policy_key(asked)}


def min_side(grid: int) -> int:
    """The shortest side, in px, the network's input may have when a photo is shrunk: MIN_GRID_CELLS
    cells of the network's pooling grid (2 ** its poolings). Below it the deepest level sees fewer than
    two cells across, and the padding up to the grid outweighs the photo. The bound is the network's,
    not the photo's: a close-up a few hundred px a side with a 40 px crack may go down to 1/8."""
    return MIN_GRID_CELLS * grid


def factor_name(factor: float) -> str:
    """0.25 -> "1/4", 2.0 -> "2": how a person reads a zoom factor."""
    return f"1/{1 / factor:g}" if factor < 1 and (1 / factor).is_integer() else f"{factor:g}"


def tally(factors: list[float]) -> str:
    """How many photos were seen at each factor, most first: "12 photos at 1, 3 at 1/4"."""
    counts = sorted(((factors.count(f), f) for f in set(factors)), key=lambda c: (-c[0], -c[1]))
    words = [f"{n} at {factor_name(f)}" for n, f in counts]
    if words:
        words[0] = words[0].replace(" at ", " photo at " if counts[0][0] == 1 else " photos at ", 1)
    return ", ".join(words) or "no photos"


def allowed(height: int, width: int, grid: int = 16) -> list[float]:
    """The factors auto may use for a photo of this size and a network with this pooling grid: 1
    always, shrinking ones while the input's short side stays >= min_side(grid), enlarging ones while
    the input stays <= MAX_MEGAPIXELS."""
    short, megapixels = min(height, width), height * width / 1e6
    return [f for f in FACTORS if f == 1 or (f < 1 and short * f >= min_side(grid))
            or (f > 1 and megapixels * f * f <= MAX_MEGAPIXELS)]


def candidates(height: int, width: int, grid: int = 16) -> list[float]:
    """The factors auto may choose for a photo: allowed(), less every shrinking factor where the photo's
    short side is under SHRINK_MIN_SIDE. A tile of 133-160 px is a detail already: shrunk, the network
    sees a few dozen px of it, mostly padding, and its map is coarse (shrinking GAPS384's tiles cost it
    0.007-0.023 of 2 px ODS F). Walls of 224 px with wide cracks still gain from 1/2 (MASONRY). Replayed
    on every recorded zoom row, gates of 160-224 px score alike and best on the mean over groups, on the
    rows the rule was chosen on and on the ten-source recipe's; 192 is the middle of that plateau
    (benchmarks/autorule.py render_shrink_gates, docs/zoom.md)."""
    found = allowed(height, width, grid)
    return found if min(height, width) >= SHRINK_MIN_SIDE else [f for f in found if f >= 1]


def scoring_factors(height: int, width: int, grid: int = 16, rule: Rule | None = None) -> list[float]:
    """The factors whose maps auto may predict before choosing: every allowed one the rule may pick (the
    chosen map is reused, so on a photo too large to enlarge this costs 1/4 + 1/16 + 1/64 of a pass on
    top of the full-size one). Enlarged maps only where wants_enlarging() says so, after the map at 1."""
    rule = RULE if rule is None else rule
    return [f for f in candidates(height, width, grid) if rule.enlarge or f <= 1]


def wants_enlarging(at_one: Mapping, rule: Rule | None = None) -> bool:
    """Whether the rule considers enlarged maps for a photo, from its map at 1's features."""
    rule = RULE if rule is None else rule
    return rule.enlarge and (rule.enlarge_gate is None or at_one["median_width"] <= rule.enlarge_gate)


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


def score(found: Mapping, factor: float) -> float:
    """How sure a map is, each halving of the photo credited SHRINK_BONUS (see choose())."""
    return found["sureness"] - SHRINK_BONUS * math.log2(factor)


def gate_width(found: dict[float, Mapping], rule: Rule) -> float:
    """The median band width the width gate reads, in the photo's px: of the map at rule.gate_at (at 1
    where that map was not allowed)."""
    at = rule.gate_at if rule.gate_at in found else 1.0
    return found[at]["median_width"] / at if at in found else math.inf


def choose(found: dict[float, Mapping], candidates: list[float], rule: Rule | None = None) -> float:
    """The factor for one photo from the features of its maps ({factor: MapFeatures}): the surest map
    (sureness: the mean |2p - 1| where p > 0.1), each halving credited SHRINK_BONUS (ties to the factor
    nearer 1), among maps that show a crack of at least MIN_LENGTH px; then, under a do-no-harm rule,
    only if it beats the map at 1 by rule.margin and, for a shrinking factor, the map at 1 shows bands
    wider than rule.width_gate. No crack on any map: 1, the photo as it is.

    The network is surest where a crack looks as wide as the cracks it learned: a wide crack at full
    size is traced as uncertain texture, a thin one shrunk fades. On textured surfaces (joints, veins,
    edges) the surest map is often not the photo as it is, and every departure costs there: the margin
    makes auto keep factor 1 unless the evidence is clear (benchmarks/autorule.py chose RULE)."""
    rule = RULE if rule is None else rule
    candidates = [f for f in candidates if f in found]
    # the gates read the map at 1's widths (a thinning of the full-size map) only where they decide
    if any(f > 1 for f in candidates) and not (rule.enlarge if 1.0 not in found else wants_enlarging(found[1.0], rule)):
        candidates = [f for f in candidates if f <= 1]
    best = surest(found, candidates)
    if best < 1 and rule.width_gate is not None:
        kept = surest(found, [f for f in candidates if f >= 1])
        if not departs(found, best, rule) and not departs(found, kept, rule):
            return 1.0
        if gate_width(found, rule) <= rule.width_gate:
            best = kept
    return best if departs(found, best, rule) else 1.0


def surest(found: dict[float, Mapping], candidates: list[float]) -> float:
    """The surest map among the candidates that shows a crack (ties to the factor nearer 1); else 1."""
    if set(candidates) <= {1.0}:
        return 1.0   # whatever the map at 1 shows: no need to thin it
    surest_first = sorted(candidates, key=lambda f: (score(found[f], f), -abs(math.log(f))), reverse=True)
    return next((f for f in surest_first if found[f]["length"] >= MIN_LENGTH), 1.0)


def departs(found: dict[float, Mapping], factor: float, rule: Rule) -> bool:
    """Whether the rule leaves the photo as it is for `factor`: always under the legacy rule, else only
    for a map surer than the map at 1 by the margin."""
    if factor == 1.0:
        return False
    return rule.legacy or 1.0 not in found or score(found[factor], factor) >= score(found[1.0], 1.0) + rule.margin


# The live rule (benchmarks/autorule.py, docs/zoom.md): depart from 1 only for a map surer by 0.04;
# shrink only where the map at 1 shows bands wider than 6 px (wider than the cracks the network learned);
# enlarge only where it shows bands no wider than 5 px.
RULE = Rule(margin=0.04, width_gate=6.0, enlarge_gate=5.0, legacy=False)
