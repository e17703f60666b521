"""What a training crop is drawn from beyond the photo itself (train.py's --small-tiles and
--hard-negatives):

- a mosaic: a tile smaller than the crop (GAPS384's 133 px, ShadowCrack's 160 px) would be mostly
  padding; it is laid in a grid with other tiles of its own dataset (the same camera and surface),
  so every crop pixel is a photo's pixel with its true label;
- mined negatives: crack-free windows of the training photos, those that look most like a crack
  (the strongest dark thin lines: joints, edges, shadows), drawn as a fixed share of every epoch's
  crops. The tile sources show a crack in every tile; these windows teach what is not one.
"""
import math

import cv2
import numpy as np
import torch

from dataset import shuffled_passes


class TileMosaic:
    """CrackDataset's fill: an item whose short side is under `crop` becomes a grid of items of its own
    kind (`members[i]`: the indices item i may be laid with, its dataset or the mined negatives; None:
    left as it is), at least `side` pixels on each side, itself in a random cell; `read(i)` gives
    (image, mask, roi)."""

    def __init__(self, read, members: list[list[int]], crop: int, side: int):
        self.read, self.members, self.crop, self.side = read, members, crop, side
        self.rng = np.random.default_rng()

    def __call__(self, index: int, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        if min(h, w) >= self.crop or self.members[index] is None:
            return image, mask
        rows, cols = math.ceil(self.side / h), math.ceil(self.side / w)
        own = int(self.rng.integers(rows * cols))
        cells = [(image, mask) if k == own else self.partner(index, (h, w)) for k in range(rows * cols)]
        grid = [cells[r * cols:(r + 1) * cols] for r in range(rows)]
        image, mask = (np.concatenate([np.concatenate([c[part] for c in row], axis=1) for row in grid])
                       for part in (0, 1))
        return image, mask

    def partner(self, index: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """A random tile of the same dataset, turned to the photo's orientation and sized to its cell."""
        pool = self.members[index]
        image, mask, _ = self.read(pool[int(self.rng.integers(len(pool)))])
        if (image.shape[0] > image.shape[1]) != (shape[0] > shape[1]):
            image, mask = np.rot90(image), np.rot90(mask)
        if image.shape[:2] != shape:
            size, dtype = (shape[1], shape[0]), mask.dtype
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(dtype)
        return image, mask


def mosaic_side(crop: int, zoom_range: tuple[float, float] | None) -> int:
    """The largest square a training crop reads: the crop, or crop / the smallest zoom of --scale-aug-range."""
    return math.ceil(crop / zoom_range[0]) if zoom_range else crop


def mosaic_members(sizes: list[int], negatives: int, tiles: bool) -> list[list[int] | None]:
    """TileMosaic's members: for each training photo (datasets one after another, `sizes` of them) the
    indices of its dataset (None unless `tiles`), then for each of the `negatives` mined windows after
    them, the windows' indices: a crop of negatives is a grid of several."""
    found, start = [], 0
    for size in sizes:
        block = list(range(start, start + size))
        found += [block if tiles else None] * size
        start += size
    return found + [list(range(start, start + negatives))] * negatives


# ---------------------------------------------------------------- mined negatives

LINE_KERNEL = 15       # px: the black-hat's structuring element, wider than the cracks it finds
STRONG_DARK = 30       # grey levels darker than the surroundings: a line's core, not a rough surface's grain
CLEARANCE = 8          # px: a negative window keeps this far from every labelled crack pixel


def dark_lines(image: np.ndarray) -> np.ndarray:
    """1 where a pixel is much darker than its surroundings (a morphological black-hat of the grey image
    of at least STRONG_DARK): cracks, joints, edges and shadow lines alike, less so a surface's grain."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (LINE_KERNEL, LINE_KERNEL))
    return (cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, kernel) >= STRONG_DARK).astype(np.float32)


def hardest_window(image: np.ndarray, mask: np.ndarray, side: int) -> tuple[float, int, int, int] | None:
    """(dark-line score, y, x, side) of the crack-free square window (side `side`, or the photo's short
    side if smaller; stride a quarter of it) with the most dark lines, or None when every window touches a crack."""
    h, w = mask.shape
    s = min(side, h, w)
    near = cv2.dilate((mask > 0).astype(np.uint8), np.ones((2 * CLEARANCE + 1,) * 2, np.uint8))
    crack = cv2.integral(near)
    lines = cv2.integral(dark_lines(image))
    best = None
    for y in range(0, h - s + 1, max(s // 4, 1)):
        for x in range(0, w - s + 1, max(s // 4, 1)):
            if box_sum(crack, y, x, s):
                continue
            found = (box_sum(lines, y, x, s) / s**2, y, x, s)
            best = found if best is None or found[0] > best[0] else best
    return best


def box_sum(integral: np.ndarray, y: int, x: int, s: int) -> float:
    return float(integral[y + s, x + s] - integral[y, x + s] - integral[y + s, x] + integral[y, x])


def mine_negatives(decoded: list, side: int, keep: float = 0.5) -> list[tuple[int, int, int, int]]:
    """(photo index, y, x, side) of the hardest crack-free window of each photo, the `keep` share of
    photos whose window scores highest (the easy, blank windows are left out)."""
    windows = []
    for i, (image, mask, _) in enumerate(decoded):
        best = hardest_window(image, mask, side)
        if best is not None:
            windows.append((best[0], i, *best[1:]))
    windows.sort(reverse=True)
    return [w[1:] for w in windows[:max(1, round(keep * len(windows)))]] if windows else []


def negative_items(decoded: list, windows: list[tuple[int, int, int, int]]) -> list[tuple]:
    """The windows as cached training items: views of the photos, an empty mask, no region of interest."""
    return [(decoded[i][0][y:y + s, x:x + s], np.zeros((s, s), decoded[i][1].dtype), None) for i, y, x, s in windows]


def add_negatives(train_set, side: int) -> int:
    """Mine the cached training photos' negatives and append them to `train_set` as items of their own
    (after every photo, where WithNegatives draws them); returns how many."""
    windows = mine_negatives(train_set.decoded, side)
    train_set.append([train_set.samples[i] for i, *_ in windows], negative_items(train_set.decoded, windows))
    return len(windows)


class WithNegatives(torch.utils.data.Sampler):
    """A sampler whose epoch is `base`'s with a `share` of its places given to the negative items
    (indices first .. first + count - 1), the places and the items drawn from (seed, epoch, rank)."""

    def __init__(self, base, first: int, count: int, share: float):
        self.base, self.first, self.count, self.share = base, first, count, share

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __iter__(self):
        indices = np.array(list(self.base))
        rng = np.random.default_rng([self.base.seed, self.base.epoch, self.base.rank, 1])
        k = round(self.share * len(indices))
        places = rng.choice(len(indices), size=k, replace=False)
        indices[places] = self.first + shuffled_passes(rng, self.count, k)
        return iter(indices.tolist())

    def __len__(self) -> int:
        return len(self.base)
