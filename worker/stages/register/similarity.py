"""The similarity metric shared by the rigid and deformable stages and by the QA.

Mattes mutual information, because it works for CT→CT and CT→MR alike (it only assumes that
tissue classes map to intensity classes, not that intensities are equal). Samples are drawn at
random with a fixed seed, and their number is fixed rather than a percentage of the grid, so the
cost per iteration does not grow with the scan size and the same seed gives the same samples.
The thread count is fixed too (ITK's threaded sums are not bit-identical; measured, 1, 2 and 4
threads gave transforms equal to 1e-10 mm, but only a fixed count makes that a guarantee).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import SimpleITK as sitk

from worker.stages.register.images import ImagePair, mask_voxels


@dataclass(frozen=True)
class MetricSettings:
    """How the metric samples the fixed image.

    Attributes
    ----------
    bins: int
        Histogram bins of the Mattes joint PDF: enough for the tissue classes of CT and MR,
        few enough that ten thousand samples still fill the joint histogram.
    samples: int
        Random samples per evaluation inside the (dilated) fixed body mask.
    seed: int
        Seed of the random sampling.
    threads: int
        Threads of the registration method (part of the reproducibility contract).
    """

    bins: int = 32
    samples: int = 10_000
    seed: int = 42
    threads: int = 2


def sampling_fraction(samples: int, mask: sitk.Image, shrink: int = 1) -> float:
    """Fraction of fixed voxels to sample so that about ``samples`` land inside ``mask``.

    SimpleITK draws the fraction over the whole fixed grid and then drops the points outside
    the mask, so the fraction must be taken of the masked voxel count; a pyramid level shrunk
    by ``shrink`` has ``shrink³`` times fewer voxels.
    """
    inside = max(1.0, mask_voxels(mask) / float(shrink**3))
    return min(1.0, samples / inside)


def metric_mask(pair: ImagePair) -> sitk.Image:
    """The region of the fixed image in which the metric samples (computed once per pair)."""
    return pair.sampling_region


def configure_metric(
    method: sitk.ImageRegistrationMethod,
    settings: MetricSettings,
    mask: sitk.Image,
    shrink_factors: Sequence[int] = (1,),
) -> None:
    """Set metric, sampling, mask, interpolator and threads on ``method``."""
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.bins)
    method.SetMetricFixedMask(mask)
    method.SetMetricSamplingStrategy(method.RANDOM)
    fractions = [sampling_fraction(settings.samples, mask, s) for s in shrink_factors]
    method.SetMetricSamplingPercentagePerLevel(fractions, settings.seed)
    # The moving-gradient filter precomputes a gradient image of the whole moving grid at every
    # level; with a few ten thousand samples the on-the-fly central differences are ~3× faster.
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetNumberOfThreads(settings.threads)


def evaluate_metric(
    pair: ImagePair, transform: sitk.Transform, settings: MetricSettings, mask: sitk.Image | None = None
) -> float | None:
    """The metric of ``transform`` on the working grids; None where it cannot be computed.

    Evaluated on every point of ``mask`` (default: the pair's evaluation lattice), so the same
    transform always gets the same value.

    The value cannot be computed when too few samples map into the moving image (no overlap):
    ITK then raises "Joint PDF summed to zero" or "too many samples map outside moving image
    buffer", which here means "no usable alignment", not a failure of the caller.
    """
    method = sitk.ImageRegistrationMethod()
    configure_metric(method, settings, mask if mask is not None else pair.evaluation_region)
    # As the "moving initial" transform rather than the optimised one: ITK refuses a
    # displacement field as the optimised transform unless its grid is the fixed grid.
    method.SetMovingInitialTransform(transform)
    method.SetInitialTransform(sitk.TranslationTransform(3), inPlace=False)
    try:
        return float(method.MetricEvaluate(pair.fixed.image, pair.moving.image))
    except RuntimeError:
        return None
