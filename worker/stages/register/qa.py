"""Registration QA: the figures a physicist checks, and the flags that stop silent use.

Inputs: the working :class:`~worker.stages.register.images.ImagePair` and a fixed → moving
transform. Output: :class:`~worker.stages.register.result.RegistrationQA` and plausibility flags.

"Before" is the scans as they lie in their scanner coordinates (the identity transform), "after"
is the registration. The metric is Mattes MI evaluated on a fixed lattice (every second working
voxel) of the dilated fixed body — SimpleITK's MetricEvaluate ignores random sampling — so
before and after are computed on exactly the same points and are not biased towards the random
samples the optimiser saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from worker.stages.register.images import ImagePair, image_centre
from worker.stages.register.result import RegistrationQA
from worker.stages.register.similarity import MetricSettings, evaluate_metric
from worker.stages.register.transforms import (
    is_linear,
    linear_part,
    rotation_degrees,
    to_displacement_field,
)


@dataclass(frozen=True)
class QALimits:
    """What counts as plausible for a head-and-neck follow-up against its planning CT.

    Attributes
    ----------
    max_rotation_degrees: float
        Patients lie on the couch with the head in a mask or a head rest; a larger rotation
        between two scans means a wrong local optimum (or another body part).
    max_translation_mm: float
        Shift at the follow-up centre. Scans in another frame of reference can legitimately
        be further apart (another scanner's table origin): then the flag asks for a look.
    jacobian_range: tuple[float, float]
        Local volume change allowed for the deformable part; ≤ 0 is folding, which is never
        anatomy, and halving or doubling within a smooth 64 mm control grid is not either.
    min_body_overlap: float
        Dice of the body masks after registration.
    overlap_tolerance: float
        How much lower the body Dice may be after registration than before.
    metric_tolerance: float
        Relative amount by which the metric may be worse after than before (MI is
        negative: lower is better); scans already aligned end up equal, not better.
    """

    max_rotation_degrees: float = 20.0
    max_translation_mm: float = 80.0
    jacobian_range: tuple[float, float] = (0.5, 2.0)
    min_body_overlap: float = 0.8
    overlap_tolerance: float = 0.01
    metric_tolerance: float = 0.005


def assess(
    pair: ImagePair,
    transform: sitk.Transform,
    metric: MetricSettings,
    *,
    before: RegistrationQA | None = None,
) -> RegistrationQA:
    """QA figures of ``transform`` (seconds are left for the caller to fill in).

    ``before`` reuses the "before" figures of an earlier assessment of the same pair.
    """
    if before is None:
        identity = sitk.Transform(3, sitk.sitkIdentity)
        metric_before = evaluate_metric(pair, identity, metric)
        overlap_before = body_overlap(pair, identity)
    else:
        metric_before, overlap_before = before.metric_before, before.body_overlap_before
    matrix, offset = linear_part(transform)
    centre = image_centre(pair.fixed.image)
    jacobian = None
    if not is_linear(transform):
        # A B-spline is evaluated at every voxel of the overlap and the metric: sampled into a
        # field once, the QA costs a tenth, and checks the field the dose will go through.
        transform = to_displacement_field(transform, pair.fixed.image, pair.spacing_mm)
        jacobian = field_jacobian_range(transform.GetDisplacementField())
    return RegistrationQA(
        metric_before=metric_before,
        metric_after=evaluate_metric(pair, transform, metric),
        body_overlap_before=overlap_before,
        body_overlap_after=body_overlap(pair, transform),
        rotation_degrees=rotation_degrees(matrix),
        translation_mm=float(np.linalg.norm(matrix @ centre + offset - centre)),
        jacobian_min=None if jacobian is None else jacobian[0],
        jacobian_max=None if jacobian is None else jacobian[1],
    )


def body_overlap(pair: ImagePair, transform: sitk.Transform) -> float | None:
    """Dice of the fixed body and the moving body mapped onto the fixed grid.

    Counted only where the moving scan has data: a follow-up that reaches beyond the planning
    CT's field of view is not a misregistration. None when nothing overlaps.
    """
    fixed = pair.fixed.body
    moved = _onto_fixed(pair.moving.body, fixed, transform)
    covered = _onto_fixed(_ones_like(pair.moving.body), fixed, transform)
    a = sitk.GetArrayViewFromImage(fixed).astype(bool)
    b = sitk.GetArrayViewFromImage(moved).astype(bool)
    inside = sitk.GetArrayViewFromImage(covered).astype(bool)
    total = int(np.count_nonzero(a & inside)) + int(np.count_nonzero(b & inside))
    if total == 0:
        return None
    return 2.0 * int(np.count_nonzero(a & b & inside)) / total


def _onto_fixed(mask: sitk.Image, fixed: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    return sitk.Resample(mask, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _ones_like(image: sitk.Image) -> sitk.Image:
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    ones.CopyInformation(image)
    return ones + 1


def field_jacobian_range(field: sitk.Image) -> tuple[float, float]:
    """Min and max Jacobian determinant of a displacement-field image (its outer layer left out).

    The outer layer of voxels is left out: there the determinant comes from one-sided
    differences against the edge of the field, not from the deformation.
    """
    # A copy, not GetArrayViewFromImage: a view of the temporary filter output would read
    # freed memory once the image is collected.
    determinant = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field))
    if min(determinant.shape) > 2:
        determinant = determinant[1:-1, 1:-1, 1:-1]
    return float(determinant.min()), float(determinant.max())


def plausibility_flags(qa: RegistrationQA, limits: QALimits | None = None) -> list[str]:
    """Human-readable reasons to review the registration (empty when plausible)."""
    limits = limits or QALimits()
    flags = _motion_flags(qa, limits) + _jacobian_flags(qa, limits)
    return flags + _overlap_flags(qa, limits) + _metric_flags(qa, limits)


def _motion_flags(qa: RegistrationQA, limits: QALimits) -> list[str]:
    flags = []
    if qa.rotation_degrees > limits.max_rotation_degrees:
        flags.append(f"rotation {qa.rotation_degrees:.1f}° is above {limits.max_rotation_degrees:g}°")
    if qa.translation_mm > limits.max_translation_mm:
        flags.append(f"translation {qa.translation_mm:.1f} mm is above {limits.max_translation_mm:g} mm")
    return flags


def _jacobian_flags(qa: RegistrationQA, limits: QALimits) -> list[str]:
    if qa.jacobian_min is None or qa.jacobian_max is None:
        return []
    low, high = limits.jacobian_range
    if qa.jacobian_min <= 0.0:
        return [f"folding: Jacobian determinant down to {qa.jacobian_min:.3f} (≤ 0)"]
    if qa.jacobian_min < low or qa.jacobian_max > high:
        return [f"Jacobian determinant {qa.jacobian_min:.2f}–{qa.jacobian_max:.2f} outside {low:g}–{high:g}"]
    return []


def _overlap_flags(qa: RegistrationQA, limits: QALimits) -> list[str]:
    after, before = qa.body_overlap_after, qa.body_overlap_before
    if after is None:
        return ["no body overlap after registration"]
    flags = []
    if after < limits.min_body_overlap:
        flags.append(f"body overlap (Dice) {after:.3f} is below {limits.min_body_overlap:g}")
    if before is not None and after < before - limits.overlap_tolerance:
        flags.append(f"body overlap (Dice) got worse: {before:.3f} before, {after:.3f} after")
    return flags


def _metric_flags(qa: RegistrationQA, limits: QALimits) -> list[str]:
    after, before = qa.metric_after, qa.metric_before
    if after is None:
        return ["similarity metric not computable after registration"]
    if before is not None and after > before + limits.metric_tolerance * abs(before):
        return [f"similarity metric not improved: {before:.4f} before, {after:.4f} after (lower is better)"]
    return []
