"""Error-driven click simulation for iterative refinement during training (paper §3.2.3, §5.3).

Clicks are drawn from where the current prediction disagrees with the ground truth: a missed lesion
voxel (false negative) becomes a positive click, a wrongly included voxel (false positive) a
negative one. Coordinates are voxel indices of the crop in the tensor's axis order (d, h, w), the
convention of ``models.predictor`` and the prompt encoder, which adds the +0.5 to voxel centres
itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.modeling.prompt_encoder import NEGATIVE_LABEL, PAD_LABEL, POSITIVE_LABEL

__all__ = ["NEGATIVE_LABEL", "PAD_LABEL", "POSITIVE_LABEL", "ClickSimulation", "simulate_clicks"]


@dataclass(frozen=True)
class ClickSimulation:
    """How many refinement rounds a training step runs and how many clicks each round adds.

    The paper's setting (§4.1, chosen by the sensitivity analysis of §5.3): 3 rounds of 4 clicks.
    """

    iterations: int = 3
    clicks_per_iteration: int = 4


def simulate_clicks(
    prediction: Tensor, target: Tensor, count: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``count`` clicks per sample on the prediction's errors.

    Parameters
    ----------
    prediction, target
        Bool masks (B, D, H, W) or (B, 1, D, H, W): the current binarised prediction and the
        ground-truth lesion.
    count
        Clicks per sample.
    generator
        CPU generator (indices are drawn on the CPU); the same seed gives the same clicks.

    Returns
    -------
    coords
        (B, count, 3) float32 voxel indices (d, h, w), on the masks' device.
    labels
        (B, count) int64: ``POSITIVE_LABEL`` on false negatives, ``NEGATIVE_LABEL`` on false
        positives, positives first. A perfect sample gets ``PAD_LABEL`` points at (0, 0, 0),
        which the prompt encoder replaces by its not-a-point embedding.

    Notes
    -----
    Clicks are split evenly between the two error kinds, as in the paper's sensitivity analysis
    (§5.3, "foreground and background clicks equally divided"); an odd count gives the extra click
    to the false negatives, since a missed voxel of a small lesion costs more Dice than a stray one.
    When one kind is absent, all clicks come from the other. Voxels are drawn uniformly, without
    replacement unless the error set has fewer voxels than clicks asked of it.
    """
    if count < 0:
        raise ValueError(f"click count must not be negative; got {count}")
    prediction, target = _as_volumes(prediction, target)
    batch, device = prediction.shape[0], prediction.device
    coords = torch.zeros(batch, count, 3, dtype=torch.float32, device=device)
    labels = torch.full((batch, count), PAD_LABEL, dtype=torch.int64, device=device)
    for i in range(batch):
        missed = torch.nonzero(target[i] & ~prediction[i])  # (n_fn, 3)
        extra = torch.nonzero(prediction[i] & ~target[i])  # (n_fp, 3)
        n_pos, n_neg = _split_clicks(count, len(missed), len(extra))
        coords[i, :n_pos] = _sample_voxels(missed, n_pos, generator)
        labels[i, :n_pos] = POSITIVE_LABEL
        coords[i, n_pos : n_pos + n_neg] = _sample_voxels(extra, n_neg, generator)
        labels[i, n_pos : n_pos + n_neg] = NEGATIVE_LABEL
    return coords, labels


def _as_volumes(prediction: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Both masks as (B, D, H, W) bool, a singleton channel axis dropped."""
    masks = []
    for name, mask in (("prediction", prediction), ("target", target)):
        if mask.dtype != torch.bool:
            # Thresholding is the caller's choice; casting probabilities here would call 0.1 a lesion.
            raise TypeError(f"{name} must be a bool mask; got {mask.dtype}")
        if mask.ndim == 5 and mask.shape[1] == 1:
            mask = mask[:, 0]
        if mask.ndim != 4:
            raise ValueError(f"{name} must be (B, D, H, W) or (B, 1, D, H, W); got {tuple(mask.shape)}")
        masks.append(mask)
    if masks[0].shape != masks[1].shape:
        raise ValueError(f"prediction {tuple(masks[0].shape)} and target {tuple(masks[1].shape)} differ")
    return masks[0], masks[1]


def _split_clicks(count: int, n_missed: int, n_extra: int) -> tuple[int, int]:
    """(positive, negative) click counts for one sample with these error-set sizes."""
    if n_missed == 0 and n_extra == 0:
        return 0, 0
    if n_extra == 0:
        return count, 0
    if n_missed == 0:
        return 0, count
    n_pos = (count + 1) // 2
    return n_pos, count - n_pos


def _sample_voxels(voxels: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """``k`` rows of the (n, 3) index list ``voxels``, uniformly at random, as float32."""
    n = len(voxels)
    if k == 0:
        return voxels.new_zeros(0, 3, dtype=torch.float32)
    # Indices are drawn on the CPU, where a default torch.Generator lives, whatever the masks' device.
    if n >= k:
        rows = torch.randperm(n, generator=generator)[:k]
    else:
        rows = torch.randint(n, (k,), generator=generator)
    return voxels[rows.to(voxels.device)].to(torch.float32)
