"""Training's random changes: geometry (train_transform, ZoomCrop) on the preprocessed image and its
mask together, and what another camera does to the uint8 photo (photo_transform).

Zoom (zoom_photo, zoom_mask) is the one resampling rule for "the same surface from another distance",
shared by --scale-aug-range and benchmarks/zoom.py: photos area-averaged to shrink and bicubic to
enlarge; masks nearest-neighbour to enlarge (an integer zoom makes every width exactly z times wider)
and area-averaged then kept where at least half a pixel was crack to shrink.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import albumentations as A


def train_transform(crop: int, resize: bool = False, scale_aug: bool = False, camera_scale: bool = False,
                    zoom_range: tuple[float, float] | None = None) -> A.Compose | ZoomCrop:
    """docs/METHOD.md, Preprocessing: rot90, flips, then a random crop (images padded up to the crop).

    Options beyond the reference: random scale and small rotations (--scale-aug: 0.7-1.4, +-20
    degrees; --camera-aug scale: 0.5-2, cameras at other distances and resolutions); with
    `zoom_range` (--scale-aug-range) the scale comes from ZoomCrop instead of either."""
    import albumentations as A   # here: training needs it, predict.py's start-up does not
    steps = [A.RandomRotate90(), A.HorizontalFlip(), A.VerticalFlip()]
    if zoom_range:
        if scale_aug:
            steps.append(A.Affine(rotate=(-20, 20), border_mode=cv2.BORDER_REFLECT_101, p=0.8))
        return ZoomCrop(crop, zoom_range, A.Compose(steps))
    if scale_aug or camera_scale:
        steps.append(A.Affine(scale=(0.5, 2.0) if camera_scale else (0.7, 1.4), rotate=(-20, 20) if scale_aug else 0,
                              border_mode=cv2.BORDER_REFLECT_101, p=0.8))
    if resize:
        steps.append(A.Resize(crop, crop))
    else:
        steps += [A.PadIfNeeded(crop, crop, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
                  A.RandomCrop(crop, crop)]
    return A.Compose(steps)


def zoom_photo(image: np.ndarray, z: float, size: tuple[int, int] | None = None) -> np.ndarray:
    """The photo z times closer (z < 1: further away); `size` (w, h) overrides z's rounding."""
    if z == 1 and size is None:
        return image
    size = size or (max(round(image.shape[1] * z), 1), max(round(image.shape[0] * z), 1))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if z < 1 else cv2.INTER_CUBIC)


def zoom_mask(mask: np.ndarray, z: float, size: tuple[int, int]) -> np.ndarray:
    """Bool mask resampled to `size` (w, h: the zoomed photo's)."""
    if z == 1 and size == (mask.shape[1], mask.shape[0]):
        return mask.astype(bool)
    if z > 1:
        return cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) >= 0.5


def zoom_frame(image: np.ndarray, labels: list[np.ndarray | None], z: float, rng: np.random.Generator):
    """The photo as a camera z times closer takes it (z < 1: further away), with its label masks.

    Zooming out shrinks the whole photo. Zooming in keeps the frame: the photo enlarged z times, then
    cut back to its own size around a crack pixel drawn by `rng` (a camera aimed at the crack; anywhere
    when there is none), so texture is sharp in every pixel and the pixel count stays the camera's.
    Crack widths grow by z either way. The first label decides where the frame lies."""
    height, width = image.shape[:2]
    size = (max(round(width * z), 1), max(round(height * z), 1))
    image = zoom_photo(image, z, size)
    labels = [None if m is None else zoom_mask(m, z, size) for m in labels]
    if z <= 1:
        return image, labels
    crack = np.argwhere(labels[0]) if labels and labels[0] is not None else np.empty((0, 2))
    centre = crack[rng.integers(len(crack))] if len(crack) else rng.integers((size[1], size[0]))
    top = int(np.clip(centre[0] - height // 2, 0, size[1] - height))
    left = int(np.clip(centre[1] - width // 2, 0, size[0] - width))
    window = (slice(top, top + height), slice(left, left + width))
    return image[window], [None if m is None else m[window] for m in labels]


class ZoomCrop:
    """--scale-aug-range LO HI: each crop sees the surface from a random distance, zoom z drawn
    log-uniformly from [LO, HI] (as often 2x closer as 2x further): a (crop / z)-pixel square of the
    image, resized to crop x crop by the zoom rule. Where the image is smaller than the square it is
    mirrored outward (labels stay true, unlike a black border); padding_share() says how much.

    Called as an albumentations Compose is (image=, mask=), and reseeded the same way."""

    def __init__(self, crop: int, zoom_range: tuple[float, float], before: A.Compose):
        self.crop, self.low, self.high, self.before = crop, *zoom_range, before
        self.rng = np.random.default_rng()

    def set_random_state(self, np_rng: np.random.Generator, py_rng) -> None:
        self.before.set_random_state(np_rng, py_rng)
        self.rng = np_rng

    def draw_zoom(self) -> float:
        return math.exp(self.rng.uniform(math.log(self.low), math.log(self.high)))

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict:
        out = self.before(image=image, mask=mask)
        z = self.draw_zoom()
        side = max(round(self.crop / z), 1)
        pads = [self.split(max(side - n, 0)) for n in out["image"].shape[:2]]
        image, mask = mirror(out["image"], pads), mirror(out["mask"], pads)
        y0, x0 = (int(self.rng.integers(0, n - side + 1)) for n in image.shape[:2])
        region = (slice(y0, y0 + side), slice(x0, x0 + side))
        size = (self.crop, self.crop)
        return {"image": zoom_photo(image[region], z, size),
                "mask": zoom_mask(mask[region], z, size).astype(np.float32)}

    def split(self, total: int) -> tuple[int, int]:
        """`total` padding pixels split at random between the two ends of a side."""
        before = int(self.rng.integers(0, total + 1))
        return before, total - before


def mirror(array: np.ndarray, pads: list[tuple[int, int]]) -> np.ndarray:
    """`array` mirrored outward by (before, after) pixels on its height and width."""
    if not any(a or b for a, b in pads):
        return array
    return np.pad(array, pads + [(0, 0)] * (array.ndim - 2), mode="symmetric")


def padding_share(sizes: list[tuple[int, int]], crop: int, zoom_range: tuple[float, float],
                  draws: int = 20000, seed: int = 0) -> float:
    """The expected fraction of ZoomCrop's pixels that are mirrored padding, over images of `sizes`
    (h, w; after the 90-degree turns, which swap sides half the time) drawn uniformly."""
    rng = np.random.default_rng(seed)
    low, high = (math.log(v) for v in zoom_range)
    side = crop / np.exp(rng.uniform(low, high, draws))
    hw = np.array(sizes, np.float64)[rng.integers(0, len(sizes), draws)]
    turned = rng.random(draws) < 0.5
    hw[turned] = hw[turned][:, ::-1]
    inside = np.minimum(hw[:, 0], side) * np.minimum(hw[:, 1], side)
    return float(np.mean(1 - inside / side**2))


CAMERA_PARTS = ("colour", "gamma", "blur", "noise", "jpeg", "light", "resolution", "scale")


def camera_steps(part: str) -> list:
    """What another camera, lens, light or file format does to a photo; "scale" is geometric (train_transform)."""
    import albumentations as A
    return {
        "colour": [A.ColorJitter(brightness=0, contrast=0, saturation=(0.6, 1.4), hue=(-0.04, 0.04), p=0.5),
                   A.PlanckianJitter(p=0.3)],                                    # white balance
        "gamma": [A.RandomGamma(gamma_limit=(60, 160), p=0.5)],                  # tone curves survive min-max
        "blur": [A.OneOf([A.GaussianBlur(sigma_limit=(0.3, 1.2)), A.MotionBlur(blur_limit=(3, 5)),
                          A.Defocus(radius=(1, 2), alias_blur=(0.1, 0.3))], p=0.3)],
        "noise": [A.OneOf([A.GaussNoise(std_range=(0.01, 0.06)), A.ISONoise()], p=0.3)],
        "jpeg": [A.ImageCompression(quality_range=(30, 90), p=0.3)],
        "light": [A.Illumination(mode="linear", intensity_range=(0.05, 0.2), p=0.2),
                  A.Illumination(mode="gaussian", intensity_range=(0.05, 0.2), p=0.2),
                  A.RandomShadow(shadow_roi=(0, 0, 1, 1), shadow_intensity_range=(0.15, 0.45), p=0.15)],
        "resolution": [A.Downscale(scale_range=(0.4, 0.9), p=0.3)],              # down and back up
        "scale": [],
    }[part]


def photo_transform(photometric: bool = False, camera: tuple[str, ...] = ()) -> A.Compose | None:
    """Changes to the photo alone, made on its uint8 pixels before any scaling, as a camera makes them.

    On scaled floats albumentations clips to [0, 1], which zeroed every below-mean value of a
    --normalize input. Per-image min-max scaling undoes an affine brightness/contrast change except
    where it clips at 0 or 255, so under min-max --photometric only saturates shadows or highlights."""
    import albumentations as A
    steps = [A.RandomBrightnessContrast(0.2, 0.2)] if photometric else []
    steps += [step for part in CAMERA_PARTS if part in camera for step in camera_steps(part)]
    return A.Compose(steps) if steps else None


def thicken_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Dilate a bool mask by a disc of radius `pixels`: a centre-line label becomes 2 * pixels wider."""
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), disc) > 0


