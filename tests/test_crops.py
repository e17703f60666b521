"""crops.py: small tiles laid in a mosaic of their own dataset, mined crack-free negatives, and the
sampler that gives the negatives their share; train.py runs with both."""
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from crops import (CLEARANCE, TileMosaic, WithNegatives, add_negatives, dark_lines, hardest_window,
                   mine_negatives, mosaic_members, mosaic_side)
from dataset import CrackDataset, EpochSampler, Intensity, Sample
from test_train import TINY, run


def tiles(count: int, size: tuple[int, int], first_value: int) -> list[tuple]:
    """Tiles of one flat value each (first_value, first_value + 1, ...), each mask marking its left column."""
    found = []
    for k in range(count):
        image = np.full((*size, 3), first_value + k, np.uint8)
        mask = np.zeros(size, np.uint8)
        mask[:, 0] = 1
        found.append((image, mask, None))
    return found


def test_a_small_tile_becomes_a_mosaic_of_its_own_dataset_with_its_labels_in_place():
    decoded = tiles(5, (40, 40), 10) + tiles(3, (100, 100), 200)    # two datasets: small tiles, large photos
    mosaic = TileMosaic(lambda i: decoded[i], mosaic_members([5, 3], 0, tiles=True), crop=64, side=64)
    mosaic.rng = np.random.default_rng(0)
    for index in range(5):
        image, mask = mosaic(index, *decoded[index][:2])
        assert image.shape[:2] == mask.shape == (80, 80)            # two tiles each way: at least the crop
        cells = {int(image[y, x, 0]) for y in (0, 40) for x in (0, 40)}
        assert cells <= set(range(10, 15)) and 10 + index in cells  # only its own dataset, itself in a cell
        assert (mask[:, [0, 40]] == 1).all() and mask.sum() == 2 * 80  # every tile's label where its pixels went
    large = decoded[6]
    image, mask = mosaic(6, *large[:2])
    assert image is large[0] and mask is large[1]                    # at least the crop: as it is
    mosaic.members = mosaic_members([5, 3], 0, tiles=False)
    assert mosaic(0, *decoded[0][:2])[0] is decoded[0][0]             # --small-tiles pad: photos as they are


def test_mined_negatives_are_laid_only_with_each_other():
    members = mosaic_members([2, 3], 4, tiles=False)
    assert members[:5] == [None] * 5 and members[5:] == [[5, 6, 7, 8]] * 4
    assert mosaic_members([2], 1, tiles=True) == [[0, 1], [0, 1], [2]]


def test_a_partner_of_another_orientation_is_turned_and_one_of_another_size_resized():
    decoded = [(np.zeros((30, 50, 3), np.uint8), np.zeros((30, 50), np.uint8), None),
               (np.full((50, 30, 3), 7, np.uint8), np.ones((50, 30), np.uint8), None),
               (np.full((20, 20, 3), 9, np.uint8), np.ones((20, 20), np.uint8), None)]
    mosaic = TileMosaic(lambda i: decoded[i], [[1], [1], [1]], crop=64, side=64)
    image, mask = mosaic(0, *decoded[0][:2])
    assert image.shape[:2] == (90, 100) and set(np.unique(image)) == {0, 7} and mask.sum() == 30 * 50 * 5
    mosaic.members = [[2]] * 3
    image, mask = mosaic(0, *decoded[0][:2])
    assert set(np.unique(image)) == {0, 9} and mask.dtype == np.uint8 and mask.sum() == 30 * 50 * 5


def test_the_mosaic_reaches_the_largest_square_a_zoomed_crop_reads():
    assert mosaic_side(256, None) == 256 and mosaic_side(256, (0.5, 2.0)) == 512


def brute_force_window(image, mask, side):
    """Every window of the stride, its crack distance checked pixel by pixel: the slow reference."""
    lines, (h, w) = dark_lines(image), mask.shape
    s = min(side, h, w)
    ys, xs = np.nonzero(mask)
    best = None
    for y in range(0, h - s + 1, s // 4):
        for x in range(0, w - s + 1, s // 4):
            # a labelled pixel within CLEARANCE (chessboard distance) of the window spoils it
            near = (ys >= y - CLEARANCE) & (ys < y + s + CLEARANCE) & (xs >= x - CLEARANCE) & (xs < x + s + CLEARANCE)
            if near.any():
                continue
            score = lines[y:y + s, x:x + s].mean()
            if best is None or score > best[0] + 1e-6:
                best = (score, y, x, s)
    return best


def test_the_hardest_window_is_crack_free_holds_the_dark_line_and_matches_the_slow_reference():
    rng = np.random.default_rng(3)
    image = np.full((128, 192, 3), 150, np.uint8) + rng.integers(0, 20, (128, 192, 3), dtype=np.uint8)
    mask = np.zeros((128, 192), np.uint8)
    cv2.line(image, (10, 10), (40, 120), (40, 40, 40), 3)
    mask[cv2.line(np.zeros_like(mask), (10, 10), (40, 120), 1, 3) > 0] = 1    # the labelled crack, left
    cv2.line(image, (150, 5), (160, 120), (50, 50, 50), 3)                   # a joint nobody labelled, right
    score, y, x, s = hardest_window(image, mask, 64)
    assert (score, y, x, s) == pytest.approx(brute_force_window(image, mask, 64), rel=1e-5)
    around = (slice(max(0, y - CLEARANCE), y + s + CLEARANCE), slice(max(0, x - CLEARANCE), x + s + CLEARANCE))
    assert x <= 150 <= x + s and mask[around].sum() == 0
    everywhere = np.ones_like(mask)
    assert hardest_window(image, everywhere, 64) is None


def test_mining_keeps_the_most_crack_like_half_and_the_windows_are_views_with_empty_masks():
    plain = [(np.full((64, 64, 3), 128, np.uint8), np.zeros((64, 64), np.uint8), None) for _ in range(3)]
    lined = [(p[0].copy(), p[1], None) for p in plain]
    for image, _, _ in lined:
        cv2.line(image, (5, 0), (60, 63), (20, 20, 20), 2)
    decoded = plain + lined
    windows = mine_negatives(decoded, 64)
    assert sorted(i for i, *_ in windows) == [3, 4, 5]
    dataset = CrackDataset([Sample(f"s{i}", None, None) for i in range(6)], Intensity(), decoded=list(decoded))
    assert add_negatives(dataset, 64) == 3 and len(dataset) == 9
    image, mask, roi = dataset.decoded[6]
    assert np.shares_memory(image, decoded[windows[0][0]][0]) and not mask.any() and roi is None


def test_the_negatives_take_their_share_of_every_epoch_and_the_rest_is_the_base_epoch():
    base = EpochSampler([30, 10], seed=4, length=40)
    sampler = WithNegatives(EpochSampler([30, 10], seed=4, length=40), first=40, count=7, share=0.25)
    for epoch in (0, 1):
        base.set_epoch(epoch)
        sampler.set_epoch(epoch)
        drawn, plain = list(sampler), list(base)
        assert len(drawn) == len(sampler) == 40 and list(sampler) == drawn           # seeded by (seed, epoch)
        negatives = [k for k, i in enumerate(drawn) if i >= 40]
        assert len(negatives) == 10 and all(40 <= drawn[k] < 47 for k in negatives)
        assert len({drawn[k] for k in negatives}) == 7                                 # every window drawn
        assert all(drawn[k] == plain[k] for k in range(40) if k not in negatives)


def test_training_with_a_mosaic_and_mined_negatives_runs_and_records_both(tmp_path, synthetic_root):
    data = tmp_path / "data"
    shutil.copytree(synthetic_root / "SYN", data / "SYN")
    result = run("train.py", *TINY, "--data-dir", data, "--epochs", "1", "--crop", "128", "--small-tiles", "mosaic",
                 "--hard-negatives", "0.25", "--cache", "--name", "mixed", cwd=tmp_path)
    assert "crack-free windows of 64 px mined, 25% of the crops" in result.stdout
    config = json.loads((tmp_path / "models" / "mixed" / "config.json").read_text())
    assert config["small_tiles"] == "mosaic" and config["hard_negatives"] == 0.25
    refused = run("train.py", *TINY, "--data-dir", data, "--hard-negatives", "0.1", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "add --cache" in refused.stderr and "Traceback" not in refused.stderr


def test_a_mosaic_crop_reaches_the_loader_at_the_crop_size(synthetic_root):
    from augment import train_transform
    from dataset import scan_dataset
    samples, decoded, _ = scan_dataset(synthetic_root, "SYN", keep=True)
    dataset = CrackDataset(samples, Intensity(), train_transform(128), decoded)
    dataset.fill = TileMosaic(dataset.labelled, mosaic_members([len(samples)], 0, tiles=True), 128, 128)
    dataset.reseed(0)
    item = dataset[0]
    assert item["image"].shape == (3, 128, 128) and item["mask"].dtype == torch.float32
