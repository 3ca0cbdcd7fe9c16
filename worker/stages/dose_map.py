"""Dose stage: the planning dose carried onto the follow-up grid.

Inputs: the total planned dose (planning frame of reference), the follow-up image (its grid is
the output grid) and the register stage's transform (follow-up points → planning points).
Output: :class:`MappedDose` — dose in Gy on the follow-up grid (linear interpolation, 0 outside
the dose grid) and the share of the follow-up field of view the dose grid covers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass
class MappedDose:
    """Planning dose resampled onto the follow-up grid."""

    image: sitk.Image
    coverage_percent: float

    @property
    def max_gy(self) -> float:
        return float(sitk.GetArrayViewFromImage(self.image).max())


def map_dose(dose: sitk.Image, followup: sitk.Image, transform: sitk.Transform | None = None) -> MappedDose:
    """Resample ``dose`` onto ``followup``'s grid through ``transform``.

    Parameters
    ----------
    dose: SimpleITK.Image
        Dose in Gy on its own grid, in the planning frame of reference.
    followup: SimpleITK.Image
        Any image on the follow-up grid (only its geometry is used).
    transform: SimpleITK.Transform, optional
        Maps follow-up points to planning points; identity when omitted (same frame of reference).
        A deformable transform should arrive as a displacement field (fast to evaluate).

    Returns
    -------
    MappedDose
        Float32 dose on the follow-up grid and the percentage of follow-up voxels that fall
        inside the dose grid.
    """
    transform = transform or sitk.Transform(3, sitk.sitkIdentity)
    mapped = sitk.Resample(
        sitk.Cast(dose, sitk.sitkFloat32), followup, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32
    )
    return MappedDose(image=mapped, coverage_percent=_coverage_percent(dose, followup, transform))


def _coverage_percent(dose: sitk.Image, followup: sitk.Image, transform: sitk.Transform) -> float:
    # A grid of ones resampled like the dose marks the follow-up voxels the dose grid reaches.
    ones = sitk.Image(dose.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(dose)
    inside = sitk.Resample(ones, followup, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return float(100.0 * np.count_nonzero(sitk.GetArrayViewFromImage(inside)) / np.prod(followup.GetSize()))
