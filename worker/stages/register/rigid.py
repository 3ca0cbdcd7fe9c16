"""Rigid registration: Euler3D, Mattes MI, coarse-to-fine on working grids.

Inputs: an :class:`~worker.stages.register.images.ImagePair` (follow-up fixed, planning CT moving).
Output: a :class:`SimpleITK.Euler3DTransform` mapping fixed points to moving points.

The start matters more than the optimiser. Follow-up scans are often a slab (the mandible, the
brain) of a planning CT that covers the whole head and neck, in a frame of reference whose
origin is wherever the scanner put it. So several starts are scored by the metric on a coarse
grid — the scanner coordinates as they are (identity), the image centres aligned (GEOMETRY),
the body centroids aligned (MOMENTS of the body masks; intensity moments are meaningless for
CT, whose air is -1000), and for a slab a sweep of the slab along the planning CT's slice axis —
the best few are optimised on the coarse grid, and the winner is refined on the working grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk

from worker.errors import RegistrationError
from worker.stages.register.images import ImagePair, coarsen, image_centre, mask_centroid
from worker.stages.register.similarity import (
    MetricSettings,
    configure_metric,
    evaluate_metric,
    metric_mask,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RigidSettings:
    """Optimiser and start-search settings of the rigid stage.

    Attributes
    ----------
    coarse_spacing_mm: float
        Grid of the start search and the first optimisation.
    iterations: int
        Iterations per level (regular-step gradient descent).
    learning_rate_mm: float
        First step, in mm of the largest voxel shift (scales come from physical shifts).
    min_step_mm: float
        The optimiser stops when its step falls below this.
    starts_optimised: int
        How many of the best-scoring starts are optimised on the coarse grid.
    coarse_samples: int
        Metric samples per iteration on the coarse grid (where the working grid's 10 000 would
        be a third of the body; half as many give the same answer in half the time).
    slab_fraction: float
        A fixed body shorter than this fraction of the moving body (along the slice axis) is
        a slab, and the start search sweeps it along that axis.
    sweep_step_mm: float
        Step of that sweep.
    smoothing_mm: float
        Extra Gaussian smoothing (σ) during optimisation; raised, with a coarser start grid,
        once when registration fails.
    """

    coarse_spacing_mm: float = 4.0
    iterations: int = 200
    learning_rate_mm: float = 2.0
    min_step_mm: float = 1e-3
    starts_optimised: int = 2
    coarse_samples: int = 5_000
    slab_fraction: float = 0.75
    sweep_step_mm: float = 10.0
    smoothing_mm: float = 0.0


def register_rigid(
    pair: ImagePair, metric: MetricSettings, settings: RigidSettings | None = None
) -> sitk.Euler3DTransform:
    """Rigidly register ``pair``; retry once with more smoothing before giving up.

    Raises
    ------
    worker.errors.RegistrationError
        When no start gives a computable metric, or every optimisation fails, twice.
    """
    settings = settings or RigidSettings()
    try:
        return _register_once(pair, metric, settings)
    except RegistrationError as first:
        log.info("rigid registration failed (%s); retrying with more smoothing", first)
        # A coarser start grid smooths both images more (σ is half its spacing), which widens
        # the capture range and fills the joint histogram where a sharper one had no overlap.
        smoother = replace(
            settings,
            coarse_spacing_mm=2.0 * settings.coarse_spacing_mm,
            smoothing_mm=settings.smoothing_mm + pair.spacing_mm,
        )
        try:
            return _register_once(pair, metric, smoother)
        except RegistrationError as second:
            raise RegistrationError(
                f"rigid registration failed: {second.message} (also after more smoothing); "
                "check that the follow-up and the planning CT show the same body region"
            ) from second


def _register_once(pair: ImagePair, metric: MetricSettings, settings: RigidSettings) -> sitk.Euler3DTransform:
    coarse = coarsen(pair, max(settings.coarse_spacing_mm, pair.spacing_mm))
    starts = ranked_starts(coarse, metric, settings)
    if not starts:
        raise RegistrationError("the images do not overlap at any start position (metric not computable)")
    coarse_metric = replace(metric, samples=settings.coarse_samples)
    optimised = [
        _optimise(coarse, start, coarse_metric, settings) for start in starts[: settings.starts_optimised]
    ]
    scored = _scored(coarse, [t for t in optimised if t is not None], metric)
    if not scored:
        raise RegistrationError("the optimiser failed from every start position")
    refined = _optimise(pair, scored[0][1], metric, settings)
    return refined if refined is not None else scored[0][1]


def ranked_starts(
    pair: ImagePair, metric: MetricSettings, settings: RigidSettings
) -> list[sitk.Euler3DTransform]:
    """Start transforms sorted by metric (best first); those without overlap are left out."""
    return [transform for _, transform in _scored(pair, start_transforms(pair, settings), metric)]


def _scored(
    pair: ImagePair, transforms: list[sitk.Euler3DTransform], metric: MetricSettings
) -> list[tuple[float, sitk.Euler3DTransform]]:
    scored = [(evaluate_metric(pair, t, metric), t) for t in transforms]
    kept = [(value, t) for value, t in scored if value is not None]
    return sorted(kept, key=lambda item: item[0])


def start_transforms(pair: ImagePair, settings: RigidSettings) -> list[sitk.Euler3DTransform]:
    """Identity, GEOMETRY, body MOMENTS and, for a slab, a sweep along the slice axis."""
    fixed_centre = mask_centroid(pair.fixed.body)
    moving_centre = mask_centroid(pair.moving.body)
    centre = fixed_centre if fixed_centre is not None else image_centre(pair.fixed.image)
    shifts = [np.zeros(3), image_centre(pair.moving.image) - image_centre(pair.fixed.image)]
    if fixed_centre is not None and moving_centre is not None:
        shifts.append(moving_centre - fixed_centre)
        shifts.extend(_slab_shifts(pair, fixed_centre, moving_centre, settings))
    return [_euler(centre, shift) for shift in shifts]


def _slab_shifts(
    pair: ImagePair, fixed_centre: np.ndarray, moving_centre: np.ndarray, settings: RigidSettings
) -> list[np.ndarray]:
    axis = np.array(pair.moving.image.GetDirection()).reshape(3, 3)[:, 2]
    fixed_lo, fixed_hi = _extent(pair.fixed.body, axis)
    moving_lo, moving_hi = _extent(pair.moving.body, axis)
    half = (fixed_hi - fixed_lo) / 2.0
    if fixed_hi - fixed_lo >= settings.slab_fraction * (moving_hi - moving_lo):
        return []
    # Put the slab's centre at positions along the axis from one end of the planning body to
    # the other; across the axis, keep the body centroids aligned.
    across = moving_centre - fixed_centre - axis * float((moving_centre - fixed_centre) @ axis)
    fixed_mid = float(fixed_centre @ axis)
    targets = np.arange(moving_lo + half, moving_hi - half + 1e-6, settings.sweep_step_mm)
    return [across + axis * (target - fixed_mid) for target in targets]


def _extent(mask: sitk.Image, axis: np.ndarray) -> tuple[float, float]:
    indices = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1].astype(float)
    direction = np.array(mask.GetDirection()).reshape(3, 3)
    points = np.array(mask.GetOrigin()) + (indices * np.array(mask.GetSpacing())) @ direction.T
    projected = points @ axis
    return float(projected.min()), float(projected.max())


def _euler(centre: np.ndarray, shift: np.ndarray) -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(v) for v in centre])
    transform.SetTranslation([float(v) for v in shift])
    return transform


def _optimise(
    pair: ImagePair, start: sitk.Euler3DTransform, metric: MetricSettings, settings: RigidSettings
) -> sitk.Euler3DTransform | None:
    """One optimisation on ``pair``'s grids from ``start``; None when ITK gives up."""
    method = sitk.ImageRegistrationMethod()
    configure_metric(method, metric, metric_mask(pair))
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=settings.learning_rate_mm,
        minStep=settings.min_step_mm,
        numberOfIterations=settings.iterations,
        relaxationFactor=0.5,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([1])
    method.SetSmoothingSigmasPerLevel([settings.smoothing_mm])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(sitk.Euler3DTransform(start), inPlace=True)
    try:
        result = method.Execute(pair.fixed.image, pair.moving.image)
    except RuntimeError as exc:
        log.info("rigid optimisation failed: %s", str(exc).strip().splitlines()[-1])
        return None
    return _as_euler(result)


def _as_euler(transform: sitk.Transform) -> sitk.Euler3DTransform:
    # A copy as a plain Euler3DTransform, whatever SimpleITK hands back (the optimised transform
    # or, should it ever come wrapped, the first part of a composite).
    if isinstance(transform, sitk.CompositeTransform):
        transform = transform.GetNthTransform(0)
    return sitk.Euler3DTransform(transform)
