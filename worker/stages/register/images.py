"""Images prepared for registration: float32 working grids and body masks.

Registration never runs on the scans as received. Each image is cast to float32 (SimpleITK's
registration refuses mixed or integer pixel types), smoothed and resampled onto a grid of about
``spacing_mm`` (never finer than the scan itself along any axis), and given a body mask. Working
on a 2 mm grid instead of sub-millimetre voxels is what keeps a 256×256×160 pair within seconds;
measured on the synthetic heads it loses nothing against the full-resolution answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

#: CT numbers above this (HU) count as body: keeps fat (-100) and drops air and most lung (-800).
CT_BODY_HU = -400.0
#: For other images (MR), body is above this fraction of the 99th intensity percentile.
BODY_FRACTION_OF_P99 = 0.1
#: Voxels of a body mask below this are treated as "no body found".
MIN_BODY_VOXELS = 100
#: Margin around the fixed body in which the metric samples: the skin/air edge is the strongest
#: feature both modalities share, so it must stay inside the sampled region.
SAMPLING_MARGIN_MM = 6.0
#: The QA metric is evaluated on every n-th voxel (per axis) of the sampling region.
EVALUATION_STEP = 2


@dataclass(frozen=True)
class WorkingImage:
    """One image on its working grid.

    Attributes
    ----------
    image: SimpleITK.Image
        float32, smoothed and resampled to the working spacing.
    body: SimpleITK.Image
        uint8 body mask on the same grid (1 inside).
    """

    image: sitk.Image
    body: sitk.Image


@dataclass(frozen=True)
class ImagePair:
    """Fixed (follow-up) and moving (planning CT) images on their working grids."""

    fixed: WorkingImage
    moving: WorkingImage
    spacing_mm: float

    @cached_property
    def sampling_region(self) -> sitk.Image:
        """Where the metric samples: the fixed body and a margin around it (uint8 mask)."""
        return dilate(self.fixed.body, SAMPLING_MARGIN_MM)

    @cached_property
    def evaluation_region(self) -> sitk.Image:
        """The sampling region on a regular lattice, for deterministic metric values.

        SimpleITK's MetricEvaluate uses every voxel of the mask (it ignores random sampling);
        every second voxel per axis gives the same value to the third decimal at 1/8 the cost.
        """
        region = sitk.GetArrayFromImage(self.sampling_region)
        lattice = np.zeros_like(region)
        step = EVALUATION_STEP
        lattice[::step, ::step, ::step] = region[::step, ::step, ::step]
        mask = sitk.GetImageFromArray(lattice)
        mask.CopyInformation(self.sampling_region)
        return mask


def prepare_pair(
    fixed: sitk.Image, moving: sitk.Image, *, fixed_modality: str, spacing_mm: float
) -> ImagePair:
    """Bring both images onto working grids of about ``spacing_mm`` and find their bodies.

    The moving image is the planning CT (its body threshold is the CT one whatever its header
    says); the fixed image uses the threshold of ``fixed_modality``.
    """
    fixed_work = working_image(fixed, spacing_mm, modality=fixed_modality)
    moving_work = working_image(moving, spacing_mm, modality="CT")
    return ImagePair(fixed=fixed_work, moving=moving_work, spacing_mm=spacing_mm)


def working_image(image: sitk.Image, spacing_mm: float, *, modality: str) -> WorkingImage:
    """Resample ``image`` to a working grid and compute its body mask there."""
    resampled = downsample(image, spacing_mm)
    return WorkingImage(image=resampled, body=body_mask(resampled, modality))


def downsample(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Low-pass, then resample onto a grid with spacing ``max(spacing_mm, native)`` per axis.

    Block averages over whole voxels come first (cheap, and already a low-pass filter), then a
    Gaussian brings the smoothing up to σ ≈ half the new spacing along the axes that get
    coarser. Without it thin bright structures (cortical bone, vessels) flicker in and out of
    the coarse grid and the metric surface gets noisy. The new grid keeps the outer corner of
    the image and never reaches beyond its last voxel centre (no padding values at the edge).
    """
    image = sitk.Cast(image, sitk.sitkFloat32)
    native = np.array(image.GetSpacing())
    target = np.maximum(native, spacing_mm)
    if np.allclose(target, native):
        return image
    factors = [max(1, int(t / n + 1e-6)) for t, n in zip(target, native, strict=True)]
    if max(factors) > 1:
        image = sitk.BinShrink(image, factors)
    shrunk = np.array(image.GetSpacing())
    # A block average of width w has variance w²/12; the Gaussian adds the rest.
    residual = (0.5 * target) ** 2 - np.where(np.array(factors) > 1, shrunk**2 / 12.0, 0.0)
    sigmas = [
        float(np.sqrt(r)) if t > n * 1.01 else 0.0 for r, t, n in zip(residual, target, native, strict=True)
    ]
    smoothed = _smooth(image, sigmas)
    size = np.maximum(1, np.floor(np.array(image.GetSize()) * shrunk / target + 1e-6)).astype(int)
    return sitk.Resample(
        smoothed,
        [int(s) for s in size],
        sitk.Transform(),
        sitk.sitkLinear,
        _corner_origin(image, shrunk, target),
        [float(t) for t in target],
        image.GetDirection(),
        float(np.min(sitk.GetArrayViewFromImage(image))),
        sitk.sitkFloat32,
    )


def _smooth(image: sitk.Image, sigmas_mm: list[float]) -> sitk.Image:
    # The recursive Gaussian takes one σ per axis but refuses σ = 0, so an axis to be left
    # alone gets a σ far below one voxel instead. It also needs four voxels along every axis;
    # a thinner image (a coarse level of a small scan) gets the discrete Gaussian.
    if min(image.GetSize()) < 4:
        return sitk.DiscreteGaussian(image, [s * s for s in sigmas_mm], 32, 0.01, True)
    floor = [0.01 * s for s in image.GetSpacing()]
    return sitk.SmoothingRecursiveGaussian(image, [max(s, f) for s, f in zip(sigmas_mm, floor, strict=True)])


def _corner_origin(image: sitk.Image, native: np.ndarray, target: np.ndarray) -> tuple[float, ...]:
    # Keep the outer corner of the first voxel where it was: the new first voxel centre moves
    # half a new voxel inwards from that corner, along the image axes.
    direction = np.array(image.GetDirection()).reshape(3, 3)
    shift = direction @ ((target - native) / 2.0)
    return tuple(float(v) for v in np.array(image.GetOrigin()) + shift)


def body_threshold(image: sitk.Image, modality: str) -> float:
    """Intensity above which a voxel counts as body.

    CT uses a HU threshold when the image is in HU (air near -1000); anything else, or a CT
    without HU-like values, uses a fraction of the 99th percentile (MR background is noise
    well below a tenth of tissue signal).
    """
    values = sitk.GetArrayViewFromImage(image)
    if modality.upper() == "CT" and float(values.min()) < -500.0:
        return CT_BODY_HU
    return float(BODY_FRACTION_OF_P99 * np.percentile(values, 99))


def body_mask(image: sitk.Image, modality: str) -> sitk.Image:
    """Body mask (uint8): thresholded, specks opened away, largest component, holes filled.

    Done in scipy: SimpleITK's binary morphology is ~10× slower at these sizes.
    """
    inside = sitk.GetArrayViewFromImage(image) > body_threshold(image, modality)
    inside = ndimage.binary_opening(inside)
    labels, count = ndimage.label(inside)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        inside = labels == int(sizes.argmax())
    mask = sitk.GetImageFromArray(ndimage.binary_fill_holes(inside).astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def mask_voxels(mask: sitk.Image) -> int:
    """Number of voxels set in ``mask``."""
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))


def mask_centroid(mask: sitk.Image) -> np.ndarray | None:
    """Physical centre of mass of a mask (mm, LPS), or None for an (almost) empty mask."""
    indices = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    if len(indices) < MIN_BODY_VOXELS:
        return None
    mean_ijk = indices.mean(axis=0)[::-1]  # the array is z, y, x; SimpleITK indices are x, y, z
    return np.array(mask.TransformContinuousIndexToPhysicalPoint([float(v) for v in mean_ijk]))


def image_centre(image: sitk.Image) -> np.ndarray:
    """Physical point at the centre of the image's voxel grid (mm, LPS)."""
    centre = [(size - 1) / 2.0 for size in image.GetSize()]
    return np.array(image.TransformContinuousIndexToPhysicalPoint(centre))


def dilate(mask: sitk.Image, radius_mm: float) -> sitk.Image:
    """Dilate a mask by about ``radius_mm`` (at least one voxel along each axis).

    In scipy, one voxel per pass with a box per axis: SimpleITK's binary dilation is ~10×
    slower at these sizes.
    """
    array = sitk.GetArrayFromImage(mask) > 0
    radius = [max(1, round(radius_mm / s)) for s in mask.GetSpacing()[::-1]]
    for axis, passes in enumerate(radius):
        structure = np.ones([3 if a == axis else 1 for a in range(3)], dtype=bool)
        array = ndimage.binary_dilation(array, structure, iterations=passes)
    dilated = sitk.GetImageFromArray(array.astype(np.uint8))
    dilated.CopyInformation(mask)
    return dilated


def coarsen(pair: ImagePair, spacing_mm: float) -> ImagePair:
    """The pair on coarser working grids (a pyramid level), with bodies recomputed there."""
    return ImagePair(
        fixed=_coarsen(pair.fixed, spacing_mm),
        moving=_coarsen(pair.moving, spacing_mm),
        spacing_mm=spacing_mm,
    )


def _coarsen(work: WorkingImage, spacing_mm: float) -> WorkingImage:
    # Resampling the mask with the image (nearest neighbour) rather than thresholding again
    # keeps the fixed body identical across levels whatever the modality.
    image = downsample(work.image, spacing_mm)
    body = sitk.Resample(work.body, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return WorkingImage(image=image, body=body)
