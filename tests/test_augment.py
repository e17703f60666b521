"""--scale-aug-range: each crop seen from a drawn distance, by the zoom rule benchmarks/zoom.py scores with."""
import random

import numpy as np
import pytest

from augment import ZoomCrop, padding_share, train_transform, zoom_frame
from measure import crack_widths, skeletonize


def band_pair(h: int, w: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A dark vertical band `width` px wide on a light image; the image's first channel IS the mask's negative."""
    mask = np.zeros((h, w), np.float32)
    mask[:, w // 2 - width // 2: w // 2 - width // 2 + width] = 1
    image = np.repeat((1 - mask)[..., None], 3, axis=2)
    return image, mask


def fixed_zoom(z: float, crop: int = 64, seed: int = 0) -> ZoomCrop:
    transform = train_transform(crop, zoom_range=(z, z))
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return transform


def median_width(mask: np.ndarray) -> float:
    mask = mask > 0.5
    return float(np.median(crack_widths(mask, skeletonize(mask))))


@pytest.mark.parametrize(("z", "width"), [(2.0, 4), (0.5, 8), (3.0, 3)])
def test_a_zoomed_crop_draws_the_band_z_times_as_wide(z, width):
    image, mask = band_pair(400, 400, width)
    transform = fixed_zoom(z)
    for _ in range(5):
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (64, 64, 3) and out["mask"].shape == (64, 64)
        assert set(np.unique(out["mask"])) <= {0.0, 1.0}
        if out["mask"].any():
            assert abs(median_width(out["mask"]) - z * width) <= 1


def test_mirrored_padding_keeps_labels_true_on_a_small_image():
    image, mask = band_pair(40, 30, 4)
    transform = fixed_zoom(0.25)   # a 256 px square from a 40 x 30 image: mostly mirrored
    for _ in range(5):
        out = transform(image=image, mask=mask)
        dark = out["image"][..., 0] <= 0.5 + 1e-6   # the mask keeps pixels at least half crack
        assert out["mask"].sum() > 0 and ((out["mask"] > 0.5) == dark).mean() >= 0.97


def test_padding_share_is_zero_for_large_images_and_exact_for_a_fixed_zoom():
    assert padding_share([(1000, 1000)], 256, (0.5, 2.0)) == 0
    assert padding_share([(256, 256)], 256, (0.5, 0.5)) == pytest.approx(0.75)         # 512 px square
    assert padding_share([(256, 512)], 256, (0.5, 0.5)) == pytest.approx(0.5)          # either way round
    wide = padding_share([(300, 300)], 256, (0.25, 4.0))
    assert 0 < wide < padding_share([(300, 300)], 256, (0.125, 4.0))


def test_a_zoom_crop_is_reproducible_from_its_seed():
    image, mask = band_pair(200, 300, 5)
    rng = np.random.default_rng(1)
    image = image * rng.uniform(0.8, 1, image.shape).astype(np.float32)
    first = train_transform(64, scale_aug=True, zoom_range=(0.25, 4))
    again = train_transform(64, scale_aug=True, zoom_range=(0.25, 4))
    for t in (first, again):
        t.set_random_state(np.random.default_rng(7), random.Random(7))
    for _ in range(4):
        a, b = first(image=image, mask=mask), again(image=image, mask=mask)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])


def test_train_refuses_a_reversed_range():
    from train import get_args
    with pytest.raises(SystemExit) as exit_info:
        get_args(["--dataset", "X", "--scale-aug-range", "2", "0.5"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("z", [0.5, 1.0, 2.0, 4.0])
def test_the_camera_zoom_keeps_the_frame_and_draws_cracks_z_times_as_wide(z):
    image = np.random.default_rng(0).integers(0, 256, (96, 160, 3)).astype(np.uint8)
    mask = np.zeros((96, 160), bool)
    mask[:, 40:44] = True    # a 4 px crack at the photo's left side
    roi = np.ones_like(mask)
    photo, (zoomed, region) = zoom_frame(image, [mask, roi], z, np.random.default_rng(3))
    expected = (96, 160) if z >= 1 else (48, 80)   # zooming in keeps the frame; out shrinks the photo
    assert photo.shape[:2] == zoomed.shape == region.shape == expected
    assert median_width(zoomed) == pytest.approx(4 * z, abs=0.5)
    assert zoomed.any() and region.all()           # aimed at the crack, although it is off-centre
    again, (same, _) = zoom_frame(image, [mask, roi], z, np.random.default_rng(3))
    assert np.array_equal(again, photo) and np.array_equal(same, zoomed)   # the window is the seed's
