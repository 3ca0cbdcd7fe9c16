"""Overlap, volume and surface-distance metrics of one binary segmentation against its truth.

The definitions follow MONAI 1.6.1 so that numbers reported here can be compared with papers that
use it:

- Dice ``2TP / (2TP + FP + FN)``, IoU ``TP / (TP + FP + FN)``, precision ``TP / (TP + FP)`` and
  recall ``TP / (TP + FN)`` from voxel counts (``monai.metrics.compute_dice`` / ``compute_iou``).
- Surface voxels are a mask minus its binary erosion by the 6-connected cross, with everything
  outside the array counted as background, so a mask touching the array's edge has a surface
  there (``monai.metrics.utils.get_mask_edges`` with its defaults).
- Surface distances are exact Euclidean distances in mm, with the voxel spacing, from each surface
  voxel of one mask to the nearest surface voxel of the other. HD95 is the larger of the two
  directed 95th percentiles (``compute_hausdorff_distance(percentile=95, directed=False)``); ASSD
  is the mean of both directed distance sets put together
  (``compute_average_surface_distance(symmetric=True)``).
- Volumes are in cc: voxel count times the voxel volume in mm³, over 1000.

Empty masks, where MONAI gives NaN or infinity, are defined here so that means over cases exist:

- A ratio 0/0 is 1.0 when both masks are empty and 0.0 otherwise. Both empty: every overlap
  metric is 1.0 and both distances 0.0. Exactly one empty: Dice, IoU, precision and recall are 0.0.
- When exactly one mask is empty, HD95 and ASSD are the length of the array's diagonal in mm,
  ``sqrt(sum((shape * spacing)²))``: no two voxels of that grid are further apart, so it is the
  worst score a prediction can get, yet finite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

#: The metrics that describe agreement (the volumes are descriptive, not scores).
METRIC_NAMES: tuple[str, ...] = ("dice", "iou", "precision", "recall", "hd95_mm", "assd_mm")

HAUSDORFF_PERCENTILE = 95.0
_MM3_PER_CC = 1000.0


@dataclass(frozen=True)
class SegmentationMetrics:
    """The scores of one prediction against its truth; distances in mm, volumes in cc."""

    dice: float
    iou: float
    precision: float
    recall: float
    hd95_mm: float
    assd_mm: float
    predicted_cc: float
    truth_cc: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def segmentation_metrics(
    prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
) -> SegmentationMetrics:
    """Score a binary 3D prediction against the truth on the same grid.

    Parameters
    ----------
    prediction, truth
        Boolean (or 0/1) arrays of the same 3D shape.
    spacing
        Voxel size in mm along each array axis, in the order of the array axes.

    Returns
    -------
    SegmentationMetrics
        The scores; see the module docstring for the definitions and the empty-mask cases.

    Raises
    ------
    ValueError
        If the arrays are not 3D, differ in shape or hold values other than 0 and 1, or if the
        spacing does not have three finite positive values.
    """
    predicted = _as_binary_volume(prediction, "prediction")
    true = _as_binary_volume(truth, "truth")
    if predicted.shape != true.shape:
        raise ValueError(f"prediction shape {predicted.shape} differs from truth shape {true.shape}")
    voxel_mm = _validated_spacing(spacing)

    true_positive = int(np.count_nonzero(predicted & true))
    predicted_count = int(np.count_nonzero(predicted))
    truth_count = int(np.count_nonzero(true))
    both_empty = predicted_count == 0 and truth_count == 0
    false_positive = predicted_count - true_positive
    false_negative = truth_count - true_positive

    hd95_mm, assd_mm = _surface_scores(predicted, true, voxel_mm)
    voxel_cc = float(np.prod(voxel_mm)) / _MM3_PER_CC
    return SegmentationMetrics(
        dice=_ratio(2 * true_positive, 2 * true_positive + false_positive + false_negative, both_empty),
        iou=_ratio(true_positive, true_positive + false_positive + false_negative, both_empty),
        precision=_ratio(true_positive, predicted_count, both_empty),
        recall=_ratio(true_positive, truth_count, both_empty),
        hd95_mm=hd95_mm,
        assd_mm=assd_mm,
        predicted_cc=predicted_count * voxel_cc,
        truth_cc=truth_count * voxel_cc,
    )


def _as_binary_volume(mask: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3D array, got {array.ndim}D with shape {array.shape}")
    if array.dtype == bool:
        return array
    # A probability map or a label map passed here by mistake would otherwise be scored silently.
    if not np.all((array == 0) | (array == 1)):
        raise ValueError(f"{name} must be boolean or hold only 0 and 1")
    return array.astype(bool)


def _validated_spacing(spacing: Sequence[float]) -> np.ndarray:
    voxel_mm = np.asarray(spacing, dtype=np.float64)
    if voxel_mm.shape != (3,):
        raise ValueError(f"spacing must have one value per array axis (3), got {list(spacing)}")
    if not np.all(np.isfinite(voxel_mm) & (voxel_mm > 0)):
        raise ValueError(f"spacing must be finite and positive, got {list(spacing)}")
    return voxel_mm


def _ratio(numerator: int, denominator: int, both_empty: bool) -> float:
    """``numerator / denominator``, with 0/0 read as perfect agreement only when both masks are empty."""
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return numerator / denominator


def _surface_scores(predicted: np.ndarray, true: np.ndarray, voxel_mm: np.ndarray) -> tuple[float, float]:
    """HD95 and ASSD in mm, with the module docstring's values for empty masks."""
    predicted_any, truth_any = bool(predicted.any()), bool(true.any())
    if not predicted_any and not truth_any:
        return 0.0, 0.0
    if not predicted_any or not truth_any:
        diagonal_mm = math.hypot(*(np.asarray(predicted.shape) * voxel_mm))
        return diagonal_mm, diagonal_mm

    predicted_box, true_box = _crop_to_union(predicted, true)
    predicted_surface, true_surface = _surface(predicted_box), _surface(true_box)
    predicted_to_truth = _distances_to(true_surface, predicted_surface, voxel_mm)
    truth_to_predicted = _distances_to(predicted_surface, true_surface, voxel_mm)
    hd95 = max(
        np.percentile(predicted_to_truth, HAUSDORFF_PERCENTILE),
        np.percentile(truth_to_predicted, HAUSDORFF_PERCENTILE),
    )
    assd = np.concatenate([predicted_to_truth, truth_to_predicted]).mean()
    return float(hd95), float(assd)


def _crop_to_union(predicted: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union, padded with one background voxel all round.

    The surfaces and the distances between them do not change, only the cost, which on a CT-sized
    array is mostly spent on empty space: every surface voxel stays inside the box, and the margin
    puts the background that lies beyond the array's faces into the array itself (as MONAI's crop
    does), so a mask cut by a face has a surface there whatever the erosion assumes at the border.
    """
    union_box = ndimage.find_objects((predicted | true).astype(np.uint8))[0]
    return (
        np.pad(predicted[union_box], 1, constant_values=False),
        np.pad(true[union_box], 1, constant_values=False),
    )


def _surface(mask: np.ndarray) -> np.ndarray:
    # scipy's default structure is the 6-connected cross and its default border is background,
    # which is what MONAI's get_mask_edges uses.
    return mask & ~ndimage.binary_erosion(mask)


def _distances_to(target_surface: np.ndarray, source_surface: np.ndarray, voxel_mm: np.ndarray) -> np.ndarray:
    """Distance in mm from each source surface voxel to the nearest target surface voxel."""
    distance_map = ndimage.distance_transform_edt(~target_surface, sampling=voxel_mm)
    return np.asarray(distance_map)[source_surface]
