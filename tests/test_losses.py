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


def test_batch_dice_matches_a_slow_reference():
    """0.5 * BCE + 1 - Dice with the sums over every pixel of every crop, counted one pixel at a time."""
    from losses import bce_batch_dice_loss
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 4, 5)
    target = (torch.rand(3, 1, 4, 5) > 0.7).float()
    target[1] = 0                                              # a crack-free crop
    bce = inter = p_sum = t_sum = 0.0
    for value, truth in zip(logits.flatten().tolist(), target.flatten().tolist(), strict=True):
        p = sig(value)
        bce -= math.log(p) if truth else math.log(1 - p)
        inter, p_sum, t_sum = inter + p * truth, p_sum + p, t_sum + truth
    dice = (2 * inter + 1e-5) / (p_sum + t_sum + 1e-5)
    expected = 0.5 * bce / logits.numel() + 1 - dice
    assert bce_batch_dice_loss(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_batch_dice_gives_a_crack_free_crop_a_gradient_per_sample_dice_does_not():
    """Per-sample Dice of an empty crop is SMOOTH / (sum p + SMOOTH): ~0 whatever the network does, so
    false positives there cost nothing; over the batch they enlarge the denominator."""
    from losses import batch_dice_loss
    logits = torch.zeros(2, 1, 8, 8, requires_grad=True)
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, 2:6, 3] = 1                                   # crop 0 has a crack, crop 1 none
    for loss_fn in (dice_loss, batch_dice_loss):
        logits.grad = None
        loss_fn(logits, target).backward()
        empty = logits.grad[1].abs().max().item()
        if loss_fn is dice_loss:
            assert empty < 1e-8                                # measured: 1.2e-9
        else:
            assert empty > 1e-4                                # measured: 2.2e-4 per pixel
    assert dice_loss(logits, target).item() > 0.5 + 0.4        # the empty crop alone adds ~0.5 to the mean
