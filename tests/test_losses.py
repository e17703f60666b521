import math

import pytest
import torch

from losses import LOSSES, bce_dice_loss, compute_loss, dice_loss, focal_loss


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_bce_dice_by_hand():
    # one sample, two pixels: logits (0, 2), target (1, 0)
    logits = torch.tensor([[[[0.0, 2.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    p0, p1 = 0.5, sig(2.0)
    bce = (-math.log(p0) - math.log(1 - p1)) / 2
    dice = (2 * p0 + 1e-5) / (p0 + p1 + 1 + 1e-5)
    assert bce_dice_loss(logits, target).item() == pytest.approx(0.5 * bce + 1 - dice, abs=1e-6)


def test_dice_is_averaged_per_sample_not_over_the_batch():
    logits = torch.tensor([[[[10.0, -10.0]]], [[[-10.0, -10.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]])
    d0 = (2 * sig(10) + 1e-5) / (sig(10) + sig(-10) + 1 + 1e-5)
    d1 = (2 * 2 * sig(-10) + 1e-5) / (2 * sig(-10) + 2 + 1e-5)
    assert dice_loss(logits, target).item() == pytest.approx(1 - (d0 + d1) / 2, abs=1e-6)


def test_focal_by_hand():
    logits = torch.tensor([[[[1.0, -1.0]]]])
    target = torch.tensor([[[[1.0, 1.0]]]])
    expected = [0.25 * (1 - sig(x)) ** 2 * -math.log(sig(x)) for x in (1.0, -1.0)]
    assert focal_loss(logits, target).item() == pytest.approx(sum(expected) / 2, abs=1e-6)


def test_perfect_prediction_gives_a_lower_loss_than_a_wrong_one():
    target = (torch.rand(2, 1, 8, 8) > 0.7).float()
    good, bad = (target * 2 - 1) * 8, (1 - target * 2) * 8
    for name in LOSSES:
        assert compute_loss(name, good, target) < compute_loss(name, bad, target), name


def test_deep_supervision_loss_is_the_mean_over_heads():
    target = (torch.rand(1, 1, 4, 4) > 0.5).float()
    heads = [torch.randn(1, 1, 4, 4) for _ in range(4)]
    expected = sum(bce_dice_loss(h, target) for h in heads) / 4
    assert compute_loss("BCEDiceLoss", heads, target).item() == pytest.approx(expected.item(), abs=1e-6)
