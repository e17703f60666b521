import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from augment import CAMERA_PARTS, photo_transform, train_transform
from dataset import (CrackDataset, DatasetError, EpochSampler, Intensity, Sample,
                     preprocess, read_image, read_mask, scan_dataset, split_ids)
from synthetic import synthetic_pair
from training import seed_worker

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CRACK = np.zeros((6, 8), bool)
CRACK[2, 1:7] = True
CRACK[1:5, 4] = True


def write_mask(path: Path, encoding: str) -> Path:
    if encoding == "1-bit png":
        Image.fromarray(CRACK).convert("1").save(path)
    elif encoding == "{0,1} png":
        cv2.imwrite(str(path), CRACK.astype(np.uint8))
    elif encoding == "{0,255} png":
        cv2.imwrite(str(path), CRACK.astype(np.uint8) * 255)
    elif encoding == "anti-aliased png":   # crack 200-255, halo 1-127 around it
        soft = np.where(CRACK, 230, 0).astype(np.uint8)
        halo = cv2.dilate(CRACK.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~CRACK
        soft[halo] = 90
        cv2.imwrite(str(path), soft)
    elif encoding == "24-bit gray bmp":
        cv2.imwrite(str(path), np.repeat(CRACK.astype(np.uint8)[..., None] * 255, 3, axis=2))
    elif encoding == "palette, crack dark red (VOC)":
        write_palette(path, CRACK.astype(np.uint8), [(0, 0, 0), (128, 0, 0)])
    elif encoding == "palette, crack index 0 white on index 1 black":
        write_palette(path, (~CRACK).astype(np.uint8), [(255, 255, 255), (0, 0, 0)])
    elif encoding == "palette, crack index 7 light gray":
        write_palette(path, np.where(CRACK, 7, 3).astype(np.uint8), [(0, 0, 0)] * 3 + [(40, 40, 40)] +
                      [(0, 0, 0)] * 3 + [(200, 200, 200)])
    return path


def write_palette(path: Path, indices: np.ndarray, colours: list[tuple[int, int, int]]) -> Path:
    image = Image.fromarray(indices, mode="P")
    image.putpalette([c for colour in colours for c in colour])
    image.save(path)
    assert Image.open(path).mode == "P"
    return path


@pytest.mark.parametrize("encoding", ["1-bit png", "{0,1} png", "{0,255} png", "anti-aliased png",
                                      "24-bit gray bmp", "palette, crack dark red (VOC)",
                                      "palette, crack index 0 white on index 1 black",
                                      "palette, crack index 7 light gray"])
def test_every_mask_encoding_binarises_to_the_same_crack(tmp_path, encoding):
    suffix = ".bmp" if "bmp" in encoding else ".png"
    mask = read_mask(write_mask(tmp_path / f"m{suffix}", encoding))
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, CRACK)


@pytest.mark.parametrize("crack_rgb, background_rgb", [((255, 0, 0), (0, 0, 0)), ((0, 255, 0), (0, 0, 0)),
                                                    ((0, 0, 255), (255, 255, 255)), ((255, 0, 255), (0, 0, 0))])
def test_two_colour_masks_read_crack_as_the_colour_that_is_not_black_or_white(tmp_path, crack_rgb, background_rgb):
    colour = np.zeros((6, 8, 3), np.uint8)
    colour[:] = background_rgb[::-1]                           # OpenCV writes BGR
    colour[CRACK] = crack_rgb[::-1]
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    np.testing.assert_array_equal(read_mask(tmp_path / "colour.png"), CRACK)


@pytest.mark.parametrize("case", ["three colours", "two colours, neither black nor white", "one colour"])
def test_other_colour_masks_are_refused_naming_the_colours(tmp_path, case):
    colour = np.zeros((6, 8, 3), np.uint8)
    colour[..., 2] = 200                                       # red #c80000 everywhere
    if case != "one colour":
        colour[CRACK] = (0, 255, 0)                            # green crack
    if case == "three colours":
        colour[0, 0] = 0                                       # and one black pixel
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    with pytest.raises(DatasetError, match=r"colour.png: a colour mask with \d colours? \(.*#c80000"):
        read_mask(tmp_path / "colour.png")


def test_16_bit_masks_are_refused_with_the_file_name(tmp_path):
    cv2.imwrite(str(tmp_path / "deep.png"), CRACK.astype(np.uint16) * 65535)
    with pytest.raises(DatasetError, match="deep.png.*uint16"):
        read_mask(tmp_path / "deep.png")


@pytest.mark.parametrize("top", [2, 3, 127])
def test_label_maps_are_refused_not_read_as_empty(tmp_path, top):
    labels = np.where(CRACK, top, 0).astype(np.uint8)   # e.g. CrackForest's {0, 1, 2} classes
    labels[0, 0] = 1
    cv2.imwrite(str(tmp_path / "labels.png"), labels)
    with pytest.raises(DatasetError, match=f"labels.png.*up to {top}.*label map"):
        read_mask(tmp_path / "labels.png")
    cv2.imwrite(str(tmp_path / "soft.png"), np.where(CRACK, 128, 0).astype(np.uint8))
    np.testing.assert_array_equal(read_mask(tmp_path / "soft.png"), CRACK)   # max 128: > 127 holds


@pytest.mark.parametrize("indices, colours, message", [
    (np.where(CRACK, 1, 255), [(0, 0, 0), (128, 0, 0)] + [(0, 0, 0)] * 253 + [(224, 224, 192)], "void"),
    (np.where(CRACK, 1, 2), [(0, 0, 0), (128, 0, 0), (0, 128, 0)], "both used palette entries are coloured"),
    (np.where(CRACK, 0, 1), [(9, 9, 9), (9, 9, 9)], "look alike"),
    (np.arange(48).reshape(6, 8) % 3, [(0, 0, 0), (128, 0, 0), (0, 128, 0)], "3 palette entries"),
])
def test_palette_masks_that_cannot_be_read_are_refused(tmp_path, indices, colours, message):
    path = write_palette(tmp_path / "p.png", indices.astype(np.uint8), colours)
    with pytest.raises(DatasetError, match=f"p.png.*{message}"):
        read_mask(path)


def test_gray_and_rgba_images_become_rgb(tmp_path):
    cv2.imwrite(str(tmp_path / "g.png"), np.full((5, 7), 100, np.uint8))
    cv2.imwrite(str(tmp_path / "a.png"), np.dstack([np.full((5, 7), v, np.uint8) for v in (10, 20, 30, 255)]))
    assert read_image(tmp_path / "g.png").shape == (5, 7, 3)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png")[0, 0], [30, 20, 10])  # BGR(A) -> RGB


def test_preprocess_scales_by_one_global_min_and_max_and_normalises():
    image = np.zeros((2, 2, 3), np.uint8)
    image[0, 0] = (50, 100, 150)
    image[1, 1] = (250, 250, 250)
    x = preprocess(image, Intensity(minmax=True), "x")
    assert x[1, 1].tolist() == [1, 1, 1] and x[0, 1].tolist() == [0, 0, 0]
    assert x[0, 0].tolist() == pytest.approx([0.2, 0.4, 0.6])          # not per-channel
    plain = preprocess(image, Intensity(minmax=False, normalize=(0.5, 0.25)), "x")
    assert plain[0, 0, 0] == pytest.approx((50 / 255 - 0.5) / 0.25)
    with pytest.raises(DatasetError, match="constant"):
        preprocess(np.zeros((4, 4, 3), np.uint8), Intensity(), "black.png")


def test_pairing_detects_extensions_in_any_case(tmp_path):
    root = tmp_path / "D"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    cv2.imwrite(str(root / "images" / "a.JPG"), np.full((6, 8, 3), 120, np.uint8))
    cv2.imwrite(str(root / "images" / "b.png"), np.full((6, 8, 3), 120, np.uint8))
    write_mask(root / "masks" / "a.bmp", "24-bit gray bmp")
    write_mask(root / "masks" / "b.PNG", "{0,1} png")
    (root / "images" / "notes.txt").write_text("not an image")
    samples, _, notes = scan_dataset(tmp_path, "D")
    assert [(s.stem, s.image.suffix, s.mask.suffix) for s in samples] == [("a", ".JPG", ".bmp"), ("b", ".png", ".PNG")]
    assert any("notes.txt" in n for n in notes)


@pytest.mark.parametrize("scale_aug", [False, True])
def test_augmentation_keeps_image_and_mask_aligned(scale_aug):
    rng = np.random.default_rng(0)
    mask = np.zeros((100, 140), np.float32)
    for _ in range(6):
        x0, y0, x1, y1 = rng.integers(0, 140), rng.integers(0, 100), rng.integers(0, 140), rng.integers(0, 100)
        cv2.line(mask, (int(x0), int(y0)), (int(x1), int(y1)), 1.0, 5)
    image = np.repeat(mask[..., None], 3, axis=2)         # the image IS the mask, so they must stay equal
    transform = train_transform(64, scale_aug=scale_aug)
    transform.set_random_seed(3)
    for _ in range(20):
        out = transform(image=image, mask=mask)
        agree = ((out["image"][..., 0] > 0.5) == (out["mask"] > 0.5)).mean()
        assert out["mask"].shape == (64, 64)
        assert agree >= (0.97 if scale_aug else 1.0)   # interpolation may shift an edge pixel when scaling


def test_photometric_changes_the_uint8_photo_before_scaling(tmp_path):
    """On scaled floats albumentations clipped to [0, 1]: every below-mean value of a --normalize input became 0."""
    image, mask = synthetic_pair(np.random.default_rng(0), 96, 128)
    cv2.imwrite(str(tmp_path / "i.png"), image)
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    mean, std = 0.5, 0.135
    data = CrackDataset([Sample("i", tmp_path / "i.png", tmp_path / "m.png")] * 6, Intensity(minmax=False,
                        normalize=(mean, std)), train_transform(64), photo=photo_transform(True))
    data.reseed(0)
    plain = CrackDataset(data.samples, data.intensity, train_transform(64))
    plain.reseed(0)
    changed = 0
    for i in range(6):
        x = data[i]["image"].numpy()
        levels = (x * std + mean) * 255   # the uint8 values the network input was scaled from
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
        assert x.min() < 0   # below-mean pixels survive (clipping at 0 left x >= 0)
        changed += not np.array_equal(x, plain[i]["image"].numpy())
    assert changed >= 4


def test_small_images_are_padded_up_to_the_crop():
    out = train_transform(64)(image=np.ones((40, 30, 3), np.float32), mask=np.ones((40, 30), np.float32))
    assert out["image"].shape == (64, 64, 3) and out["mask"].sum() == 40 * 30


def test_split_is_sorted_seeded_and_independent_of_listing_order():
    stems = [f"img{i:03d}" for i in range(50)]
    train, val = split_ids(stems, 0.1, seed=0)
    assert len(val) == 5 and sorted(train + val) == stems and not set(train) & set(val)
    assert split_ids(list(reversed(stems)), 0.1, seed=0) == (train, val)
    assert split_ids(stems, 0.1, seed=1)[1] != val


def test_split_draws_the_images_scikit_learns_train_test_split_drew():
    """Runs trained before the split stopped importing scikit-learn keep their validation images."""
    from sklearn.model_selection import train_test_split
    for n in (2, 3, 7, 12, 30, 97, 300):
        stems = [f"s{i:03d}" for i in range(n)]
        for fraction in (0.1, 0.25, 0.3, 0.5):
            for seed in (0, 1, 7):
                train, val = train_test_split(stems, test_size=fraction, random_state=seed)
                assert split_ids(stems, fraction, seed) == (sorted(train), sorted(val)), (n, fraction, seed)


def test_a_split_that_leaves_nothing_to_train_on_is_refused():
    with pytest.raises(DatasetError, match="leaves none to train on"):
        split_ids(["a", "b"], 0.6, seed=0)


def test_two_workers_and_two_epochs_see_different_crops(tmp_path):
    image, mask = synthetic_pair(np.random.default_rng(0), 200, 300)   # ~360k possible crops
    cv2.imwrite(str(tmp_path / "i.png"), image)
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    data = CrackDataset([Sample("i", tmp_path / "i.png", tmp_path / "m.png")] * 8, Intensity(),
                        train_transform(32))   # one image, eight times: only the random streams differ
    torch.manual_seed(0)
    cv2.setNumThreads(1)   # as train.py does before forking workers (a live OpenCV pool can deadlock them)
    loader = DataLoader(data, batch_size=1, num_workers=2, worker_init_fn=seed_worker, persistent_workers=True)
    crops = [batch["image"].numpy().tobytes() for _ in range(2) for batch in loader]
    assert len(crops) == 16 and len(set(crops)) == 16


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
@pytest.mark.parametrize("name", ["DEEPCRACK_TRAIN", "DEEPCRACK_TEST", "CFD"])
def test_every_real_file_loads_with_binary_non_empty_masks(name):
    samples, decoded, _ = scan_dataset(SHARED, name, keep=True)
    assert len(samples) == {"DEEPCRACK_TRAIN": 300, "DEEPCRACK_TEST": 237, "CFD": 118}[name]
    empty = [s.stem for s, (_, mask, _) in zip(samples, decoded, strict=True) if not mask.any()]
    assert not empty
    item = CrackDataset(samples[:1], Intensity())[0]
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0} and item["mask"].shape[0] == 1
    assert isinstance(samples[0], Sample)


def test_reseeding_draws_all_eight_orientations(tmp_path):
    """Compose.set_random_seed would give both flips the same stream: only 4 orientations."""
    image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    cv2.imwrite(str(tmp_path / "i.png"), image)
    cv2.imwrite(str(tmp_path / "m.png"), np.zeros((32, 32), np.uint8))
    data = CrackDataset([Sample("i", tmp_path / "i.png", tmp_path / "m.png")], Intensity(), train_transform(32))
    data.reseed(0)
    assert len({data[0]["image"].numpy().tobytes() for _ in range(100)}) == 8


def test_thickened_labels_widen_a_centre_line_by_twice_the_radius_for_their_samples_only(tmp_path):
    mask = np.zeros((40, 48), np.uint8)
    mask[20, 5:43] = 255                                     # a 1-pixel centre line
    cv2.imwrite(str(tmp_path / "i.png"), np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    sample = Sample("i", tmp_path / "i.png", tmp_path / "m.png")
    data = CrackDataset([sample, sample], Intensity(), thicken=[0, 2])
    plain, thick = (data[i]["mask"][0].numpy() > 0 for i in (0, 1))
    assert plain.sum() == 38 and np.array_equal(plain, mask > 0)
    assert thick[:, 24].sum() == 5 and thick[18:23, 24].all()   # width 1 + 2 * 2 across the line
    assert thick[plain].all() and set(np.unique(data[1]["mask"]).tolist()) == {0.0, 1.0}


# ---------------------------------------------------------------- several datasets, camera augmentation

@pytest.mark.parametrize("world", [1, 2])
def test_proportional_sampling_shows_every_image_once_per_epoch(world):
    sizes = [7, 3, 12]
    epochs = []
    for epoch in (1, 2):
        shares = []
        for rank in range(world):
            sampler = EpochSampler(sizes, "proportional", seed=5, rank=rank, world=world)
            sampler.set_epoch(epoch)
            shares.append(list(sampler))
            assert len(shares[-1]) == len(sampler) == 22 // world
        epochs.append(sorted(i for share in shares for i in share))
        assert epochs[-1] == list(range(22))                 # the ranks partition the epoch
    again = EpochSampler(sizes, "proportional", seed=5)
    again.set_epoch(1)
    first = EpochSampler(sizes, "proportional", seed=5)
    first.set_epoch(1)
    other = EpochSampler(sizes, "proportional", seed=5)
    other.set_epoch(2)
    assert list(again) == list(first) != list(other)          # (seed, epoch) decides the order


def test_equal_sampling_draws_the_same_number_of_crops_from_each_dataset():
    sizes = [40, 5, 15]                                       # an epoch is 60 crops: 20 from each
    sampler = EpochSampler(sizes, "equal", seed=0)
    bounds = np.cumsum([0, *sizes])
    for epoch in range(3):
        sampler.set_epoch(epoch)
        indices = np.array(list(sampler))
        per_dataset = np.histogram(indices, bins=bounds)[0]
        assert per_dataset.tolist() == [20, 20, 20]
        small = np.bincount(indices[(indices >= 40) & (indices < 45)] - 40, minlength=5)
        assert small.tolist() == [4] * 5                      # the small set in whole shuffled passes
        assert len(set(indices[indices < 40].tolist())) == 20  # the large one sampled without repeats


def test_group_sampling_gives_each_group_the_same_crops_shared_by_its_datasets():
    sizes = [30, 10, 10, 10, 6]                               # groups: A; B = datasets 1-3 (one source); C
    sampler = EpochSampler(sizes, "group", seed=0, length=66, groups=[0, 1, 1, 1, 2])
    assert sampler.crops_per_dataset() == [22, 8, 7, 7, 22]   # 22 crops a group, B's split over its three
    bounds = np.cumsum([0, *sizes])
    indices = np.array(list(sampler))
    assert np.histogram(indices, bins=bounds)[0].tolist() == [22, 8, 7, 7, 22]
    equal = EpochSampler(sizes, "equal", seed=0, length=66)
    assert equal.crops_per_dataset() == [14, 13, 13, 13, 13]   # equal: every dataset its own group
    same = EpochSampler(sizes, "group", seed=0, length=66, groups=[0, 1, 2, 3, 4])
    assert list(same) == list(equal)                           # one dataset a group is "equal", draw for draw


def test_groups_name_datasets_of_the_run_and_need_group_sampling():
    import train
    from trainoptions import Loading
    args = train.get_args(["--dataset", "A", "X4", "X8", "--sampling", "group", "--groups", "X=X4,X8"])
    assert Loading.from_options(vars(args)).group_numbers() == [1, 0, 0]
    for bad in (["--groups", "X=X4,X9", "--sampling", "group"], ["--groups", "X=X4,X8"],
                ["--groups", "X=X4", "Y=X4", "--sampling", "group"]):
        with pytest.raises(SystemExit):
            train.get_args(["--dataset", "A", "X4", "X8", *bad])


@pytest.mark.parametrize("policy", ["proportional", "equal"])
def test_an_epoch_size_repeats_a_few_images_in_whole_shuffled_passes(policy):
    sizes = [3, 2]                                            # 5 images, 23 crops an epoch
    sampler = EpochSampler(sizes, policy, seed=1, length=23)
    indices = np.array(list(sampler))
    assert len(sampler) == len(indices) == 23
    counts = np.bincount(indices, minlength=5)
    if policy == "proportional":                               # 4 whole passes and 3 of the fifth
        assert sorted(counts.tolist()) == [4, 4, 5, 5, 5] and sorted(indices[:5]) == [0, 1, 2, 3, 4]
    else:                                                      # 12 and 11 crops, each set in passes
        assert counts[:3].sum() == 12 and counts[3:].sum() == 11
        assert counts[:3].tolist() == [4, 4, 4] and sorted(counts[3:].tolist()) == [5, 6]
    default = EpochSampler(sizes, policy, seed=1)
    assert len(default) == 5


@pytest.mark.parametrize("scale_aug", [False, True])
def test_camera_scale_keeps_image_and_mask_aligned_and_binary(scale_aug):
    """The geometric part of --camera-aug (random scale 0.5-2): the mask follows the image."""
    image, mask = synthetic_pair(np.random.default_rng(4), 160, 200)
    image = np.repeat((mask > 0)[..., None] * 200 + 20, 3, axis=2).astype(np.float32) / 255
    target = (mask > 0).astype(np.float32)
    transform = train_transform(64, scale_aug=scale_aug, camera_scale=True)
    transform.set_random_seed(7)
    for _ in range(20):
        out = transform(image=image, mask=target)
        assert set(np.unique(out["mask"]).tolist()) <= {0.0, 1.0}
        agree = ((out["image"][..., 0] > 0.5) == (out["mask"] > 0.5)).mean()
        assert agree >= 0.97                                   # interpolation may move an edge pixel


@pytest.mark.parametrize("part", [p for p in CAMERA_PARTS if p != "scale"])
def test_each_photo_part_of_camera_aug_changes_the_uint8_photo_only(tmp_path, part):
    image, mask = synthetic_pair(np.random.default_rng(1), 96, 128)
    cv2.imwrite(str(tmp_path / "i.png"), image)
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    transform = photo_transform(camera=(part,))
    transform.set_random_state(np.random.default_rng(0), random.Random(0))   # one stream, as CrackDataset.reseed
    rgb = read_image(tmp_path / "i.png")
    outs = [transform(image=rgb)["image"] for _ in range(30)]
    assert all(o.dtype == np.uint8 and o.shape == rgb.shape for o in outs)
    assert any(not np.array_equal(o, rgb) for o in outs)
    data = CrackDataset([Sample("i", tmp_path / "i.png", tmp_path / "m.png")] * 4, Intensity(), train_transform(64),
                        photo=transform)
    data.reseed(0)
    for item in (data[i] for i in range(4)):
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1   # min-max scaled after


def test_a_dataset_of_webp_photos_is_read(tmp_path):
    from dataset import scan_dataset
    root = tmp_path / "PHONE"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rgb = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "images" / "a.webp", lossless=True)
    cv2.imwrite(str(root / "masks" / "a.png"), CRACK.astype(np.uint8) * 255)
    samples, decoded, _ = scan_dataset(tmp_path, "PHONE", keep=True)
    assert [s.image.name for s in samples] == ["a.webp"]
    np.testing.assert_array_equal(decoded[0][0], rgb)          # lossless WebP: the same RGB pixels
