"""metrics.py against slow, obviously-correct references written with plain loops.

    python -m pytest -q tests/test_metrics.py
"""
import json

import numpy as np
import pytest

import metrics
from metrics import DEFAULT_THRESHOLDS, image_counts, pr_curve, scores_at, summarize

H, W = 12, 17
REFERENCE_ODS_GRID = np.round(np.arange(10, 101) / 100, 2)  # the reference's 0.10 ... 1.00


# ----------------------------------------------------------------- references

def exceeds(value, k, t, dtype, default_grid):
    """Is pixel value v predicted at threshold t_k (p > t)?"""
    if dtype == np.uint8:
        if default_grid:
            return 100 * int(value) > 255 * k  # exact integer form of v/255 > k/100
        return int(value) / 255 > float(t)
    return float(value) > float(t)


def ref_counts(prob, gt, tolerance=0, thresholds=None, roi=None):
    """Per threshold: re-threshold every pixel, then search each disk explicitly."""
    default_grid = thresholds is None
    grid = DEFAULT_THRESHOLDS if default_grid else np.asarray(thresholds, dtype=np.float64)
    h, w = prob.shape
    inside = [[roi is None or bool(roi[y, x]) for x in range(w)] for y in range(h)]
    g = [[bool(gt[y, x]) and inside[y][x] for x in range(w)] for y in range(h)]
    d = tolerance
    offsets = [(dy, dx) for dy in range(-d, d + 1) for dx in range(-d, d + 1) if dy * dy + dx * dx <= d * d]

    def near(mask, y, x):
        return any(0 <= y + dy < h and 0 <= x + dx < w and mask[y + dy][x + dx] for dy, dx in offsets)

    near_gt = [[near(g, y, x) for x in range(w)] for y in range(h)]
    sum_r = sum(map(sum, g))
    rows = []
    for k, t in enumerate(grid):
        pred = [[inside[y][x] and exceeds(prob[y, x], k, t, prob.dtype, default_grid)
                 for x in range(w)] for y in range(h)]
        sum_p = sum(map(sum, pred))
        cnt_p = sum(pred[y][x] and near_gt[y][x] for y in range(h) for x in range(w))
        cnt_r = sum(g[y][x] and near(pred, y, x) for y in range(h) for x in range(w))
        rows.append([cnt_p, sum_p, cnt_r, sum_r])
    return rows


def ratio(a, b):
    return a / b if b else 0.0


def prf(c):
    p, r = ratio(c[0], c[1]), ratio(c[2], c[3])
    return p, r, ratio(2 * p * r, p + r)


def prf_eps(c):
    p, r = c[0] / (c[1] + 1e-7), c[2] / (c[3] + 1e-7)
    return p, r, 2 * p * r / (p + r + 1e-7)


def best(values):
    """Index of the largest value; on ties the later (higher) threshold."""
    b = 0
    for k in range(len(values)):
        if values[k] >= values[b]:
            b = k
    return b


def ref_total(counts):
    n, t = len(counts), len(counts[0])
    return [[sum(int(counts[i][k][j]) for i in range(n)) for j in range(4)] for k in range(t)]


def ref_summary(counts, grid=DEFAULT_THRESHOLDS):
    n, t = len(counts), len(grid)
    total = ref_total(counts)
    k_ods = best([prf(total[k])[2] for k in range(t)])
    img = [[prf(counts[i][k]) for k in range(t)] for i in range(n)]
    k_img = [best([img[i][k][2] for k in range(t)]) for i in range(n)]
    picked = [sum(int(counts[i][k_img[i]][j]) for i in range(n)) for j in range(4)]
    eps = [[prf_eps(counts[i][k]) for k in range(t)] for i in range(n)]
    mean = [[sum(eps[i][k][j] for i in range(n)) / n for j in range(3)] for k in range(t)]
    k_mean = best([mean[k][2] for k in range(t)])
    ap = 0.0
    for k in range(t):
        recall_next = prf(total[k + 1])[1] if k + 1 < t else 0.0
        ap += (prf(total[k])[1] - recall_next) * prf(total[k])[0]
    p, r, f = prf(total[k_ods])
    ois = prf(picked)
    return {
        "ods": {"threshold": grid[k_ods], "precision": p, "recall": r, "f1": f},
        "ois": {"precision": ois[0], "recall": ois[1], "f1": ois[2]},
        "ods_mean": dict(zip(["threshold", "precision", "recall", "f1"], [grid[k_mean], *mean[k_mean]], strict=True)),
        "ois_mean": {"f1": sum(max(eps[i][k][2] for k in range(t)) for i in range(n)) / n},
        "ap": ap,
        "per_image": [{"best_threshold": grid[k], "precision": img[i][k][0], "recall": img[i][k][1],
                       "f1": img[i][k][2], "f1_at_ods": img[i][k_ods][2]} for i, k in enumerate(k_img)],
    }


def assert_close(actual, expected, path="summary"):
    """Every number within 1e-6, same structure."""
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), path
        for key in expected:
            assert_close(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, f"{path}[{i}]")
    else:
        assert type(actual) is float, f"{path} is {type(actual)}, not a plain float"
        assert abs(actual - float(expected)) <= 1e-6, f"{path}: {actual} != {expected}"


# ----------------------------------------------------------------- random cases

def random_gt(rng):
    """A few thin horizontal / vertical / diagonal strokes (some on the border) plus specks."""
    gt = rng.random((H, W)) < 0.03
    for _ in range(rng.integers(1, 4)):
        y, x = rng.integers(0, H), rng.integers(0, W)
        dy, dx = [(0, 1), (1, 0), (1, 1), (1, -1)][rng.integers(4)]
        for _ in range(rng.integers(3, 12)):
            if 0 <= y < H and 0 <= x < W:
                gt[y, x] = True
            y, x = y + dy, x + dx
    gt[0, rng.integers(W)] = gt[rng.integers(H), -1] = True  # the dilation must respect borders
    return gt


def random_prob(rng, gt, kind):
    if kind == "uint8":
        v = rng.integers(0, 256, (H, W))
        v[gt] = np.maximum(v[gt], rng.integers(100, 256, int(gt.sum())))
        v.flat[rng.choice(H * W, 8, replace=False)] = [0, 51, 102, 153, 204, 255, 128, 127]
        return v.astype(np.uint8)
    if kind == "grid":  # every value exactly on a threshold: ties at p == t everywhere
        return (rng.integers(0, 101, (H, W)) / 100).astype(np.float64)
    p = np.clip(0.55 * gt + 0.6 * rng.random((H, W)), 0, 1)
    p.flat[:4] = [0.5, 0.0, 1.0, 0.25]
    return p.astype(np.float32 if kind == "float32" else np.float64)


def random_dataset(seed, kind, roi=False):
    """Five images: three random, one without cracks, one with nothing predicted,
    plus an all-positive one standing in for the last random image."""
    rng = np.random.default_rng(seed)
    gts = [random_gt(rng) for _ in range(5)]
    probs = [random_prob(rng, g, kind) for g in gts]
    gts[3][:] = False
    probs[4][:] = 0
    probs[2][:] = 255 if kind == "uint8" else 1.0
    rois = [rng.random((H, W)) < 0.7 if roi else None for _ in gts]
    return probs, gts, rois


# ----------------------------------------------------------------- counts

@pytest.mark.parametrize("roi", [False, True])
@pytest.mark.parametrize("tolerance", [0, 1, 2])
@pytest.mark.parametrize("kind", ["float32", "float64", "grid", "uint8"])
def test_image_counts_match_reference(kind, tolerance, roi):
    for seed in range(2):
        rng = np.random.default_rng(100 + seed)
        gt = random_gt(rng)
        prob = random_prob(rng, gt, kind)
        mask = rng.random((H, W)) < 0.6 if roi else None
        got = image_counts(prob, gt, tolerance=tolerance, roi=mask)
        assert got.dtype == np.int64 and got.shape == (101, 4)
        assert got.tolist() == ref_counts(prob, gt, tolerance, roi=mask)


@pytest.mark.parametrize("kind", ["float32", "uint8"])
@pytest.mark.parametrize("tolerance", [0, 2])
def test_custom_grids(kind, tolerance):
    rng = np.random.default_rng(7)
    gt = random_gt(rng)
    prob = random_prob(rng, gt, kind)
    dense = np.sort(rng.choice(np.arange(1, 3000), 300, replace=False)) / 3000  # > 255 levels
    for grid in (REFERENCE_ODS_GRID, dense, [0.5]):
        got = image_counts(prob, gt, tolerance=tolerance, thresholds=grid)
        assert got.tolist() == ref_counts(prob, gt, tolerance, thresholds=grid)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_levels_exact_near_every_threshold(dtype):
    """The default-grid shortcut (floor(100 p) plus two corrections) against a
    brute-force count over all thresholds, 40 ulps either side of each one."""
    values = []
    for t in DEFAULT_THRESHOLDS:
        x = dtype(t)
        for _ in range(40):
            x = np.nextafter(x, dtype(-1))
        for _ in range(81):
            values.append(x)
            x = np.nextafter(x, dtype(2))
    rng = np.random.default_rng(0)
    v = np.concatenate([values, rng.random(20000), [-1e-6, -0.0, 0.0, 1.0, 1 + 1e-6]]).astype(dtype)
    v = v[(v >= -1e-6) & (v <= 1 + 1e-6)]
    brute = (v.astype(np.float64)[:, None] > DEFAULT_THRESHOLDS[None, :]).sum(axis=1)
    assert np.array_equal(metrics._levels(v[None, :], DEFAULT_THRESHOLDS, True)[0], brute)


def test_uint8_default_grid_compares_as_integers():
    # v = 51 is exactly 0.2: predicted at t = 0.19, not at t = 0.20
    got = image_counts(np.array([[51, 255, 0]], np.uint8), np.array([[1, 0, 0]]))
    assert got[19, 1] == 2 and got[20, 1] == 1 and got[100, 1] == 0


def test_disk_matches_exact_offsets_and_borders():
    for d in range(5):
        kernel = metrics.disk(d)
        expected = [[int((y - d) ** 2 + (x - d) ** 2 <= d * d) for x in range(2 * d + 1)] for y in range(2 * d + 1)]
        assert kernel.tolist() == expected
        image = np.zeros((9, 11), np.uint8)
        image[0, 10] = 1  # a corner: cv2 must neither wrap nor invent values
        grown = metrics._dilate(image, d)
        assert grown.tolist() == [[int(y * y + (x - 10) ** 2 <= d * d) for x in range(11)] for y in range(9)]


def test_roi_applies_before_tolerance():
    def one_pair(pred_at, gt_at, outside):
        prob, gt, roi = np.zeros((5, 5), np.float32), np.zeros((5, 5), bool), np.ones((5, 5), bool)
        prob[pred_at], gt[gt_at], roi[outside] = 0.9, True, False
        return image_counts(prob, gt, tolerance=1, roi=roi)[50].tolist()

    # neighbours, but one of them is outside the roi: nothing matches
    assert one_pair((2, 2), (2, 3), outside=(2, 3)) == [0, 1, 0, 0]
    assert one_pair((2, 3), (2, 2), outside=(2, 3)) == [0, 0, 0, 1]
    assert one_pair((2, 3), (2, 2), outside=(0, 0)) == [1, 1, 1, 1]


def test_inputs_are_not_modified_and_layout_does_not_matter():
    rng = np.random.default_rng(3)
    gt, roi = random_gt(rng), rng.random((H, W)) < 0.5
    prob = random_prob(rng, gt, "float32")
    before = gt.copy(), roi.copy(), prob.copy()
    c = image_counts(prob, gt, tolerance=2, roi=roi)
    assert all(np.array_equal(a, b) for a, b in zip((gt, roi, prob), before, strict=True))
    fortran = image_counts(np.asfortranarray(prob.T).T, np.asfortranarray(gt), tolerance=2, roi=roi)
    assert np.array_equal(c, fortran)


# ----------------------------------------------------------------- reductions

@pytest.mark.parametrize("tolerance", [0, 1, 2])
@pytest.mark.parametrize("kind", ["float32", "grid", "uint8"])
@pytest.mark.parametrize("seed", [0, 1])
def test_summarize_matches_reference(kind, tolerance, seed):
    probs, gts, rois = random_dataset(seed, kind, roi=seed == 1)
    counts = np.stack([image_counts(p, g, tolerance, roi=r) for p, g, r in zip(probs, gts, rois, strict=True)])
    reference = [ref_counts(p, g, tolerance, roi=r) for p, g, r in zip(probs, gts, rois, strict=True)]
    assert counts.tolist() == reference
    summary = summarize(counts)
    assert_close(summary, ref_summary(reference))
    json.dumps(summary)


def test_summarize_on_the_reference_ods_grid():
    probs, gts, _ = random_dataset(5, "float32")
    counts = np.stack([image_counts(p, g, thresholds=REFERENCE_ODS_GRID) for p, g in zip(probs, gts, strict=True)])
    assert_close(summarize(counts, REFERENCE_ODS_GRID), ref_summary(counts.tolist(), REFERENCE_ODS_GRID))
    # the same numbers as slicing the default grid's counts
    full = np.stack([image_counts(p, g) for p, g in zip(probs, gts, strict=True)])
    assert np.array_equal(full[:, 10:], counts)


def test_ties_pick_the_highest_threshold():
    prob = np.where(np.arange(W) % 2 == 0, 0.7, 0.3)[None, :].repeat(H, 0)
    gt = prob == 0.7  # F = 1 for every t in 0.30 ... 0.69, and p == t at 0.30 and 0.70
    s = summarize(image_counts(prob, gt)[None])
    assert s["ods"]["threshold"] == s["ods_mean"]["threshold"] == s["per_image"][0]["best_threshold"] == 0.69
    assert s["ods"]["f1"] == s["ois"]["f1"] == 1.0


def test_image_without_cracks_picks_predict_nothing():
    s = summarize(image_counts(np.full((H, W), 0.4), np.zeros((H, W)))[None])
    assert s["per_image"][0]["best_threshold"] == s["ods"]["threshold"] == 1.0
    assert s["ods"]["f1"] == s["ois"]["f1"] == s["ap"] == 0.0


def test_hand_computed_scores_and_ap():
    counts = image_counts(np.array([[0.9, 0.4, 0.6, 0.1]]), np.array([[1, 1, 0, 0]]))
    assert scores_at(counts, 50) == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "iou": 1 / 3}
    perfect = image_counts(np.array([[1.0, 0.0]], np.float32), np.array([[1, 0]]))[None]
    assert summarize(perfect)["ap"] == 1.0 and summarize(perfect)["ods"]["threshold"] == 0.99
    # grid (0.2, 0.5): P, R = (2/3, 1) then (1, 1/2); AP = (1 - 1/2) 2/3 + (1/2 - 0) 1
    two = image_counts(np.array([[0.9, 0.4, 0.3]]), np.array([[1, 1, 0]]), thresholds=[0.2, 0.5])
    assert abs(summarize(two[None], [0.2, 0.5])["ap"] - 5 / 6) < 1e-12


@pytest.mark.parametrize("tolerance", [0, 2])
def test_scores_at_and_pr_curve_match_reference(tolerance):
    probs, gts, rois = random_dataset(2, "float32", roi=True)
    counts = np.stack([image_counts(p, g, tolerance, roi=r) for p, g, r in zip(probs, gts, rois, strict=True)])
    total = ref_total(counts.tolist())
    num_pixels = sum(int(r.sum()) for r in rois)
    curve = pr_curve(counts, num_pixels=num_pixels)
    assert set(curve) == {"true_positive_counts", "false_positive_counts", "true_negative_counts",
                          "false_negative_counts", "precision", "recall"}
    for k in range(101):
        cp, sp, cr, sr = total[k]
        p, r, f = prf(total[k])
        expected = {"precision": p, "recall": r, "f1": f, "iou": ratio(cp, sp + sr - cp)}
        assert_close(scores_at(counts, k), expected)
        assert_close(scores_at(counts.sum(axis=0), k), expected)
        row = [curve[key][k] for key in ("true_positive_counts", "false_positive_counts",
                                          "false_negative_counts", "true_negative_counts")]
        assert row == [cp, sp - cp, sr - cr, num_pixels - sp - (sr - cr)]
        assert abs(curve["precision"][k] - p) <= 1e-12 and abs(curve["recall"][k] - r) <= 1e-12
    assert not pr_curve(counts)["true_negative_counts"].any()


def test_pr_curve_feeds_tensorboard(tmp_path):
    """Written with add_pr_curve_raw and read back from the event file: the curve TensorBoard shows."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray
    from torch.utils.tensorboard import SummaryWriter
    counts = image_counts(np.array([[0.9, 0.4, 0.6, 0.1]]), np.array([[1, 1, 0, 0]]))
    curve = pr_curve(counts, num_pixels=4)
    with SummaryWriter(tmp_path) as writer:
        writer.add_pr_curve_raw("pr", **curve, num_thresholds=len(curve["precision"]), global_step=0)
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    stored = make_ndarray(events.Tensors("pr")[0].tensor_proto)   # rows: TP, FP, TN, FN, precision, recall
    k = 50   # t = 0.5: predicted {0.9, 0.6}, one of them on a crack
    assert stored[:4, k].tolist() == [1, 1, 1, 1]
    assert stored[4, k] == pytest.approx(0.5) and stored[5, k] == pytest.approx(0.5)
    np.testing.assert_allclose(stored[4], curve["precision"], atol=1e-6)


# ----------------------------------------------------------------- validation

def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(12, 17\).*\(12, 16\)"):
        image_counts(np.zeros((12, 17)), np.zeros((12, 16)))
    with pytest.raises(ValueError, match="roi"):
        image_counts(np.zeros((12, 17)), np.zeros((12, 17)), roi=np.ones((3, 3)))


@pytest.mark.parametrize("bad", [1.5, -0.1, np.nan, 1 + 2e-6])
def test_probabilities_outside_unit_interval_are_rejected(bad):
    prob = np.full((4, 4), 0.5, np.float32)
    prob[1, 2] = bad
    with pytest.raises(ValueError, match="sigmoid"):
        image_counts(prob, np.zeros((4, 4)))


def test_float_noise_at_the_ends_is_accepted():
    prob = np.array([[1 + 5e-7, -5e-7]])
    assert image_counts(prob, np.array([[1, 0]]))[:, 1].tolist() == [1] * 101  # 1 + 5e-7 > 1.0


@pytest.mark.parametrize("call", [
    lambda: image_counts(np.zeros((4, 4), np.int64), np.zeros((4, 4))),
    lambda: image_counts(np.zeros((4, 4)), np.zeros((4, 4)), tolerance=-1),
    lambda: image_counts(np.zeros((4, 4)), np.zeros((4, 4)), thresholds=[0.5, 0.2]),
    lambda: summarize(np.zeros((2, 50, 4), np.int64)),
])
def test_bad_arguments_raise(call):
    with pytest.raises((TypeError, ValueError)):
        call()


def test_the_run_threshold_maximises_the_mean_of_the_datasets_f1_curves():
    from metrics import best_mean_threshold, f1_curve, threshold_index
    grid = np.arange(101) / 100
    small = np.exp(-((grid - 0.2) / 0.1) ** 2)            # one dataset peaks at 0.2, the other at 0.6
    large = 0.9 * np.exp(-((grid - 0.6) / 0.3) ** 2)
    assert best_mean_threshold([small, large]) == grid[np.argmax(small + large)]
    assert best_mean_threshold([np.ones(101), np.ones(101)]) == 1.0          # ties: the highest
    counts = image_counts(np.array([[0.9, 0.4, 0.6, 0.1]]), np.array([[1, 1, 0, 0]]))
    assert f1_curve(counts)[50] == scores_at(counts, 50)["f1"] == 0.5
    assert threshold_index(0.37) == 37
    with pytest.raises(ValueError, match="not on the grid"):
        threshold_index(0.375)
