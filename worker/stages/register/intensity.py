"""Intensity-based registration of a follow-up scan (fixed) to the planning CT (moving).

Inputs: two 3D SimpleITK images and the follow-up modality.
Output: :class:`~worker.stages.register.result.RegistrationResult` — the fixed → moving
transform, how it was made, its QA figures, review flags and notes.

Steps: working grids and body masks (``images``), rigid (``rigid``), QA (``qa``), then the
deformable refinement (``deformable``) where it is asked for or where the default rule keeps it.

Default rule for the deformable refinement (``deformable=None``), from the measurements on the
synthetic patients in the tests and ``benchmarks/registration.py`` (true transform: rigid plus
a smooth bump of up to 2.5 mm near the lesion):

1. Try it only for a CT follow-up (CT → CT). There the B-spline lowered the mean target error
   from 0.35–0.50 to 0.15–0.25 mm. For an MR follow-up it lowered the error at the lesion
   (1.5 → 0.9 mm) but raised the mean over the head from 0.35–0.40 to 0.65–0.95 mm in every
   setting tried: inside the skull CT has no soft-tissue contrast to hold the control grid,
   and MI then follows MR-only contrast. The brain, the CE/CRN target, moves rigidly with
   the skull anyway.
2. Try it only when the rigid result has no review flags: a deformation on top of a wrong
   rigid answer would hide it.
3. Keep it only when the metric improves by at least ``MIN_DEFORMABLE_GAIN`` (relative), the
   Jacobian determinant stays within the QA range (no folding) and the body overlap does not
   drop. Otherwise the rigid result is returned and a note says why.

``deformable=True`` always returns the deformable result (flagged if implausible);
``deformable=False`` never runs it.
"""

from __future__ import annotations

import time

import SimpleITK as sitk

from worker.errors import InputError, RegistrationError
from worker.stages.register.deformable import register_bspline
from worker.stages.register.images import MIN_BODY_VOXELS, ImagePair, mask_voxels, prepare_pair
from worker.stages.register.qa import QALimits, assess, plausibility_flags
from worker.stages.register.result import RegistrationMethod, RegistrationQA, RegistrationResult
from worker.stages.register.rigid import register_rigid
from worker.stages.register.similarity import MetricSettings

#: Working grid of the registration (mm). Stopping at 2 mm costs nothing in accuracy here and
#: keeps a 256×256×160 pair within seconds (reference/stack_notes.md §3b, DESIGN.md §7).
WORKING_SPACING_MM = 2.0
#: Threads used when the caller does not say; a fixed number, not the core count, so that the
#: same inputs and seed give the same transform on every machine.
DEFAULT_THREADS = 2
#: Fewer voxels than this along an axis is not a volume that can be registered.
MIN_VOXELS_PER_AXIS = 4
#: Relative improvement of the metric a deformable refinement must bring to be kept by default.
MIN_DEFORMABLE_GAIN = 0.01


def register_images(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    fixed_modality: str,
    deformable: bool | None = None,
    seed: int = 42,
    threads: int | None = None,
) -> RegistrationResult:
    """Register the follow-up ``fixed`` to the planning CT ``moving``.

    Parameters
    ----------
    fixed: SimpleITK.Image
        Follow-up scan (CT or MR), 3D, one component per voxel.
    moving: SimpleITK.Image
        Planning CT, 3D.
    fixed_modality: str
        DICOM Modality of the follow-up ("CT", "MR"); sets its body threshold and the
        deformable default.
    deformable: bool, optional
        True: always refine with a B-spline; False: rigid only; None (default): the rule in
        the module docstring.
    seed: int
        Seed of the metric's random sampling.
    threads: int, optional
        Threads of the optimiser (default :data:`DEFAULT_THREADS`). The result is
        reproducible for a given seed and thread count.

    Returns
    -------
    RegistrationResult
        ``needs_review`` is True when a QA figure is implausible; such a result must not be
        used without a person looking at it.

    Raises
    ------
    worker.errors.InputError
        If an image is not a 3D scalar volume.
    worker.errors.RegistrationError
        If the registration cannot run at all (no body in an image, or no overlap from any
        start, twice).
    """
    started = time.perf_counter()
    _check_volume(fixed, "fixed (follow-up)")
    _check_volume(moving, "moving (planning CT)")
    metric = MetricSettings(seed=seed, threads=_thread_count(threads))
    pair = prepare_pair(fixed, moving, fixed_modality=fixed_modality, spacing_mm=WORKING_SPACING_MM)
    _check_body(pair.fixed.body, "follow-up")
    _check_body(pair.moving.body, "planning CT")
    rigid = register_rigid(pair, metric)
    result = RegistrationResult(rigid, RegistrationMethod.RIGID, assess(pair, rigid, metric))
    result.flags = plausibility_flags(result.qa)
    if _should_try_deformable(deformable, fixed_modality, result):
        result = _refine(pair, result, metric, forced=deformable is True)
    result.qa.seconds = time.perf_counter() - started
    return result


def _check_volume(image: sitk.Image, role: str) -> None:
    if image.GetDimension() != 3 or min(image.GetSize()) < MIN_VOXELS_PER_AXIS:
        raise InputError(
            f"the {role} image must be a 3D volume with at least {MIN_VOXELS_PER_AXIS} voxels "
            f"along each axis, got size {image.GetSize()}"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"the {role} image has {image.GetNumberOfComponentsPerPixel()} components per voxel")


def _check_body(body: sitk.Image, role: str) -> None:
    if mask_voxels(body) < MIN_BODY_VOXELS:
        raise RegistrationError(
            f"no body found in the {role} image (blank, or intensities that are neither CT numbers "
            "nor MR signal above a dark background)"
        )


def _thread_count(threads: int | None) -> int:
    if threads is None:
        return DEFAULT_THREADS
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    return threads


def _should_try_deformable(deformable: bool | None, fixed_modality: str, rigid: RegistrationResult) -> bool:
    if deformable is not None:
        return deformable
    if rigid.flags:
        rigid.notes.append("deformable refinement not tried: the rigid result needs review first")
        return False
    if fixed_modality.upper() != "CT":
        rigid.notes.append(f"deformable refinement not tried: {fixed_modality} follow-up (rigid by default)")
        return False
    return True


def _refine(
    pair: ImagePair, rigid: RegistrationResult, metric: MetricSettings, *, forced: bool
) -> RegistrationResult:
    composite = register_bspline(pair, rigid.transform, metric)
    if composite is None:
        rigid.notes.append("deformable refinement failed in the optimiser; the rigid result is kept")
        return rigid
    qa = assess(pair, composite, metric, before=rigid.qa)
    refined = RegistrationResult(composite, RegistrationMethod.RIGID_BSPLINE, qa, plausibility_flags(qa))
    reason = None if forced else _reason_to_discard(rigid.qa, qa)
    if reason is not None:
        rigid.notes.append(f"deformable refinement not kept: {reason}")
        return rigid
    return refined


def _reason_to_discard(rigid: RegistrationQA, refined: RegistrationQA) -> str | None:
    limits = QALimits()
    if rigid.metric_after is None or refined.metric_after is None:
        return "metric not computable"
    gain = (rigid.metric_after - refined.metric_after) / abs(rigid.metric_after)
    if gain < MIN_DEFORMABLE_GAIN:
        return f"metric gain {100 * gain:.1f}% is below {100 * MIN_DEFORMABLE_GAIN:g}%"
    low, high = limits.jacobian_range
    jacobian = (refined.jacobian_min, refined.jacobian_max)
    if jacobian[0] is None or jacobian[1] is None or jacobian[0] < low or jacobian[1] > high:
        return f"Jacobian determinant {jacobian[0]}–{jacobian[1]} outside {low:g}–{high:g}"
    before, after = rigid.body_overlap_after, refined.body_overlap_after
    if before is not None and (after is None or after < before - limits.overlap_tolerance):
        return f"body overlap dropped from {before:.3f} to {after}"
    return None
