"""Deformable refinement: a cubic B-spline on top of the rigid result, Mattes MI, L-BFGS-B.

Inputs: the :class:`~worker.stages.register.images.ImagePair` and the rigid transform.
Output: ``CompositeTransform([rigid, bspline])`` — SimpleITK applies the last-added transform
first, so a fixed point is first displaced by the B-spline and then moved rigidly, the same
convention as the synthetic ground truth (``models.synth.transform``).

The pyramid stops at the working grid (2 mm): a B-spline level at full resolution costs
~17 min on a 256×256×160 pair for no measured gain (reference/stack_notes.md §3b). The control
grid is coarse (about 64 mm) because the anatomical changes between planning and
follow-up (weight loss, swelling, neck flexion) are smooth; a fine grid would only fit noise in
the homogeneous interiors, where MI has nothing to hold on to.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk

from worker.stages.register.images import ImagePair
from worker.stages.register.similarity import MetricSettings, configure_metric, metric_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BSplineSettings:
    """Control grid and optimiser settings of the deformable stage.

    Attributes
    ----------
    control_spacing_mm: float
        Control-point spacing (the same grid at every level).
    shrink_factors: tuple[int, ...]
        Pyramid levels on the working grid (2, 1 → 4 mm then 2 mm on the default grid).
    smoothing_mm: tuple[float, ...]
        Gaussian σ per level.
    samples: int
        Metric samples per iteration. More than the rigid stage needs: each B-spline
        parameter sees only the samples within its support.
    iterations: int
        L-BFGS-B iterations per level (line-search steps not counted). Few on purpose: MI has
        no bending penalty here, and on the synthetic CT pairs the error to the true
        deformation was lowest after ~10 iterations and grew again with 30 (the grid starts
        to fit noise in homogeneous tissue) — early stopping is the regulariser.
    """

    control_spacing_mm: float = 64.0
    shrink_factors: tuple[int, ...] = (2, 1)
    smoothing_mm: tuple[float, ...] = (2.0, 0.0)
    samples: int = 15_000
    iterations: int = 10


def register_bspline(
    pair: ImagePair,
    rigid: sitk.Transform,
    metric: MetricSettings,
    settings: BSplineSettings | None = None,
) -> sitk.CompositeTransform | None:
    """Refine ``rigid`` with a B-spline; None when the optimiser fails (the caller keeps rigid)."""
    settings = settings or BSplineSettings()
    bspline = initial_bspline(pair.fixed.image, settings.control_spacing_mm)
    method = sitk.ImageRegistrationMethod()
    configure_metric(
        method, replace(metric, samples=settings.samples), metric_mask(pair), settings.shrink_factors
    )
    method.SetOptimizerAsLBFGSB(
        gradientConvergenceTolerance=1e-5,
        numberOfIterations=settings.iterations,
        maximumNumberOfCorrections=5,
        costFunctionConvergenceFactor=1e7,
    )
    method.SetShrinkFactorsPerLevel(list(settings.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(settings.smoothing_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetMovingInitialTransform(rigid)
    # A plain initial transform, not SetInitialTransformAsBSpline: that one re-fits the grid
    # to each level's fixed image at every level, which drops the padded domain (the outermost
    # scan slices then fall outside the spline, where it jumps to zero displacement), and its
    # mesh refinement between levels makes L-BFGS-B fail ("Size of scales must equal number of
    # local parameters"). One control grid serves every level.
    method.SetInitialTransform(bspline, inPlace=True)
    try:
        method.Execute(pair.fixed.image, pair.moving.image)
    except RuntimeError as exc:
        log.info("B-spline optimisation failed: %s", str(exc).strip().splitlines()[-1])
        return None
    return sitk.CompositeTransform([rigid, bspline])


def initial_bspline(fixed: sitk.Image, control_spacing_mm: float) -> sitk.BSplineTransform:
    """A zero cubic B-spline over the fixed grid with about ``control_spacing_mm`` spacing.

    The domain is the grid padded by two voxels: a B-spline is the identity outside its domain,
    and both the scan's outermost voxel centres (up to half a working voxel beyond the working
    grid's) and the margin of the dose-resampling field must lie inside it.
    """
    extent = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
    mesh = [max(1, math.ceil(e / control_spacing_mm)) for e in extent]
    padded = sitk.ConstantPad(fixed, [2, 2, 2], [2, 2, 2])
    return sitk.BSplineTransformInitializer(padded, mesh, order=3)
