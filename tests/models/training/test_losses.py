"""The small-target focus loss (paper §3.3, Eq. 1–4) and the whole-crop Dice + CE baseline."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from models.training.losses import (
    FOCAL_BASE_FLOOR,
    FocusLossWeights,
    dice_ce_loss,
    focal_tversky_loss,
    roi_dice_loss,
    small_target_focus_loss,
)

EPS = 1e-6


def _roi_case() -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 1, 4, 4, 4) roi of 8 voxels (a 2³ block) and a target with 2 lesion voxels inside it."""
    roi = torch.zeros(1, 1, 4, 4, 4)
    roi[0, 0, 1:3, 1:3, 1:3] = 1
    target = torch.zeros_like(roi)
    target[0, 0, 1, 1, 1] = target[0, 0, 2, 2, 2] = 1
    return target, roi


def _random_case(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random logits, target and a roi that covers part of each (B, 1, 6, 6, 6) crop."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, 1, 6, 6, 6, generator=g)
    target = (torch.rand(batch, 1, 6, 6, 6, generator=g) < 0.3).float()
    roi = torch.zeros_like(target)
    roi[:, :, 1:5, 1:5, 1:4] = 1
    return logits, target, roi


def test_half_probability_in_roi_gives_the_hand_computed_values() -> None:
    target, roi = _roi_case()
    # 0.5 inside r; outside r anything, here 0.9, must not count.
    probs = torch.where(roi.bool(), 0.5, 0.9)
    # Σp = 4, Σy = 2, TP = 1, FP = 3, FN = 1 over the 8 voxels of r.
    dice = 1 - (2 * 1 + EPS) / (4 + 2 + EPS)
    tversky = (1 + EPS) / (1 + 0.5 * 3 + 0.5 * 1 + EPS)
    focal = (1 - tversky) ** 0.75
    assert roi_dice_loss(probs, target, roi).item() == pytest.approx(dice, rel=1e-6)
    assert focal_tversky_loss(probs, target, roi).item() == pytest.approx(focal, rel=1e-6)
    logits = torch.where(roi.bool(), 0.0, 3.0)  # sigmoid(0) = 0.5
    expected = 0.7 * dice + 0.3 * focal
    assert small_target_focus_loss(logits, target, roi).item() == pytest.approx(expected, rel=1e-6)


def test_tversky_weights_alpha_on_false_positives_and_beta_on_false_negatives() -> None:
    target, roi = _roi_case()
    probs = torch.where(roi.bool(), 0.5, 0.0)
    # FP = 3 weighted by alpha = 0.2, FN = 1 by beta = 0.8.
    expected = (1 - (1 + EPS) / (1 + 0.2 * 3 + 0.8 * 1 + EPS)) ** 2.0
    loss = focal_tversky_loss(probs, target, roi, alpha=0.2, beta=0.8, gamma=2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_perfect_prediction_scores_near_zero_and_all_wrong_near_one() -> None:
    target, roi = _roi_case()
    perfect = target.clone()
    wrong = (1 - target) * roi
    assert roi_dice_loss(perfect, target, roi).item() == pytest.approx(0.0, abs=1e-7)
    # The clamp leaves a floor of FOCAL_BASE_FLOOR**0.75 (≈ 3e-5), not exactly 0.
    assert focal_tversky_loss(perfect, target, roi).item() == pytest.approx(FOCAL_BASE_FLOOR**0.75)
    assert roi_dice_loss(wrong, target, roi).item() == pytest.approx(1.0, abs=1e-6)
    assert focal_tversky_loss(wrong, target, roi).item() == pytest.approx(1.0, abs=1e-6)


def test_weights_combine_the_two_terms() -> None:
    logits, target, roi = _random_case()
    weights = FocusLossWeights(dice=0.25, tversky=2.0, alpha=0.3, beta=0.7, gamma=1.5, eps=1e-3)
    probs = torch.sigmoid(logits)
    dice = roi_dice_loss(probs, target, roi, eps=1e-3)
    focal = focal_tversky_loss(probs, target, roi, alpha=0.3, beta=0.7, gamma=1.5, eps=1e-3)
    loss = small_target_focus_loss(logits, target, roi, weights)
    assert loss.item() == pytest.approx(0.25 * dice.item() + 2.0 * focal.item(), rel=1e-6)


def test_gradient_flows_only_from_inside_the_roi() -> None:
    logits, target, roi = _random_case()
    logits.requires_grad_(True)
    small_target_focus_loss(logits, target, roi).backward()
    assert logits.grad is not None
    assert torch.equal(logits.grad[roi == 0], torch.zeros_like(logits.grad[roi == 0]))
    assert (logits.grad[roi == 1] != 0).all()


def test_voxels_outside_the_roi_do_not_change_the_loss() -> None:
    logits, target, roi = _random_case()
    outside = roi == 0
    other_logits = torch.where(outside, -logits * 7 + 2, logits)
    other_target = torch.where(outside, 1 - target, target)
    assert not torch.equal(other_logits, logits) and not torch.equal(other_target, target)
    assert torch.equal(
        small_target_focus_loss(logits, target, roi), small_target_focus_loss(other_logits, other_target, roi)
    )


def test_empty_roi_sample_scores_zero_with_finite_gradients() -> None:
    logits, target, roi = _random_case()
    roi[0] = 0
    logits.requires_grad_(True)
    per_sample = [
        small_target_focus_loss(logits[i : i + 1], target[i : i + 1], roi[i : i + 1]) for i in range(2)
    ]
    assert per_sample[0].item() == pytest.approx(0.3 * FOCAL_BASE_FLOOR**0.75, abs=1e-7)
    assert per_sample[1].item() > 0.1
    loss = small_target_focus_loss(logits, target, roi)
    loss.backward()
    assert loss.item() == pytest.approx((per_sample[0].item() + per_sample[1].item()) / 2, rel=1e-6)
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert torch.equal(logits.grad[0], torch.zeros_like(logits.grad[0]))


def test_clamp_keeps_gradients_finite_at_a_perfect_prediction() -> None:
    target, roi = _roi_case()
    # Exactly 0/1 inside r: the Tversky index is exactly 1 and the focal base exactly 0, where
    # d/dx x**0.75 is infinite.
    probs = target.clone().requires_grad_(True)
    focal_tversky_loss(probs, target, roi).backward()
    assert probs.grad is not None
    assert torch.isfinite(probs.grad).all()
    logits = torch.where(target.bool(), 40.0, -40.0).requires_grad_(True)
    small_target_focus_loss(logits, target, roi).backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()


def test_dice_ce_loss_matches_an_independent_computation() -> None:
    logits, target, _ = _random_case(batch=3, seed=4)
    expected = []
    for sample_logits, sample_target in zip(logits.double(), target.double(), strict=True):
        p = 1 / (1 + torch.exp(-sample_logits))
        dice = 1 - (2 * (p * sample_target).sum() + EPS) / (p.sum() + sample_target.sum() + EPS)
        voxel_ce = -(sample_target * torch.log(p) + (1 - sample_target) * torch.log(1 - p))
        expected.append(dice + voxel_ce.mean())
    assert dice_ce_loss(logits, target).item() == pytest.approx(sum(expected).item() / 3, rel=1e-5)


def test_dice_ce_loss_is_stable_at_extreme_logits() -> None:
    target = torch.zeros(1, 1, 2, 2, 2)
    target[0, 0, 0, 0, 0] = 1
    logits = torch.where(target.bool(), -200.0, 200.0).requires_grad_(True)
    loss = dice_ce_loss(logits, target)
    loss.backward()
    # Every voxel wrong by 200 logits: the cross-entropy is 200 per voxel, not inf.
    assert loss.item() == pytest.approx(1 + 200, rel=1e-4)
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES_OF_LOGITS: dict[str, LossFn] = {
    "roi_dice": lambda logits, target, roi: roi_dice_loss(torch.sigmoid(logits), target, roi),
    "focal_tversky": lambda logits, target, roi: focal_tversky_loss(torch.sigmoid(logits), target, roi),
    "small_target_focus": small_target_focus_loss,
    "dice_ce": lambda logits, target, roi: dice_ce_loss(logits, target),
}


@pytest.mark.parametrize("loss_fn", LOSSES_OF_LOGITS.values(), ids=LOSSES_OF_LOGITS.keys())
def test_batch_loss_is_the_mean_of_per_sample_losses(loss_fn: LossFn) -> None:
    logits, target, roi = _random_case(batch=3, seed=1)
    roi[1, :, :, :, 3:] = 0  # the samples' rois differ in size; each sample still weighs 1/3
    per_sample = [loss_fn(logits[b : b + 1], target[b : b + 1], roi[b : b + 1]).item() for b in range(3)]
    assert len({round(v, 6) for v in per_sample}) == 3
    assert loss_fn(logits, target, roi).item() == pytest.approx(math.fsum(per_sample) / 3, rel=1e-6)


def test_channel_less_layout_gives_the_same_losses() -> None:
    logits, target, roi = _random_case()
    squeezed = (logits[:, 0], target[:, 0], roi[:, 0])
    assert small_target_focus_loss(*squeezed).item() == pytest.approx(
        small_target_focus_loss(logits, target, roi).item(), rel=1e-6
    )
    assert dice_ce_loss(logits[:, 0], target[:, 0]).item() == pytest.approx(
        dice_ce_loss(logits, target).item(), rel=1e-6
    )


def test_mismatched_layouts_are_refused_rather_than_broadcast() -> None:
    logits, target, roi = _random_case()
    with pytest.raises(ValueError, match="one shape"):
        small_target_focus_loss(logits, target[:, 0], roi)
    with pytest.raises(ValueError, match="one shape"):
        dice_ce_loss(logits, target[:, 0])
    with pytest.raises(ValueError, match="batch axis"):
        dice_ce_loss(logits.flatten(), target.flatten())
