"""From a read case to the model's prompt: register → dose on the follow-up → high-dose region.

Inputs: an assembled :class:`Case` and its :class:`CaseData`.
Output: :class:`PreparedCase` — the registration (with QA and review flags), the planning dose on
the follow-up grid with its coverage, the high-dose region r with its box, and the dose
statistics of r. This is the part of the pipeline before inference; ``rtinjury run`` and the
workers call it, and so does training-data preparation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from worker.stages.assemble.case import Case
from worker.stages.dose_map import MappedDose, map_dose
from worker.stages.dose_stats import DoseStatistics, mask_dose_statistics
from worker.stages.prompts import DEFAULT_TAU, HighDoseRegion, high_dose_region
from worker.stages.read.case_data import CaseData
from worker.stages.register.result import RegistrationResult
from worker.stages.register.stage import RegistrationOptions, register_case
from worker.stages.register.transforms import is_linear, to_displacement_field


@dataclass
class PreparedCase:
    """Everything the inference stage needs besides the image itself."""

    registration: RegistrationResult
    dose: MappedDose
    region: HighDoseRegion
    region_dose: DoseStatistics
    warnings: list[str] = field(default_factory=list)
    #: The planning CT on the follow-up grid (registration review: checkerboard, overlay), when
    #: asked for.
    planning_ct: sitk.Image | None = None


def prepare_case(
    case: Case,
    data: CaseData,
    *,
    tau: float = DEFAULT_TAU,
    registration: RegistrationOptions | None = None,
    progress: Callable[[str], None] | None = None,
    carry_planning_ct: bool = False,
) -> PreparedCase:
    """Register, carry the dose over and derive the high-dose region of one case.

    ``progress`` is told the name of each step ("register", "dose", "prompts") as it starts.
    ``carry_planning_ct`` also resamples the planning CT onto the follow-up, for review.

    Raises
    ------
    worker.errors.RegistrationError
        Registration could not run.
    worker.errors.PromptError
        No usable high-dose region on the follow-up.
    """
    tell = progress or (lambda _: None)
    tell("register")
    result = register_case(case, data, registration)
    transform = result.transform
    if not is_linear(transform):
        # A B-spline is slow to evaluate per voxel; a 2 mm displacement field gives the same
        # dose within 0.01 Gy at a sixth of the cost (reference/stack_notes.md §3c).
        transform = to_displacement_field(transform, data.followup.image, 2.0)
    tell("dose")
    dose = map_dose(data.dose.image, data.followup.image, transform)
    tell("prompts")
    prepared = with_region(result, dose, tau)
    if carry_planning_ct:
        prepared.planning_ct = planning_on_followup(data.planning_ct.image, data.followup.image, transform)
    return prepared


#: What the planning CT shows where it does not reach the follow-up: air.
AIR_HU = -1000


def planning_on_followup(planning: sitk.Image, followup: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """The planning CT resampled onto the follow-up grid (int16 HU) through the registration."""
    return sitk.Resample(planning, followup, transform, sitk.sitkLinear, AIR_HU, sitk.sitkInt16)


def with_region(registration: RegistrationResult, dose: MappedDose, tau: float) -> PreparedCase:
    """The high-dose region of a dose already on the follow-up grid, its dose figures and the
    warnings; a job's later stages rebuild their :class:`PreparedCase` from saved files this way."""
    region = high_dose_region(dose.image, tau)
    mask = sitk.GetImageFromArray(region.mask.astype("uint8"))
    mask.CopyInformation(dose.image)
    prepared = PreparedCase(registration, dose, region, mask_dose_statistics(mask, dose.image))
    prepared.warnings = _warnings(prepared)
    return prepared


def _warnings(prepared: PreparedCase) -> list[str]:
    warnings = [f"registration needs review: {flag}" for flag in prepared.registration.flags]
    # The dose grid normally covers only part of a head scan; what matters is whether the
    # high-dose region runs into the edge of the follow-up, where it would be cut off.
    if _touches_border(prepared.region.mask):
        warnings.append(
            "the high-dose region reaches the edge of the follow-up field of view "
            f"(dose covers {prepared.dose.coverage_percent:.0f}% of it); the region may be clipped"
        )
    return warnings


def _touches_border(mask: np.ndarray) -> bool:
    return any(mask.take(0, axis=axis).any() or mask.take(-1, axis=axis).any() for axis in range(mask.ndim))
