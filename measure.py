"""Crack measurement on a binary mask: the skeleton (Zhang-Suen thinning, vectorised), its length and
the crack width at each skeleton pixel, measure_cracks() (one row per crack: predict.py's cracks.csv)
and crack_summary(), their sums per photo (summary.csv).

Length is that of the skeleton (1 per axial and sqrt(2) per diagonal link) plus half the width at each
end: exact along rows, columns and diagonals, up to ~8% long at angles in between for cracks up to
3 px wide and ~16% for 8 px wide ones (the skeleton zigzags). Width comes from a precise
distance transform of the mask upsampled 2x (see crack_widths): exact for every width along rows and
columns, the mean within 0.4 px at any angle for widths 1 to 8 (tests/test_predict.py).
"""
import bisect
import math

import cv2
import numpy as np

# Zhang & Suen's neighbour order P2..P9 (N, NE, E, SE, S, SW, W, NW) as (dy, dx); bit i = P(i+2).
NEIGHBOURS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))
POPCOUNT = np.array([bin(code).count("1") for code in range(256)])


def thinning_tables() -> np.ndarray:
    """(2, 256) bool: may a pixel with this neighbour code be deleted in sub-iteration 1 / 2?"""
    tables = np.zeros((2, 256), bool)
    for code in range(256):
        p = [(code >> bit) & 1 for bit in range(8)]
        n, e, s, w = p[0], p[2], p[4], p[6]
        one_run = sum(p[i] < p[(i + 1) % 8] for i in range(8)) == 1  # deleting it splits nothing
        # at least 3 neighbours, not Zhang-Suen's 2: the original erodes 2-pixel-thick diagonal
        # cracks from their ends to nothing (the fix of Lu & Wang, 1986)
        ok = one_run and 3 <= POPCOUNT[code] <= 6
        tables[0, code] = ok and not (n and e and s) and not (e and s and w)
        tables[1, code] = ok and not (n and e and w) and not (n and s and w)
    return tables


THINNING = thinning_tables()


def remove_staircases(skeleton: np.ndarray) -> np.ndarray:
    """Delete the corner pixel of each 4-connected step: its two neighbours still touch diagonally,
    and a step counted as two axial links instead of one diagonal reads 41% long."""
    s = np.pad(skeleton, 1)
    for _ in range(4):  # corners with their two neighbours to the N and E, then rotated
        n, e, south, w, sw = s[:-2, 1:-1], s[1:-1, 2:], s[2:, 1:-1], s[1:-1, :-2], s[2:, :-2]
        s[1:-1, 1:-1] &= ~(n & e & ~south & ~w & ~sw)
        s = np.rot90(s)
    return np.ascontiguousarray(s[1:-1, 1:-1])


def skeletonize(mask: np.ndarray) -> np.ndarray:
    """HxW bool -> its one-pixel-wide 8-connected centre lines (Zhang-Suen thinning, vectorised).

    Only border pixels can be deleted, and a pixel joins the border when a neighbour is deleted,
    so each sub-iteration looks at the border alone: the cost grows with the area of the mask,
    not with its area times the crack width. Compact blobs may thin away completely."""
    h, w = mask.shape
    image = np.pad(mask.astype(bool), 1).ravel()  # background frame: no lookup leaves the array
    offsets = np.array([dy * (w + 2) + dx for dy, dx in NEIGHBOURS])

    def codes(index):
        code = np.zeros(len(index), np.uint8)
        for bit, offset in enumerate(offsets):
            code |= image[index + offset].astype(np.uint8) << bit
        return code

    index = np.flatnonzero(image)
    index = index[POPCOUNT[codes(index)] <= 6]
    step = idle = 0
    while idle < 2:  # done when both sub-iterations in a row delete nothing
        delete = THINNING[step][codes(index)]
        step, idle = 1 - step, idle + 1
        if delete.any():
            idle = 0
            image[index[delete]] = False
            index = np.union1d(index[~delete], (index[delete][:, None] + offsets).ravel())
            index = index[image[index]]
    return remove_staircases(image.reshape(h + 2, w + 2)[1:-1, 1:-1])


def crack_length(skeleton: np.ndarray) -> float:
    """Links between skeleton pixels: 1 along rows and columns, sqrt(2) diagonally. A diagonal
    link is not counted where an axial pixel closes a triangle with it (junctions): the axial
    links already join those pixels."""
    s = skeleton
    a, b, c, d = s[:-1, :-1], s[:-1, 1:], s[1:, :-1], s[1:, 1:]  # each 2x2 block: a b / c d
    axial = np.count_nonzero(s[:, :-1] & s[:, 1:]) + np.count_nonzero(s[:-1] & s[1:])
    diagonal = np.count_nonzero(a & d & ~b & ~c) + np.count_nonzero(b & c & ~a & ~d)
    return axial + math.sqrt(2) * diagonal


def crack_widths(mask: np.ndarray, skeleton: np.ndarray, block: int = 512) -> np.ndarray:
    """Width at each skeleton pixel (row-major order), the same estimate for odd and even widths.

    On the mask upsampled 2x every crack is an even number of half-pixels wide, so a skeleton pixel
    covers a half-pixel on each side of the true centre line, where the exact (precise) distance to
    the nearest background half-pixel is the full width in pixels. The largest value in the 3x3
    neighbourhood: on a slanted crack the skeleton can sit a little off the centre line. (2d - 1 on
    the original grid read a 2-pixel crack as 1 pixel.) Computed block by block where the skeleton
    is, each block with a margin wider than any crack is deep, so the result is the whole image's."""
    if not skeleton.any():
        return np.zeros(0, np.float32)
    mask = np.pad(mask, 1)   # the image border counts as background
    depth = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE).max()
    margin = int(math.ceil(depth)) + 2   # nearest background within depth + 1 px; +1 for the 3x3 maximum
    width = np.zeros(mask.shape, np.float32)
    rows, cols = np.nonzero(np.pad(skeleton, 1))
    for top, left in set(zip(rows // block * block, cols // block * block, strict=True)):
        y0, x0 = max(top - margin, 0), max(left - margin, 0)   # the block and its margin
        found = half_pixel_widths(mask[y0:top + block + margin, x0:left + block + margin])
        width[top:top + block, left:left + block] = found[top - y0:top - y0 + block, left - x0:left - x0 + block]
    return width[1:-1, 1:-1][skeleton]


# On the 2x grid, a pixel's 3x3 neighbourhood of 2x2 half-pixel blocks is the 6x6 window at offsets -2..3.
NEIGHBOURHOOD_2X = np.ones((6, 6), np.uint8)


def half_pixel_widths(mask: np.ndarray) -> np.ndarray:
    """Per pixel: the 3x3 maximum of the precise distance to background on the mask upsampled 2x.

    One 6x6 dilation on the 2x grid, then every second row and column: a numpy maximum over the
    2x2 blocks first took half of predict.py's crack measurement on a 4000x3000 photo."""
    up = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    dist = cv2.distanceTransform(up, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return cv2.dilate(dist, NEIGHBOURHOOD_2X, anchor=(2, 2))[::2, ::2]


def without_specks(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, int]:
    """(the mask without its 8-connected pieces under min_area pixels, how many pieces remain)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # label 0 is the background
    return keep[labels], int(keep.sum())


ROBUST_MAX_PERCENTILE = 95   # a crack's max width: one stray wide pixel (a junction, a blob) is not its width
AXIS_TOLERANCE = 20          # degrees from the photo's vertical (longitudinal) or horizontal (transverse)


def measure_cracks(mask: np.ndarray, min_area: int = 20) -> tuple[np.ndarray, list[dict]]:
    """(the mask of the counted cracks, one dict per crack, longest first with ids 1, 2, ...).

    A crack is an 8-connected piece of at least min_area pixels (smaller ones are noise, left out of
    the mask as well, so picture and numbers agree): its bounding box (x, y, w, h), area, length,
    mean / median / robust max width (the ROBUST_MAX_PERCENTILE-th percentile along the skeleton)
    and orientation (crack_shape)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    kept = np.zeros(mask.shape, bool)
    cracks = []
    for i in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < min_area:
            continue
        piece = labels[y:y + h, x:x + w] == i
        kept[y:y + h, x:x + w] |= piece
        cracks.append({"x": x, "y": y, "w": w, "h": h, "area": area, **crack_shape(piece)})
    cracks.sort(key=lambda c: -c["length_px"])
    for n, crack in enumerate(cracks, 1):
        crack["id"] = n
    return kept, cracks


def crack_shape(piece: np.ndarray) -> dict:
    """Length, widths and orientation of one connected piece.

    Length: the skeleton's, plus half the width at each of its ends, where thinning stops short of
    the crack's end by about that much (a piece too compact to leave a skeleton keeps its deepest pixel)."""
    skeleton = skeletonize(piece)
    if not skeleton.any():
        dist = cv2.distanceTransform(np.pad(piece, 1).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        skeleton[np.unravel_index(int(dist[1:-1, 1:-1].argmax()), piece.shape)] = True
    widths = crack_widths(piece, skeleton)
    ends = end_counts(skeleton)[skeleton]
    angle = principal_angle(piece)
    return {"length_px": crack_length(skeleton) + float(widths @ ends) / 2,
            "mean_width_px": float(widths.mean()), "median_width_px": float(np.median(widths)),
            "max_width_px": float(np.percentile(widths, ROBUST_MAX_PERCENTILE)),
            "angle_deg": angle, "orientation": orientation(angle), "samples": int(widths.size)}


def end_counts(skeleton: np.ndarray) -> np.ndarray:
    """Per pixel, how many crack ends it is: 1 with one 8-neighbour on the skeleton, 2 with none."""
    s = np.pad(skeleton, 1).astype(np.float32)
    neighbours = cv2.filter2D(s, -1, np.ones((3, 3), np.float32), borderType=cv2.BORDER_CONSTANT)[1:-1, 1:-1] - 1
    return np.where(skeleton & (neighbours < 1.5), 2 - np.round(neighbours), 0)


def principal_angle(piece: np.ndarray) -> float:
    """The piece's principal axis in degrees in [0, 180), counter-clockwise from the photo's
    horizontal as a person sees it (45: rising to the right)."""
    m = cv2.moments(piece.astype(np.uint8), binaryImage=True)
    theta = 0.5 * math.atan2(2 * m["mu11"], m["mu20"] - m["mu02"])   # clockwise: image rows grow downward
    return round(math.degrees(-theta) % 180, 1)


def orientation(angle: float) -> str:
    """longitudinal (along the upright photo's vertical: a road running away from the camera),
    transverse (along its horizontal) or diagonal, within AXIS_TOLERANCE degrees."""
    if abs(angle - 90) <= AXIS_TOLERANCE:
        return "longitudinal"
    if angle <= AXIS_TOLERANCE or angle >= 180 - AXIS_TOLERANCE:
        return "transverse"
    return "diagonal"


def crack_summary(kept: np.ndarray, cracks: list[dict]) -> dict:
    """A photo's statistics, the sums of its measure_cracks() rows: the mean width pooled over every
    skeleton pixel, the max the largest robust max, the longest crack's length."""
    samples = sum(c["samples"] for c in cracks)
    return {"crack_fraction": float(kept.mean()), "cracks": len(cracks),
            "length_px": sum(c["length_px"] for c in cracks),
            "mean_width_px": sum(c["mean_width_px"] * c["samples"] for c in cracks) / samples if samples else 0.0,
            "max_width_px": max((c["max_width_px"] for c in cracks), default=0.0),
            "longest_px": max((c["length_px"] for c in cracks), default=0.0)}


def class_names(edges: list[float]) -> list[str]:
    """The width classes that `edges` (mm, increasing) make: two edges name hairline / medium / wide."""
    middle = [f"{a:g}-{b:g} mm" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    ranges = [f"< {edges[0]:g} mm", *middle, f">= {edges[-1]:g} mm"]
    if len(edges) == 2:
        return [f"{name} ({r})" for name, r in zip(("hairline", "medium", "wide"), ranges, strict=True)]
    return ranges


def width_class(width_mm: float, edges: list[float]) -> str:
    return class_names(edges)[bisect.bisect_right(edges, width_mm)]
