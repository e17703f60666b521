"""Losses on logits (Bx1xHxW) and {0,1} targets of the same shape.

Plain functions first, then `LOSSES` (name -> function) and `compute_loss`, which
averages over the heads of a deep-supervised model.
"""
import torch
import torch.nn.functional as F

SMOOTH = 1e-5


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target)


def soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample dice of sigmoid(logits) against target, shape (B,)."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    intersection = (prob * target).sum(1)
    return (2 * intersection + SMOOTH) / (prob.sum(1) + target.sum(1) + SMOOTH)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1 - soft_dice(logits, target).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """docs/METHOD.md, Loss: 0.5 * BCE + (1 - dice), dice averaged over the batch."""
    return 0.5 * bce(logits, target) + dice_loss(logits, target)


def batch_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - Dice over every pixel of the batch at once. Per-sample Dice scores a crack-free crop
    at about 0 whatever the network does there (loss ~1, almost no gradient), and adds that
    constant to the validation loss ReduceLROnPlateau watches; over the batch, empty crops only
    add their false positives to the denominator."""
    prob = torch.sigmoid(logits)
    intersection = (prob * target).sum()
    return 1 - (2 * intersection + SMOOTH) / (prob.sum() + target.sum() + SMOOTH)


def bce_batch_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0.5 * BCE + (1 - Dice over the batch): the reference loss without its per-sample Dice."""
    return 0.5 * bce(logits, target) + batch_dice_loss(logits, target)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               alpha: float = 0.25) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017), mean over pixels."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_true = torch.exp(-ce)                      # probability given to the true class, stable
    weight = alpha * target + (1 - alpha) * (1 - target)
    return (weight * (1 - p_true) ** gamma * ce).mean()


LOSSES = {"BCEDiceLoss": bce_dice_loss, "BCEDiceBatch": bce_batch_dice_loss, "BCE": bce, "Dice": dice_loss,
          "Focal": focal_loss}


def compute_loss(name: str, outputs, target: torch.Tensor) -> torch.Tensor:
    """Loss in fp32 (bf16 logits lose the precision the sigmoid needs); mean over deep-supervision heads."""
    loss_fn = LOSSES[name]
    heads = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return sum(loss_fn(head.float(), target) for head in heads) / len(heads)
