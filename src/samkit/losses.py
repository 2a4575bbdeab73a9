"""Training losses of SAM: focal + dice on the mask logits, MSE on the predicted IoU.

All functions take low-res logits (..., h, w) and a target of the same shape:
a soft target in [0, 1] (the fraction of each low-res pixel the object
covers) for the losses, a boolean one for IoU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al.), averaged over the pixels of each mask -> shape ``logits.shape[:-2]``."""
    prob = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * (1 - p_t) ** gamma * bce).mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice coefficient of each mask -> shape ``logits.shape[:-2]``."""
    prob = torch.sigmoid(logits)
    overlap = (prob * target).sum(dim=(-2, -1))
    total = prob.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1))
    return 1 - (2 * overlap + smooth) / (total + smooth)


@torch.no_grad()
def mask_iou(logits: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
    """IoU of the masks ``logits > 0`` with ``binary`` -> shape ``logits.shape[:-2]`` (1 when both are empty)."""
    pred = logits > 0
    inter = (pred & binary).sum(dim=(-2, -1)).float()
    union = (pred | binary).sum(dim=(-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def sam_loss(
    logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor, binary: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SAM's loss for one round of prompts.

    ``logits`` (n, K, h, w) and ``iou_pred`` (n, K) are the decoder's outputs
    (K = 3 for an ambiguous prompt, else 1), ``target`` (n, h, w) soft and
    ``binary`` (n, h, w) boolean. The mask loss (20 focal + 1 dice) counts
    only the output with the lowest mask loss; the IoU loss is the MSE between
    every output's predicted IoU and its true IoU. Returns the scalar loss,
    the index of the chosen output (n,) and the true IoU of every output (n, K).
    """
    target = target[:, None].expand_as(logits)
    per_output = FOCAL_WEIGHT * focal_loss(logits, target) + DICE_WEIGHT * dice_loss(logits, target)
    chosen = per_output.detach().argmin(dim=1)
    mask_loss = per_output.gather(1, chosen[:, None]).mean()
    true_iou = mask_iou(logits.detach(), binary[:, None].expand_as(logits))
    iou_loss = F.mse_loss(iou_pred, true_iou)
    return mask_loss + iou_loss, chosen, true_iou
