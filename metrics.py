"""Threshold-swept crack metrics: precision, recall, F1, ODS, OIS, AP.

Two steps, as in smp's get_stats: `image_counts` turns one probability map into
per-threshold counts, `summarize` / `scores_at` / `pr_curve` reduce the stacked
counts of many images. Numpy and cv2 only; no model, no path, no torch.

    counts = np.stack([image_counts(p, g, tolerance=2) for p, g in pairs])
    summary = summarize(counts)    # summary["ods"]["f1"], summary["ois"]["f1"], ...

Every threshold comes from ONE pass over the image: each pixel is mapped to its
"level", the number of grid thresholds it exceeds (p > t), so a histogram of
levels, summed from the top, gives the predicted-pixel count at every threshold.
With a tolerance of d pixels the gt is dilated by the exact disk dy^2+dx^2 <= d^2
(precision) and the level map is max-filtered by the same disk (recall: a gt
pixel is recalled at t iff the largest p within its disk exceeds t).
"""
import cv2
import numpy as np

# t_k = k/100, correctly rounded. (np.linspace(0, 1, 101) is one ulp off k/100 at
# ten grid points, which would make p > t disagree with the reference's grid.)
DEFAULT_THRESHOLDS = np.arange(101) / 100
EPS = 1e-7  # the reference's smoothing term, used by the *_mean conventions only
RANGE_SLACK = 1e-6  # float noise allowed around [0, 1]


# the grid as a 256-entry cv2.LUT table; entries past the grid are never looked up
_GRID_TABLE = np.concatenate([DEFAULT_THRESHOLDS, np.full(256 - DEFAULT_THRESHOLDS.size, np.inf)])
# uint8 maps on the default grid compare as integers: v/255 > k/100 <=> 100 v > 255 k.
_UINT8_DEFAULT = (100 * np.arange(256)[:, None] > 255 * np.arange(101)).sum(1)


def disk(radius):
    """(2r+1, 2r+1) uint8 structuring element of the offsets with dy^2 + dx^2 <= r^2."""
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2 <= radius**2).astype(np.uint8)


def _dilate(image, radius):
    # constant 0 border: pixels outside the image are neither gt nor predicted
    return cv2.dilate(image, disk(radius), borderType=cv2.BORDER_CONSTANT, borderValue=0)


def _grid(thresholds):
    """(grid, is_default); the default grid enables the exact integer/fast paths."""
    if thresholds is None:
        return DEFAULT_THRESHOLDS, True
    grid = np.asarray(thresholds, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or grid.size > 65535 or np.any(np.diff(grid) <= 0):
        raise ValueError("thresholds must be a strictly increasing 1-D array of 1..65535 values")
    return grid, np.array_equal(grid, DEFAULT_THRESHOLDS)


def _validate(prob, gt, roi):
    prob, gt = np.asarray(prob), np.asarray(gt)
    if prob.ndim != 2 or prob.shape != gt.shape:
        raise ValueError(f"prob {prob.shape} and gt {gt.shape} must be the same HxW shape")
    if roi is not None:
        roi = np.asarray(roi, dtype=bool)
        if roi.shape != prob.shape:
            raise ValueError(f"roi {roi.shape} must have the shape of prob {prob.shape}")
    if prob.dtype != np.uint8:
        if not np.issubdtype(prob.dtype, np.floating):
            raise TypeError(f"prob must be float probabilities or a uint8 map, got {prob.dtype}")
        lo, hi = prob.min(), prob.max()
        if not (lo >= -RANGE_SLACK and hi <= 1 + RANGE_SLACK):  # also catches NaN
            raise ValueError(f"probabilities in [0, 1] are expected (apply the sigmoid once), "
                             f"got values in [{lo}, {hi}]")
        if prob.dtype not in (np.float32, np.float64):
            prob = prob.astype(np.float64)  # float16 etc.: exact widening
    return np.ascontiguousarray(prob), np.ascontiguousarray(gt != 0), roi


def _levels(prob, grid, is_default):
    """Per pixel, how many grid thresholds it exceeds (p > t): uint8, or uint16 for big grids."""
    dtype = np.uint8 if grid.size < 256 else np.uint16
    if prob.dtype == np.uint8:  # 256 possible values: a lookup table
        table = _UINT8_DEFAULT if is_default else np.searchsorted(grid, np.arange(256) / 255)
        return cv2.LUT(prob, table.astype(dtype))
    if not is_default:
        return np.searchsorted(grid, prob, side="left").astype(dtype)
    # Exact fast path for t_k = k/100. With m = floor(100 p), t_0..t_{m-1} lie below
    # p and t_{m+1}.. do not (t_{m+1} is the double nearest (m+1)/100 > p), so the
    # level is m + (p > t_m). The float guess g = trunc(fl(100 p)) is m, or m + 1
    # when p is within rounding of (m+1)/100 (rounding is monotone and integers
    # are exact, so never m - 1); either way g + (p > t_g) is the level.
    guess = (prob * 100).astype(np.uint8)  # p in [-1e-6, 1 + 1e-6] -> 0..100
    return guess + (prob > cv2.LUT(guess, _GRID_TABLE))  # float64 comparison: exact


def _exceeding(levels, num_thresholds):
    """Count, for every threshold index k, of the given pixel levels that are > k."""
    hist = np.bincount(levels, minlength=num_thresholds + 1)
    return np.cumsum(hist[::-1])[::-1][1:]  # suffix sums from level k + 1


def image_counts(prob, gt, tolerance=0, thresholds=None, roi=None):
    """(T, 4) int64 counts (cntP, sumP, cntR, sumR) of one image at every threshold.

    prob: HxW float probabilities in [0, 1] or a uint8 8-bit map (p = v / 255);
    gt: HxW bool / 0-1 crack mask; tolerance: d >= 0 pixels (0 = strict matching);
    roi: optional HxW bool, only pixels inside it count, for prediction and gt alike.
    """
    if int(tolerance) != tolerance or tolerance < 0:
        raise ValueError(f"tolerance must be an int >= 0, got {tolerance}")
    grid, is_default = _grid(thresholds)
    prob, gt, roi = _validate(prob, gt, roi)
    levels = _levels(prob, grid, is_default)
    if roi is not None:  # before the dilations, so nothing leaks in from outside the roi
        gt &= roi
        levels[~roi] = 0  # level 0: not predicted at any threshold
    if tolerance == 0:
        cnt_p = cnt_r = _exceeding(levels[gt], grid.size)
    else:
        near_gt = _dilate(gt.view(np.uint8), int(tolerance)).view(bool)
        cnt_p = _exceeding(levels[near_gt], grid.size)
        cnt_r = _exceeding(_dilate(levels, int(tolerance))[gt], grid.size)
    sum_p = _exceeding(levels.ravel(), grid.size)
    sum_r = np.full(grid.size, np.count_nonzero(gt))
    return np.stack([cnt_p, sum_p, cnt_r, sum_r], axis=1).astype(np.int64)


def _div(num, den):
    """Elementwise num / den with 0/0 (any x/0) = 0."""
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    return np.divide(num, den, out=np.zeros(num.shape), where=den != 0)


def _prf(counts):
    """Precision, recall, F1 from (..., 4) counts, 0/0 = 0."""
    precision = _div(counts[..., 0], counts[..., 1])
    recall = _div(counts[..., 2], counts[..., 3])
    return precision, recall, _div(2 * precision * recall, precision + recall)


def _best(f1):
    """Index of the best F1 along the last axis; ties go to the HIGHEST threshold."""
    return f1.shape[-1] - 1 - np.argmax(f1[..., ::-1], axis=-1)


def _as_dataset(counts, thresholds):
    counts = np.asarray(counts)
    grid, _ = _grid(thresholds)
    if counts.ndim != 3 or counts.shape[0] == 0 or counts.shape[1:] != (grid.size, 4):
        raise ValueError(f"counts must be (N>0, {grid.size}, 4), got {counts.shape}")
    return counts.astype(np.int64), grid


def summarize(counts, thresholds=None):
    """Reduce (N, T, 4) counts of N images at one tolerance: ODS, OIS (summed counts,
    BSDS convention), ods_mean / ois_mean (the reference's mean of per-image F1), AP
    and per-image scores. Every value is a plain float."""
    counts, grid = _as_dataset(counts, thresholds)
    total = counts.sum(axis=0)  # (T, 4)
    p, r, f = _prf(total)
    k_ods = int(_best(f))

    img_p, img_r, img_f = _prf(counts)  # (N, T)
    k_img = _best(img_f)  # (N,)
    rows = np.arange(len(counts))
    ois_p, ois_r, ois_f = _prf(counts[rows, k_img].sum(axis=0))

    # the reference's convention: epsilon-smoothed per-image scores, averaged
    eps_p = counts[..., 0] / (counts[..., 1] + EPS)
    eps_r = counts[..., 2] / (counts[..., 3] + EPS)
    eps_f = 2 * eps_p * eps_r / (eps_p + eps_r + EPS)
    mean_f = eps_f.mean(axis=0)
    k_mean = int(_best(mean_f))

    recall_next = np.append(r[1:], 0.0)  # thresholds ascending, so recall falls
    per_image = [{"best_threshold": float(grid[k]), "precision": float(img_p[i, k]),
                  "recall": float(img_r[i, k]), "f1": float(img_f[i, k]),
                  "f1_at_ods": float(img_f[i, k_ods])} for i, k in enumerate(k_img)]
    return {
        "ods": {"threshold": float(grid[k_ods]), "precision": float(p[k_ods]),
                "recall": float(r[k_ods]), "f1": float(f[k_ods])},
        "ois": {"precision": float(ois_p), "recall": float(ois_r), "f1": float(ois_f)},
        "ods_mean": {"threshold": float(grid[k_mean]), "precision": float(eps_p[:, k_mean].mean()),
                     "recall": float(eps_r[:, k_mean].mean()), "f1": float(mean_f[k_mean])},
        "ois_mean": {"f1": float(eps_f.max(axis=1).mean())},
        "ap": float(np.sum((r - recall_next) * p)),
        "per_image": per_image,
    }


def scores_at(counts, threshold_index):
    """Dataset-summed precision, recall, F1 and IoU (= TP / (TP + FP + FN), meaningful
    at tolerance 0) at one threshold index; counts (N, T, 4) or (T, 4); 0/0 = 0."""
    counts = np.asarray(counts, dtype=np.int64)
    cnt_p, sum_p, cnt_r, sum_r = (counts.sum(axis=0) if counts.ndim == 3 else counts)[threshold_index]
    p, r, f = _prf(np.array([cnt_p, sum_p, cnt_r, sum_r]))
    iou = _div(cnt_p, sum_p + sum_r - cnt_p)
    return {"precision": float(p), "recall": float(r), "f1": float(f), "iou": float(iou)}


def f1_curve(counts):
    """Dataset-summed F1 at every threshold, shape (T,); counts (N, T, 4) or (T, 4); 0/0 = 0."""
    counts = np.asarray(counts, dtype=np.int64)
    return _prf(counts.sum(axis=0) if counts.ndim == 3 else counts)[2]


def best_mean_threshold(curves, thresholds=None):
    """The threshold that maximises the mean of several datasets' F1 curves (ties: the highest),
    so that each dataset counts the same however many images or crack pixels it has."""
    grid, _ = _grid(thresholds)
    return float(grid[int(_best(np.mean(curves, axis=0)))])


def threshold_index(threshold, thresholds=None):
    """Index of a threshold on the grid; refuses one that is not on it (counts exist only there)."""
    grid, _ = _grid(thresholds)
    k = int(np.argmin(np.abs(grid - threshold)))
    if abs(grid[k] - threshold) > 1e-9:
        raise ValueError(f"threshold {threshold} is not on the grid of {grid.size} thresholds")
    return k


def pr_curve(counts, num_pixels=None):
    """Dataset-summed PR curve, keyword-compatible with SummaryWriter.add_pr_curve_raw:
    curve = pr_curve(counts)
    writer.add_pr_curve_raw(tag, **curve, num_thresholds=len(curve["precision"]), global_step=step)

    Arrays run over thresholds ascending. tp = cntP, fp = sumP - cntP, fn = sumR - cntR;
    at tolerance > 0 tp and fn come from the two tolerant matchings, so tp + fn need
    not equal the gt count. tn = num_pixels - tp - fp - fn when the total pixel count
    is given (meaningful at tolerance 0 only), else 0.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = counts.sum(axis=0) if counts.ndim == 3 else counts
    tp, fp, fn = total[:, 0], total[:, 1] - total[:, 0], total[:, 3] - total[:, 2]
    tn = np.zeros_like(tp) if num_pixels is None else num_pixels - tp - fp - fn
    precision, recall, _ = _prf(total)
    return {"true_positive_counts": tp, "false_positive_counts": fp,
            "true_negative_counts": tn, "false_negative_counts": fn,
            "precision": precision, "recall": recall}
