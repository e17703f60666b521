"""Pictures for people: probability maps as 8-bit PNGs, overlays and side-by-side panels (RGB uint8)."""
from pathlib import Path

import cv2
import numpy as np

TP_COLOUR, FP_COLOUR, FN_COLOUR = (0, 200, 0), (255, 0, 0), (0, 120, 255)
CRACK_COLOUR = (255, 0, 255)


def save_probability(path: Path, prob: np.ndarray) -> None:
    """p in [0,1] -> round(255 p); evaluate.py --pred-dir reads it back as value/255."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.round(np.clip(prob, 0, 1) * 255).astype(np.uint8))


def to_rgb(array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB) if array.ndim == 2 else array


def side_by_side(arrays: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Equal-height images (RGB or masks) left to right with a white gap."""
    spacer = np.full((arrays[0].shape[0], gap, 3), 255, np.uint8)
    parts = []
    for array in arrays:
        parts += [to_rgb(array), spacer]
    return np.concatenate(parts[:-1], axis=1)


def paint(image: np.ndarray, where: np.ndarray, colour, alpha: float = 0.85) -> np.ndarray:
    out = image.astype(np.float32)
    out[where] = (1 - alpha) * out[where] + alpha * np.array(colour, np.float32)
    return out.astype(np.uint8)


def error_overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """True positives green, false positives red, false negatives blue."""
    out = paint(image, pred & gt, TP_COLOUR)
    out = paint(out, pred & ~gt, FP_COLOUR)
    return paint(out, ~pred & gt, FN_COLOUR)


def crack_overlay(image: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The photo with predicted cracks drawn in a strong colour, thickened to stay visible when zoomed out."""
    thick = cv2.dilate(pred.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return paint(image, thick, CRACK_COLOUR, alpha=0.9)
