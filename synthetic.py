"""Synthetic pavement cracks, the default dataset and what the tests train on: gray pavement with
grain, stones and stains, meandering cracks that branch, uneven light. synthetic_pair makes one
photo and its mask from a random generator; make_synthetic_dataset writes a dataset folder of them
(prepare_data.py --synthetic, and train.py on first use of SYNTHETIC).
"""
from pathlib import Path

import cv2
import numpy as np

from datafolder import dataset_folder
from visuals import write_image


def _smooth_noise(rng, height, width, cell):
    """Zero-mean noise with blobs about `cell` px wide, roughly in [-1, 1]."""
    coarse = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) / 1.5


def _background(rng, height, width):
    """Gray pavement: grain at several scales plus aggregate stones lighter/darker than the binder."""
    gray = np.full((height, width), rng.uniform(115, 175), np.float32)
    gray += rng.normal(0, rng.uniform(4, 9), (height, width)).astype(np.float32)
    for cell, amplitude in ((3, 8), (12, 10), (48, 14)):
        gray += rng.uniform(0.5, 1.0) * amplitude * _smooth_noise(rng, height, width, cell)
    n_stones = int(height * width / rng.uniform(60, 150))
    ys, xs = rng.integers(0, height, n_stones), rng.integers(0, width, n_stones)
    for y, x, r, dv in zip(ys, xs, rng.integers(1, 3, n_stones), rng.normal(0, 18, n_stones), strict=True):
        cv2.circle(gray, (int(x), int(y)), int(r), float(gray[y, x] + dv), -1)
    return cv2.GaussianBlur(gray, (3, 3), 0.7)


def _add_stains(rng, gray):
    """Dark stains and oil spots, as dark as cracks but blob-shaped: brightness alone must fail."""
    height, width = gray.shape
    stain = np.zeros_like(gray)
    for _ in range(rng.integers(2, 7)):
        # Overlapping ellipses give an irregular outline.
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        size, depth = rng.integers(5, min(height, width) // 7 + 6), rng.uniform(25, 70)
        for _ in range(rng.integers(1, 4)):
            center = (int(cx + rng.normal(0, size / 2)), int(cy + rng.normal(0, size / 2)))
            axes = (int(rng.integers(3, size + 4)), int(rng.integers(3, size + 4)))
            cv2.ellipse(stain, center, axes, rng.uniform(0, 180), 0, 360, depth, -1)
    # Soft edges and a mottled inside: soaked in, not drawn.
    stain = cv2.GaussianBlur(stain, (0, 0), rng.uniform(1.5, 4.0))
    gray -= stain * (1.0 + 0.3 * _smooth_noise(rng, height, width, 6))


def _crack_walk(rng, mask, start, angle, length, thickness, level):
    """Draw one meandering crack (random-walk polyline, 1-5 px) from start = (x, y) into mask; may branch."""
    height, width = mask.shape
    x, y = start
    heading, walked = angle, 0.0
    while walked < length and -10 <= x <= width + 10 and -10 <= y <= height + 10:
        # The angle wanders but is pulled back to the heading, so cracks meander without curling.
        angle += rng.normal(0, 0.35) + 0.15 * (heading - angle)
        step = rng.uniform(3, 7)
        nx, ny = x + step * np.cos(angle), y + step * np.sin(angle)
        if rng.random() < 0.25:
            thickness = int(np.clip(thickness + rng.choice((-1, 1)), 1, 5))
        cv2.line(mask, (round(x), round(y)), (round(nx), round(ny)), 255, thickness)
        x, y, walked = nx, ny, walked + step
        if level < 2 and rng.random() < 0.02:
            turn = rng.choice((-1, 1)) * rng.uniform(0.5, 1.3)
            _crack_walk(rng, mask, (x, y), angle + turn, length * rng.uniform(0.15, 0.4),
                        max(1, thickness - 1), level + 1)


def _crack_mask(rng, height, width):
    """uint8 {0,255} mask with 1-6% crack pixels (redrawn until it lands in that range)."""
    for _ in range(20):
        mask = np.zeros((height, width), np.uint8)
        while np.count_nonzero(mask) < 0.01 * mask.size:
            start = rng.uniform(0, width), rng.uniform(0, height)
            length = rng.uniform(0.5, 1.2) * max(height, width)
            _crack_walk(rng, mask, start, rng.uniform(0, 2 * np.pi), length, int(rng.integers(1, 4)), 0)
        if np.count_nonzero(mask) <= 0.06 * mask.size:
            break
    return mask


def pavement(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A crack-free synthetic pavement photo, uint8 HxWx3 (gray, so RGB and BGR alike): a canvas for
    tests that draw their own cracks."""
    gray = np.clip(_background(rng, height, width), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))


def synthetic_pair(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic pavement photo: (image uint8 HxWx3 BGR, mask uint8 HxW in {0,255})."""
    gray = _background(rng, height, width)
    _add_stains(rng, gray)
    mask = _crack_mask(rng, height, width)
    # Every mask pixel is darkened (so the mask is exactly the darkened pixels), by a depth
    # that varies along the crack and is largest at its core. A quarter get faint cracks.
    contrast = rng.uniform(22, 35) if rng.random() < 0.25 else rng.uniform(35, 70)
    core = np.minimum(cv2.distanceTransform(mask, cv2.DIST_L2, 3), 3) / 3
    along = np.clip(1 + 0.35 * _smooth_noise(rng, height, width, 24), 0.5, 1.5)
    gray -= (mask > 0) * contrast * along * (0.7 + 0.3 * core)
    # Uneven light (sun/shade ramp plus a broad soft blob) defeats a global threshold.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(theta) * (xx / width - 0.5) + np.sin(theta) * (yy / height - 0.5)
    broad = _smooth_noise(rng, height, width, max(height, width) // 2)
    gray *= 1 + rng.uniform(0.2, 0.6) * ramp + 0.15 * broad
    tint = rng.uniform(0.92, 1.08, 3).astype(np.float32)
    image = gray[..., None] * tint + rng.normal(0, 4, (height, width, 3)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def make_synthetic_dataset(root, name="SYNTHETIC", count=60, size=(256, 256), seed=0) -> Path:
    """Write root/name/images/syn_000.jpg + masks/syn_000.png ...; size is (height, width).

    Image i depends only on (seed, i), so a larger count extends a smaller one.
    An existing root/name is replaced only if crackseg made it (datafolder.dataset_folder).
    """
    out = Path(root) / name
    digits = max(3, len(str(count - 1)))
    with dataset_folder(out) as tmp:
        for i in range(count):
            image, mask = synthetic_pair(np.random.default_rng([seed, i]), *size)
            stem = f"syn_{i:0{digits}d}"
            write_image(tmp / "images" / f"{stem}.jpg", image, quality=95, bgr=True)
            write_image(tmp / "masks" / f"{stem}.png", mask)
    return out
