"""Crack datasets on disk: `<data-dir>/<NAME>/images/<id>.<ext>` paired with `masks/<id>.<ext>`.

Owns pairing, validation, reading and binarising, intensity preprocessing, the training items
(augment.py makes their random changes; crops.py what a crop is drawn from beyond the photo; a folder
crackseg writes: datafolder.py). Items are dicts
{"image": 3xHxW float32, "mask": 1xHxW float32 in {0,1}, "roi": 1xHxW bool, "name": stem}.

Orientation: files are read as stored, ignoring EXIF orientation tags, because
masks are annotated on the stored pixel grid and almost never carry a tag;
letting OpenCV rotate only the photo would misalign it from its mask.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from augment import thicken_mask
from utils import ReportedError

if TYPE_CHECKING:
    import albumentations as A

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # the update check stalls 2 s offline

HEIF_EXTENSIONS = {".heic", ".heif"}   # the iPhone default; decoded by the optional package pillow-heif
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", *HEIF_EXTENSIONS}
MAX_PIXELS = 20000 * 20000  # larger headers are decompression bombs, not photos
READ_FLAGS = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION

Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # our limit, not Pillow's smaller default, decides


class DatasetError(ReportedError):
    """A problem with the user's files; the message names the files and the fix (exit 2)."""


@dataclass
class Sample:
    stem: str
    image: Path
    mask: Path
    roi: Path | None = None


@dataclass
class Intensity:
    """Intensity preprocessing, identical in training, evaluation and prediction."""
    minmax: bool = True
    normalize: tuple[float, float] | None = None
    clahe: bool = False

    @classmethod
    def from_config(cls, config: dict) -> "Intensity":
        """From a config of today's schema (rundir.upgrade_config) or train.py's options."""
        normalize = config["normalize"]
        return cls(minmax=config["minmax"], clahe=config["clahe"], normalize=tuple(normalize) if normalize else None)


# ---------------------------------------------------------------- finding files

def list_datasets(data_dir: Path) -> list[str]:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return []
    return sorted(p.name for p in data_dir.iterdir() if (p / "images").is_dir())


def images_by_stem(folder: Path, problems: list[str], notes: list[str]) -> dict[str, Path]:
    """Image files of a folder keyed by stem; duplicates become problems, other files notes."""
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            notes.append(f"ignored {path} (not an image file)")
            continue
        found.setdefault(path.stem, []).append(path)
    for stem, paths in found.items():
        if len(paths) > 1:
            problems.append(f"duplicate stem {stem!r}: {', '.join(map(str, paths))} "
                            "(keep one file per stem)")
    return {stem: paths[0] for stem, paths in found.items()}


def find_samples(data_dir: Path, name: str, problems: list[str], notes: list[str]) -> list[Sample]:
    """Pair images with masks (and optional rois/) by stem, collecting every problem."""
    root = Path(data_dir) / name
    if not (root / "images").is_dir():
        available = ", ".join(list_datasets(data_dir)) or "none"
        problems.append(f"unknown dataset {name!r}: {root / 'images'} does not exist. Datasets "
                        f"under {data_dir}: {available}. Create one with prepare_data.py")
        return []
    if not (root / "masks").is_dir():
        problems.append(f"{root / 'masks'} does not exist: put one mask per image there")
        return []
    images = images_by_stem(root / "images", problems, notes)
    masks = images_by_stem(root / "masks", problems, notes)
    rois = images_by_stem(root / "rois", problems, notes) if (root / "rois").is_dir() else {}
    if not images:
        problems.append(f"{root / 'images'} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    for stem in sorted(images.keys() - masks.keys()):
        problems.append(f"image without mask: {images[stem]} (add masks/{stem}.png)")
    for stem in sorted(masks.keys() - images.keys()):
        problems.append(f"mask without image: {masks[stem]} (add images/{stem}.jpg or remove it)")
    return [Sample(stem, images[stem], masks[stem], rois.get(stem))
            for stem in sorted(images.keys() & masks.keys())]


# ---------------------------------------------------------------- reading files

def enable_heif(path: Path) -> None:
    """Teach Pillow HEIC/HEIF through pillow-heif, or say which package the photo needs."""
    try:
        import pillow_heif
    except ImportError:
        raise DatasetError(f"{path}: HEIC/HEIF photos need the optional package pillow-heif "
                           "(pip install pillow-heif), or export the photo as JPEG") from None
    pillow_heif.register_heif_opener()


def header_size(path: Path) -> tuple[int, int]:
    """(h, w) from the file's header, without decoding its pixels."""
    if path.suffix.lower() in HEIF_EXTENSIONS:
        enable_heif(path)
    with Image.open(path) as img:
        return img.height, img.width


def read_heif(path: Path) -> np.ndarray:
    """HxWx3 uint8 BGR (OpenCV's order, as read_raw returns), as stored: HEIF's own rotation is part of
    the image, so the photo comes out upright."""
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"))
    return np.ascontiguousarray(rgb[..., ::-1])


def check_header(path: Path) -> None:
    """Refuse unreadable files and absurd dimensions before decoding anything."""
    if path.suffix.lower() in HEIF_EXTENSIONS:
        enable_heif(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Image.DecompressionBombError as err:
        raise DatasetError(f"{path}: refused as a decompression bomb ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"{path}: not a readable image ({err}); re-export or remove it") from None
    if width * height > MAX_PIXELS:
        raise DatasetError(f"{path}: header claims {width}x{height} pixels, more than the "
                           f"{MAX_PIXELS:,} allowed; this is not a photo (decompression bomb?)")
    if path.suffix.lower() in (".jpg", ".jpeg") and not jpeg_is_complete(path):
        raise DatasetError(f"{path}: the JPEG is truncated (no end-of-image marker); "
                           "copy or download it again")


def jpeg_is_complete(path: Path) -> bool:
    """OpenCV decodes a truncated JPEG with a warning and gray rows: look for the end marker."""
    with open(path, "rb") as f:
        f.seek(max(path.stat().st_size - 4096, 0))
        return b"\xff\xd9" in f.read()


def read_raw(path: Path) -> np.ndarray:
    check_header(path)
    if path.suffix.lower() in HEIF_EXTENSIONS:
        return read_heif(path)
    array = cv2.imread(str(path), READ_FLAGS)
    if array is None or array.size == 0:
        raise DatasetError(f"{path}: OpenCV cannot decode it (truncated or corrupt); re-export it")
    return array


def read_image(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB; gray is repeated, alpha dropped, 16-bit scaled to 8-bit."""
    image = read_raw(path)
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DatasetError(f"{path}: unsupported pixel type {image.dtype}; save it as 8-bit")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def binarize_mask(mask: np.ndarray, path: Path) -> np.ndarray:
    """Crack = bright (docs/METHOD.md): {0,1} masks (max 1) use > 0, every other encoding > 127, anti-aliased
    edges included. A maximum between 2 and 127 is a label map, not a mask: refused, never read as empty."""
    if mask.dtype != np.uint8:
        raise DatasetError(f"{path}: mask has {mask.dtype} pixels; save it as an 8-bit "
                           "single-channel PNG with crack = 255")
    if mask.ndim == 3:
        channels = mask[..., :3]
        if not (np.array_equal(channels[..., 0], channels[..., 1])
                and np.array_equal(channels[..., 0], channels[..., 2])):
            return colour_mask(channels, path)
        mask = channels[..., 0]
    top = int(mask.max())
    if 2 <= top <= 127:
        raise DatasetError(f"{path}: mask values go up to {top}, which looks like a label map (class numbers), "
                           "not a crack mask; save crack pixels as 255 (or 1) and the rest as 0")
    return mask > 0 if top == 1 else mask > 127


def colour_mask(bgr: np.ndarray, path: Path) -> np.ndarray:
    """A colour mask as several public pavement datasets ship them: exactly two colours, crack in one
    colour on black (or on white), read as crack = the other colour, as palette_mask reads what the
    annotator saw. Anything else (more colours, JPEG noise, two colours neither black nor white) is
    refused, naming the colours found."""
    codes = (bgr[..., 2].astype(np.int32) << 16) | (bgr[..., 1].astype(np.int32) << 8) | bgr[..., 0]
    colours, inverse = np.unique(codes.ravel(), return_inverse=True)
    background = [i for i, code in enumerate(colours) if code in (0, 0xFFFFFF)]
    if len(colours) == 2 and len(background) == 1:
        return (inverse != background[0]).reshape(codes.shape)
    shown = ", ".join(f"#{code:06x}" for code in colours[:6]) + (", ..." if len(colours) > 6 else "")
    raise DatasetError(f"{path}: a colour mask with {len(colours)} colour{'s' * (len(colours) > 1)} ({shown}); "
                       "crackseg reads a colour mask only as crack in one colour on black or on white. Save it "
                       "as 8-bit gray with crack = 255")


def palette_mask(indices: np.ndarray, palette: list[int], path: Path) -> np.ndarray:
    """A palette (indexed) PNG read by what the annotator saw: of its two used entries, the one that is
    not gray is crack (VOC style: index 1 dark red); if both are gray, the brighter one is."""
    used = np.unique(indices)
    if 255 in used:
        raise DatasetError(f"{path}: palette index 255 is the VOC 'void' label (pixels not to be scored), which "
                           "crackseg cannot honour; paint them as background or crack, or give the region as rois/")
    if len(used) > 2:
        raise DatasetError(f"{path}: {len(used)} palette entries are used; a crack mask has two "
                           "(background and crack): save it as 8-bit gray with crack = 255")
    colours = np.array(palette + [0] * (768 - len(palette))).reshape(256, 3)[used]
    gray = colours.min(1) == colours.max(1)
    if len(used) == 2 and np.array_equal(colours[0], colours[1]):
        raise DatasetError(f"{path}: both used palette entries show the colour {colours[0].tolist()}, so crack "
                           "and background look alike; save it as 8-bit gray with crack = 255")
    if gray.all():
        crack = used[colours[:, 0] == colours[:, 0].max()] if len(used) == 2 else used[colours[:, 0] > 127]
    elif (~gray).sum() == 1:
        crack = used[~gray]
    else:
        raise DatasetError(f"{path}: both used palette entries are coloured {colours.tolist()}, so neither "
                           "reads as background; save it as 8-bit gray with crack = 255")
    return np.isin(indices, crack)


def read_mask(path: Path) -> np.ndarray:
    """HxW bool crack mask."""
    raw = read_raw(path)
    with Image.open(path) as img:
        if img.mode == "P":
            return palette_mask(np.asarray(img), img.getpalette() or [], path)
    return binarize_mask(raw, path)


def read_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    image, mask = read_image(sample.image), read_mask(sample.mask)
    roi = read_mask(sample.roi) if sample.roi else None
    for other, path in ((mask, sample.mask), (roi, sample.roi)):
        if other is not None and other.shape != image.shape[:2]:
            raise DatasetError(f"size mismatch: {sample.image} is {image.shape[1]}x{image.shape[0]}"
                               f" but {path} is {other.shape[1]}x{other.shape[0]}")
    return image, mask, roi


def scan_dataset(data_dir: Path, name: str, keep: bool = False) -> tuple[list[Sample], list, list[str]]:
    """Read and check every file once; raise one DatasetError listing every problem.

    Returns (samples, decoded arrays if keep else [], notes)."""
    problems: list[str] = []
    notes: list[str] = []
    samples = find_samples(data_dir, name, problems, notes)
    decoded, crack_pixels = [], 0
    for sample in samples:
        try:
            arrays = read_sample(sample)
        except DatasetError as err:
            problems.append(str(err))
            continue
        crack_pixels += int(arrays[1].sum())
        if keep:
            decoded.append(arrays)
    if samples and not problems and crack_pixels == 0:
        problems.append(f"no mask under {Path(data_dir) / name / 'masks'} has a crack pixel: "
                        "cracks must be the bright pixels (255, or 1 in {0,1} masks)")
    if problems:
        raise DatasetError(f"dataset {name} under {data_dir} has {len(problems)} problem(s):\n  "
                           + "\n  ".join(problems))
    return samples, decoded, notes


# ---------------------------------------------------------------- preprocessing

def preprocess(image: np.ndarray, intensity: Intensity, name: str) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 HxWx3: CLAHE, then [0,1] scaling, then normalisation."""
    if intensity.clahe:
        lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
        lab[..., 0] = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(lab[..., 0])
        image = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    x = image.astype(np.float32)
    low, high = float(x.min()), float(x.max())
    if high == 0 or (intensity.minmax and high == low):
        raise DatasetError(f"{name}: the image is constant ({low:.0f}) and would be all zeros "
                           "after preprocessing; remove it")
    # One global min and max per image (not per channel), as the reference's MinMaxScaler did.
    x = (x - low) / (high - low) if intensity.minmax else x / 255.0
    if intensity.normalize:
        mean, std = intensity.normalize
        x = (x - mean) / std
    return x


class CrackDataset(Dataset):
    """Training items (transform given) are random crops; evaluation items are full images.

    `photo` changes the uint8 photo before preprocessing; `transform` (geometric) moves the
    preprocessed image and its mask together."""

    def __init__(self, samples: list[Sample], intensity: Intensity, transform: A.Compose | None = None,
                 decoded: list | None = None, photo: A.Compose | None = None, thicken: list[int] | None = None,
                 fill=None):
        self.samples = samples
        self.intensity = intensity
        self.transform = transform
        self.photo = photo
        self.decoded = decoded  # cached (image, mask, roi) arrays, or None to read each time
        self.thicken = thicken  # per sample: dilate its mask by this many pixels (0: as labelled)
        self.fill = fill        # training only: (index, image, mask) -> a larger photo (crops.TileMosaic)

    def __len__(self) -> int:
        return len(self.samples)

    def image_sizes(self) -> list[tuple[int, int]]:
        """(h, w) of every image, from the cache or the file's header."""
        if self.decoded:
            return [image.shape[:2] for image, _, _ in self.decoded]
        return [header_size(s.image) for s in self.samples]

    def reseed(self, seed: int) -> None:
        """albumentations 2.x seeds its RNG once in Compose: every worker must reseed.

        Not with Compose.set_random_seed: it gives every transform its own generator with
        the SAME seed, so e.g. both flips always fire together. One shared pair instead."""
        rngs = (np.random.default_rng(seed), random.Random(seed))
        if self.fill is not None:
            self.fill.rng = np.random.default_rng([seed, 1])
        for transform in (self.transform, self.photo):
            if transform is not None:
                transform.set_random_state(*rngs)

    def append(self, samples: list[Sample], decoded: list) -> None:
        """More cached items after the photos (crops.add_negatives' windows), their masks as given."""
        self.samples, self.decoded = [*self.samples, *samples], [*self.decoded, *decoded]
        if self.thicken:
            self.thicken = [*self.thicken, *[0] * len(samples)]

    def labelled(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(image, mask, roi) of one photo as read, its mask thickened as asked."""
        image, mask, roi = self.decoded[index] if self.decoded else read_sample(self.samples[index])
        if self.thicken and self.thicken[index]:
            mask = thicken_mask(mask, self.thicken[index])
        return image, mask, roi

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image, mask, roi = self.labelled(index)
        if self.fill is not None and self.transform is not None:
            image, mask = self.fill(index, image, mask)
        if self.photo is not None:
            image = self.photo(image=image)["image"]
        x = preprocess(image, self.intensity, str(sample.image))
        y = mask.astype(np.float32)
        item = {"name": sample.stem}
        if self.transform is not None:
            out = self.transform(image=x, mask=y)
            x, y = out["image"], out["mask"]
        else:
            item["roi"] = torch.from_numpy(np.ones_like(mask) if roi is None else roi)[None]
        item["image"] = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
        item["mask"] = torch.from_numpy(np.ascontiguousarray(y))[None]
        return item


class EpochSampler(torch.utils.data.Sampler):
    """The training indices of one epoch (`length` crops, by default as many as training images) for one rank.

    The training set is the datasets' images one after another (`sizes` of them each).
    "proportional": every image once per pass, shuffled. "equal": each dataset gives the same number of
    crops, its images drawn in shuffled passes (a small dataset is repeated, a large one sampled).
    "group": each group of datasets (`groups`: a group number per dataset, e.g. one source's three
    zooms) gives the same number of crops, shared equally by its datasets.
    The order depends on (seed, epoch) only, identical on every rank, which takes its own share."""

    def __init__(self, sizes: list[int], policy: str = "proportional", seed: int = 0, rank: int = 0, world: int = 1,
                 length: int | None = None, groups: list[int] | None = None):
        self.sizes, self.policy, self.seed, self.rank, self.world = list(sizes), policy, seed, rank, world
        self.groups = list(groups) if policy == "group" and groups else list(range(len(self.sizes)))
        self.epoch = 0
        self.length = length or sum(self.sizes)
        self.per_rank = self.length // world if self.length >= world else 1   # the tail that does not divide is dropped

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def crops_per_dataset(self) -> list[int]:
        """How many of an epoch's crops each dataset gives under "equal" and "group"."""
        n, names = self.length, sorted(set(self.groups))
        per_group = {g: n // len(names) + (k < n % len(names)) for k, g in enumerate(names)}
        crops = []
        for i, g in enumerate(self.groups):
            members = [j for j, h in enumerate(self.groups) if h == g]
            share, k = per_group[g], members.index(i)
            crops.append(share // len(members) + (k < share % len(members)))
        return crops

    def epoch_indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        n, total = self.length, sum(self.sizes)
        if self.policy == "proportional":
            return shuffled_passes(rng, total, n)
        starts = np.cumsum([0, *self.sizes[:-1]])
        drawn = [start + shuffled_passes(rng, size, m)
                 for start, size, m in zip(starts, self.sizes, self.crops_per_dataset(), strict=True) if m]
        return rng.permutation(np.concatenate(drawn))

    def __iter__(self):
        indices = np.resize(self.epoch_indices(), self.per_rank * self.world)
        return iter(indices[self.rank::self.world].tolist())

    def __len__(self) -> int:
        return self.per_rank


def shuffled_passes(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """n indices below size: whole shuffled passes, the last one cut short."""
    return np.concatenate([rng.permutation(size) for _ in range(-(-n // size))])[:n]


def split_ids(stems: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Sorted, seeded train/validation split (sorting makes it independent of listing order).

    The validation set is the first ceil(fraction * n) of a RandomState(seed) permutation, the split
    scikit-learn's train_test_split draws (tests/test_dataset.py checks they agree), so every run
    and recorded benchmark keeps its images, without a second of scikit-learn import at start-up."""
    stems = sorted(stems)
    if val_fraction == 0:
        return stems, []
    if len(stems) < 2:
        raise DatasetError(f"a dataset needs at least 2 images to split, found {len(stems)}")
    n_val = math.ceil(val_fraction * len(stems))
    if n_val >= len(stems):
        raise DatasetError(f"--val-split {val_fraction:g} of {len(stems)} images leaves none to train on: "
                           "lower it or add images")
    order = np.random.RandomState(seed).permutation(len(stems))
    return sorted(stems[i] for i in order[n_val:]), sorted(stems[i] for i in order[:n_val])
