"""The training objective: action MSE over the valid (non-padded) steps."""
from __future__ import annotations

import torch


def action_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None):
    """Mean squared error over the valid steps. pred, target (B, K, A); mask (B, K) bool."""
    if pred.shape != target.shape:
        raise ValueError(f"action_loss: pred {tuple(pred.shape)} and target "
                         f"{tuple(target.shape)} differ")
    err = (pred.float() - target.float()).square()                      # (B, K, A), fp32 under autocast
    if mask is None:
        return err.mean()
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"action_loss: mask must be {tuple(pred.shape[:2])}; got {tuple(mask.shape)}")
    keep = mask.to(torch.bool)
    n = keep.sum() * pred.shape[-1]
    return (err * keep[..., None]).sum() / n.clamp(min=1)
