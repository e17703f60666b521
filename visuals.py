"""Pictures for people: probability maps as 8-bit PNGs, overlays and side-by-side panels (RGB uint8)."""
from pathlib import Path

import cv2
import numpy as np

from utils import ReportedError

TP_COLOUR, FP_COLOUR, FN_COLOUR = (0, 200, 0), (255, 0, 0), (0, 120, 255)
CRACK_COLOUR = (255, 0, 255)


class WriteError(OSError, ReportedError):
    """An output image could not be written; the scripts stop with this message (exit 1: the machine,
    not the command)."""
    exit_code = 1


def write_image(path: Path, rgb_or_gray: np.ndarray, quality: int = 90, bgr: bool = False) -> None:
    """Write an RGB (or, with bgr, OpenCV's BGR) or gray uint8 image (JPEG quality for .jpg), making its
    folder; the one checked image writer, because cv2.imwrite reports a full disk or a read-only folder
    only by returning False."""
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    colour = rgb_or_gray.ndim == 3 and not bgr
    array = cv2.cvtColor(rgb_or_gray, cv2.COLOR_RGB2BGR) if colour else rgb_or_gray
    if not cv2.imwrite(str(path), array, params):
        raise WriteError(f"could not write {path}: is the disk full, or the folder read-only?")


def probability_png(prob: np.ndarray) -> np.ndarray:
    """p in [0,1] -> round(255 p) as uint8; evaluate.py --pred-dir reads it back as value/255."""
    return np.round(np.clip(prob, 0, 1) * 255).astype(np.uint8)


def save_probability(path: Path, prob: np.ndarray) -> None:
    write_image(path, probability_png(prob))


def label(image: np.ndarray, text: str) -> np.ndarray:
    """The image with `text` in the top-left corner, white on a dark box so it reads on any photo."""
    out = to_rgb(image).copy()
    scale = max(out.shape[0] / 600, 0.4)
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(out, (0, 0), (w + 8, h + base + 8), (0, 0, 0), -1)
    cv2.putText(out, text, (4, h + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


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
    """The photo with each predicted crack outlined in a strong colour just outside it, so the crack's
    own pixels stay as photographed for an inspector to judge; the line grows with the photo (2 px up
    to 1600 px a side, then 1 px more per 800) to stay visible zoomed out."""
    width = max(2, round(max(image.shape[:2]) / 800))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    outline = (cv2.dilate(pred.astype(np.uint8), disc) > 0) & ~pred
    out = to_rgb(image).copy()
    out[outline] = CRACK_COLOUR
    return out


def label_cracks(overlay: np.ndarray, cracks: list[dict]) -> np.ndarray:
    """Each crack's id (cracks.csv) beside its bounding box, in type sized to the photo, white on black
    so it reads on any surface."""
    out = overlay.copy()
    scale = max(max(out.shape[:2]) / 1200, 0.6)
    thickness = max(int(round(2 * scale)), 1)
    for crack in cracks:
        text = str(crack["id"])
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        x = min(crack["x"] + crack["w"] + 2, out.shape[1] - tw - 2)
        y = min(max(crack["y"] + th + 2, th + 2), out.shape[0] - 2)
        cv2.rectangle(out, (x - 2, y - th - 2), (x + tw + 2, y + 4), (0, 0, 0), -1)
        cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out
