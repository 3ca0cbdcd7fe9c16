"""Prompts stage: the dose-guided high-dose region r and its box (paper §3.2.2).

Input: the planning dose on the follow-up grid. Output: :class:`HighDoseRegion` — the mask
r = {dose ≥ τ·Dmax} (largest connected component), its bounding box as voxel indices and as
patient coordinates, and its volume. The model only trusts predictions inside r, so an empty
or degenerate r is a case-level error, never a silent full-image box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from worker.errors import PromptError

DEFAULT_TAU = 0.8
#: Fewer voxels than this, or a box one voxel thin, cannot frame a 3D prompt.
MIN_REGION_VOXELS = 8


@dataclass
class HighDoseRegion:
    """r and its box on the follow-up grid.

    ``mask`` has the image array layout (slices, rows, cols). Box indices are SimpleITK
    (column, row, slice) order, inclusive; ``corner_min_mm`` / ``corner_max_mm`` are the patient
    (LPS) positions of the centres of the two corner voxels, and ``corners_mm`` all eight.
    """

    mask: np.ndarray
    tau: float
    dmax_gy: float
    threshold_gy: float
    index_min: tuple[int, int, int]
    index_max: tuple[int, int, int]
    corner_min_mm: tuple[float, float, float]
    corner_max_mm: tuple[float, float, float]
    corners_mm: list[tuple[float, float, float]]
    volume_cc: float
    components: int


def high_dose_region(dose: sitk.Image, tau: float = DEFAULT_TAU) -> HighDoseRegion:
    """The high-dose region r = largest connected component of {dose ≥ τ·Dmax}.

    Parameters
    ----------
    dose: SimpleITK.Image
        Planning dose (Gy) on the follow-up grid.
    tau: float
        Fraction of Dmax, in (0, 1].

    Raises
    ------
    worker.errors.PromptError
        τ out of range, no positive dose on the follow-up grid, or a region too small or flat
        to make a 3D box.
    """
    if not 0.0 < tau <= 1.0:
        raise PromptError(f"tau must be in (0, 1], got {tau}")
    values = sitk.GetArrayViewFromImage(dose)
    positive = values[values > 0]
    if positive.size == 0:
        raise PromptError(
            "the planning dose does not reach the follow-up scan (no positive dose on its grid)"
        )
    dmax = float(positive.max())
    region, components = _largest_component(values >= tau * dmax)
    index_min, index_max = _box(region)
    if (
        int(region.sum()) < MIN_REGION_VOXELS
        or min(b - a for a, b in zip(index_min, index_max, strict=True)) < 1
    ):
        raise PromptError(
            f"high-dose region (dose ≥ {tau:g}·Dmax = {tau * dmax:.2f} Gy) on the follow-up has only "
            f"{int(region.sum())} voxel(s) or is one voxel thin; it cannot frame a 3D prompt"
        )
    return HighDoseRegion(
        mask=region,
        tau=tau,
        dmax_gy=dmax,
        threshold_gy=tau * dmax,
        index_min=index_min,
        index_max=index_max,
        corner_min_mm=dose.TransformIndexToPhysicalPoint(index_min),
        corner_max_mm=dose.TransformIndexToPhysicalPoint(index_max),
        corners_mm=_corners(dose, index_min, index_max),
        volume_cc=float(region.sum()) * float(np.prod(dose.GetSpacing())) / 1000.0,
        components=components,
    )


def _largest_component(mask: np.ndarray) -> tuple[np.ndarray, int]:
    # Full 3D connectivity: diagonal neighbours belong to the same region of dose.
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return labels > 0, count
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1, count


def _box(region: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Inclusive (column, row, slice) index corners of a (slices, rows, cols) mask."""
    where = np.argwhere(region)
    low, high = where.min(axis=0), where.max(axis=0)
    return (int(low[2]), int(low[1]), int(low[0])), (int(high[2]), int(high[1]), int(high[0]))


def _corners(
    image: sitk.Image, low: tuple[int, int, int], high: tuple[int, int, int]
) -> list[tuple[float, float, float]]:
    return [
        image.TransformIndexToPhysicalPoint((x, y, z))
        for z in (low[2], high[2])
        for y in (low[1], high[1])
        for x in (low[0], high[0])
    ]
