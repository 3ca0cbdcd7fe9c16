"""Segmentation losses: the paper's small-target focus loss (§3.3) and the whole-crop Dice + CE baseline.

Every loss takes tensors with the batch first and any layout after it, typically (B, 1, D, H, W):
``logits`` or ``probs`` of the lesion, a 0/1 ``target`` and, for the ROI-restricted losses, a 0/1
high-dose ``roi`` (r in the paper). Sums run over all non-batch axes of one sample; the returned
scalar is the mean of the per-sample losses, so every sample weighs the same whatever its lesion
size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# x**gamma with gamma < 1 has derivative gamma * x**(gamma - 1), infinite at x = 0, which is where a
# perfect prediction (or an empty ROI) puts the Focal Tversky base. Clamping the base here keeps the
# gradient finite (zero below the floor) at the cost of a loss floor of 1e-6**0.75 ≈ 3e-5.
FOCAL_BASE_FLOOR = 1e-6


@dataclass(frozen=True)
class FocusLossWeights:
    """Weights and constants of the small-target focus loss, paper Eq. (1)–(4), as published.

    ``alpha`` weighs false positives and ``beta`` false negatives in the Tversky index; ``eps``
    smooths both ratios.
    """

    dice: float = 0.7
    tversky: float = 0.3
    alpha: float = 0.5
    beta: float = 0.5
    gamma: float = 0.75
    eps: float = 1e-6


def roi_dice_loss(probs: Tensor, target: Tensor, roi: Tensor, eps: float = 1e-6) -> Tensor:
    """ROI-restricted soft Dice loss, Eq. (2), per sample over Ω_r, then the batch mean.

    A sample whose ROI is empty scores 0 (ε/ε): it has nothing to get wrong.
    """
    _check_same_shape(probs=probs, target=target, roi=roi)
    p, y = _inside(probs, roi), _inside(target, roi)
    overlap = _per_sample_sum(p * y)
    dice = (2 * overlap + eps) / (_per_sample_sum(p) + _per_sample_sum(y) + eps)
    return (1 - dice).mean()


def focal_tversky_loss(
    probs: Tensor,
    target: Tensor,
    roi: Tensor,
    alpha: float = 0.5,
    beta: float = 0.5,
    gamma: float = 0.75,
    eps: float = 1e-6,
) -> Tensor:
    """ROI-restricted Focal Tversky loss, Eq. (3)–(4), per sample over Ω_r, then the batch mean.

    ``alpha`` weighs false positives, ``beta`` false negatives. With ``gamma`` < 1, x**gamma > x
    for x < 1: small losses are lifted, so samples that are nearly right keep a sizeable gradient.
    """
    _check_same_shape(probs=probs, target=target, roi=roi)
    p, y = _inside(probs, roi), _inside(target, roi)
    true_pos = _per_sample_sum(p * y)
    # With p and y both zeroed outside r: Σ_r p(1−y) = Σ_r p − TP and Σ_r (1−p)y = Σ_r y − TP.
    false_pos = _per_sample_sum(p) - true_pos
    false_neg = _per_sample_sum(y) - true_pos
    tversky = (true_pos + eps) / (true_pos + alpha * false_pos + beta * false_neg + eps)
    base = (1 - tversky).clamp(min=FOCAL_BASE_FLOOR)
    return base.pow(gamma).mean()


def small_target_focus_loss(
    logits: Tensor, target: Tensor, roi: Tensor, weights: FocusLossWeights = FocusLossWeights()
) -> Tensor:
    """L_STF = λ_Dice · Dice + λ_FT · Focal Tversky on sigmoid(logits), Eq. (1), inside r only.

    Voxels outside r contribute nothing: their logits receive exactly zero gradient.
    """
    probs = torch.sigmoid(logits)
    dice = roi_dice_loss(probs, target, roi, eps=weights.eps)
    tversky = focal_tversky_loss(
        probs, target, roi, alpha=weights.alpha, beta=weights.beta, gamma=weights.gamma, eps=weights.eps
    )
    return weights.dice * dice + weights.tversky * tversky


def dice_ce_loss(logits: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """The ablation's "Base" loss: soft Dice + binary cross-entropy, both over the whole crop.

    Per sample, Dice = 1 − (2Σpy + ε)/(Σp + Σy + ε) and the cross-entropy is the voxel mean; the
    two are added and the batch mean is returned.
    """
    _check_same_shape(logits=logits, target=target)
    logits, target = logits.float(), target.float()
    probs = torch.sigmoid(logits)
    overlap = _per_sample_sum(probs * target)
    dice = 1 - (2 * overlap + eps) / (_per_sample_sum(probs) + _per_sample_sum(target) + eps)
    # The logits form is the numerically stable one (log-sum-exp), unlike BCE on sigmoid outputs.
    voxel_ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    cross_entropy = voxel_ce.flatten(start_dim=1).mean(dim=1)
    return (dice + cross_entropy).mean()


def _inside(values: Tensor, roi: Tensor) -> Tensor:
    """``values`` zeroed outside r, in float32.

    Multiplying (rather than indexing) keeps the batch layout and is what stops gradient flowing
    from outside r. float32 because half-precision sums over a 64³ crop (262 144 voxels) overflow.
    """
    return values.float() * roi.float()


def _per_sample_sum(values: Tensor) -> Tensor:
    """(B, ...) → (B,): the sum over every non-batch axis."""
    return values.flatten(start_dim=1).sum(dim=1)


def _check_same_shape(**tensors: Tensor) -> None:
    # Broadcasting (B, 1, D, H, W) against (B, D, H, W) would silently pair every sample with every
    # other one, so mismatched layouts are refused rather than broadcast.
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    distinct = set(shapes.values())
    if len(distinct) != 1:
        raise ValueError(f"loss inputs must have one shape; got {shapes}")
    if len(distinct.pop()) < 2:
        raise ValueError(f"loss inputs need a batch axis and at least one more; got {shapes}")
