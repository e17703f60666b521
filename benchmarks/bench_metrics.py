"""Time metrics.py against a port of the reference's per-threshold evaluation loop.

    python benchmarks/bench_metrics.py                         # 32 images of 512x512
    python benchmarks/bench_metrics.py --images 4 --size 128   # quick smoke run

The reference re-thresholds every image at every threshold (0.10 ... 1.00 for
ODS, 0.00 ... 1.00 for OIS); metrics.py histograms each image once. Both see the
same float32 probabilities, and their ODS / OIS F1 (the reference's conventions,
metrics' ods_mean / ois_mean) must agree within 1e-6. The last line is the
speedup of metrics.py at tolerance 0 over the reference.
"""
import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import metrics  # noqa: E402

# both grids built from k/100, so neither side sees different float thresholds
ODS_GRID = np.round(np.arange(10, 101) / 100, 2)  # the reference's ODS sweep
OIS_GRID = np.round(np.arange(0, 101) / 100, 2)  # the reference's OIS sweep


def get_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32, help="number of images (32)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (512)")
    parser.add_argument("--repeat", type=int, default=3, help="timing runs per method; the best counts (3)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def crack_like(rng, size):
    """Thin random polylines as gt; probability = blurred gt + noise, as float32."""
    gt = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(2, 6)):
        steps = rng.normal(0, size / 8, (rng.integers(3, 9), 2))
        points = np.cumsum(steps, axis=0) + rng.uniform(0, size, 2)
        cv2.polylines(gt, [points.astype(np.int32)], False, 1, thickness=int(rng.integers(1, 4)))
    blurred = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), sigmaX=1.5)
    noisy = 0.9 * blurred / max(float(blurred.max()), 1e-6) + rng.normal(0.1, 0.12, gt.shape)
    return np.clip(noisy, 0, 1).astype(np.float32), gt.astype(bool)


def reference_f1(prob, gt, t):
    """One image at one threshold, computed as the reference did (float arrays, +1e-7)."""
    pred = (prob > t).astype(np.float32)
    tp = np.sum(pred * gt)
    fp = np.sum(pred * (1 - gt))
    fn = np.sum((1 - pred) * gt)
    precision = tp / (tp + fp + 1e-7)
    recall = tp / (tp + fn + 1e-7)
    return 2 * precision * recall / (precision + recall + 1e-7)


def reference(probs, gts):
    """ODS: best over t of the mean F1 over images; OIS: mean over images of the best F1."""
    ods = max(np.mean([reference_f1(p, g, t) for p, g in zip(probs, gts, strict=True)]) for t in ODS_GRID)
    ois = np.mean([max(reference_f1(p, g, t) for t in OIS_GRID) for p, g in zip(probs, gts, strict=True)])
    return float(ods), float(ois)


def project(probs, gts, tolerance=0, thresholds=None):
    counts = [metrics.image_counts(p, g, tolerance, thresholds) for p, g in zip(probs, gts, strict=True)]
    return metrics.summarize(np.stack(counts), thresholds)


def best_time(fn, repeat):
    """(result, fastest wall time in seconds) over `repeat` runs."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, min(times)


def main():
    # 1. data: the same float32 maps for both; the reference got float masks
    args = get_args()
    rng = np.random.default_rng(args.seed)
    probs, gts = zip(*[crack_like(rng, args.size) for _ in range(args.images)], strict=True)
    float_gts = [g.astype(np.float32) for g in gts]
    n = len(probs)
    print(f"images: {n} x {args.size}x{args.size} float32, crack pixels {np.mean(gts):.2%}")

    # 2. timings
    (ref_ods, ref_ois), t_ref = best_time(lambda: reference(probs, float_gts), args.repeat)
    summary, t_d0 = best_time(lambda: project(probs, gts), args.repeat)
    summary_d2, t_d2 = best_time(lambda: project(probs, gts, tolerance=2), args.repeat)
    print(f"reference loop (ODS 91 + OIS 101 thresholds): {t_ref:8.3f} s  {1e3 * t_ref / n:7.2f} ms/image")
    print(f"project d=0 (101 thresholds, all metrics):    {t_d0:8.3f} s  {1e3 * t_d0 / n:7.2f} ms/image")
    print(f"project d=2 (101 thresholds, all metrics):    {t_d2:8.3f} s  {1e3 * t_d2 / n:7.2f} ms/image"
          f"  ({t_ref / t_d2:.0f}x faster than the reference)")

    # 3. agreement, each convention on the reference's own grid
    ods = project(probs, gts, thresholds=ODS_GRID)["ods_mean"]
    ois = summary["ois_mean"]["f1"]
    diff = max(abs(ods["f1"] - ref_ods), abs(ois - ref_ois))
    print(f"ODS F (mean of per-image F, t 0.10..1.00): reference {ref_ods:.9f}  project {ods['f1']:.9f}"
          f"  at t={ods['threshold']:.2f}")
    print(f"OIS F (mean of per-image best F):          reference {ref_ois:.9f}  project {ois:.9f}")
    print(f"project d=0 ODS/OIS F (summed counts): {summary['ods']['f1']:.4f} / {summary['ois']['f1']:.4f}; "
          f"d=2: {summary_d2['ods']['f1']:.4f} / {summary_d2['ois']['f1']:.4f}")
    print(f"max |difference| in ODS F and OIS F: {diff:.2e} ({'ok' if diff <= 1e-6 else 'FAIL'}: limit 1e-6)")
    print(f"speedup: {t_ref / t_d0:.0f}x")
    return 0 if diff <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
