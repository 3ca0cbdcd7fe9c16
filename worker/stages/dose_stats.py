"""Dose statistics inside a structure: Dmean, Dmax, Dmin, D2cc, D98/D50/D2, V50/V60/V70, DVH.

Small structures need partial-volume care: a 1 cc lesion covers a few dozen voxels of a 3 mm dose
grid. Two entry points sample the dose much finer than either grid:

- :func:`mask_dose_statistics` — a voxel mask (a lesion, the high-dose region): every mask voxel
  is split into sub-voxels and the dose is interpolated (linearly) at each sub-voxel centre.
- :func:`contour_dose_statistics` — planar contours (an RTSTRUCT ROI): contours are rasterised
  on a fine in-plane grid and the shape between two contour planes is interpolated through
  signed distance maps, so spheres and cones taper instead of being stacked slabs. The
  structure spans exactly from its first to its last contour plane (no end caps added).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.interpolate import PchipInterpolator

from worker.errors import InputError
from worker.stages.read.rtstruct import polygon_mask

DOSE_LEVELS_GY = (50.0, 60.0, 70.0)
#: Sub-voxel size for masks; finer than any dose grid in use.
MAX_SUB_VOXEL_MM = 1.0
#: At least this many dose samples per structure, however small.
MIN_SAMPLES = 4000
MAX_SPLIT = 8
DVH_STEP_GY = 0.1


@dataclass
class DoseStatistics:
    """Dose figures of one structure; doses in Gy, volumes in cc, V-values in % of the volume."""

    volume_cc: float
    mean_gy: float
    max_gy: float
    min_gy: float
    d2cc_gy: float | None
    d98_gy: float
    d50_gy: float
    d2_gy: float
    v_percent: dict[str, float]
    v_cc: dict[str, float]
    dvh: list[tuple[float, float]] = field(repr=False)


def statistics(doses: np.ndarray, sample_mm3: float) -> DoseStatistics:
    """Figures from dose samples that each stand for ``sample_mm3`` of the structure.

    Raises
    ------
    worker.errors.InputError
        No samples (an empty structure).
    """
    if doses.size == 0:
        raise InputError("the structure is empty; no dose statistics")
    hottest_first = np.sort(doses.astype(np.float64))[::-1]
    volume_mm3 = hottest_first.size * sample_mm3
    return DoseStatistics(
        volume_cc=volume_mm3 / 1000.0,
        mean_gy=float(hottest_first.mean()),
        max_gy=float(hottest_first[0]),
        min_gy=float(hottest_first[-1]),
        d2cc_gy=_dose_to_volume(hottest_first, 2000.0 / sample_mm3) if volume_mm3 >= 2000.0 else None,
        d98_gy=_dose_to_volume(hottest_first, 0.98 * hottest_first.size),
        d50_gy=_dose_to_volume(hottest_first, 0.50 * hottest_first.size),
        d2_gy=_dose_to_volume(hottest_first, 0.02 * hottest_first.size),
        v_percent={
            f"V{level:g}Gy": float(100.0 * np.mean(hottest_first >= level)) for level in DOSE_LEVELS_GY
        },
        v_cc={
            f"V{level:g}Gy": float(np.count_nonzero(hottest_first >= level) * sample_mm3 / 1000.0)
            for level in DOSE_LEVELS_GY
        },
        dvh=cumulative_dvh(hottest_first),
    )


def _dose_to_volume(hottest_first: np.ndarray, samples: float) -> float:
    """The least dose received by the hottest ``samples`` samples (linear between samples)."""
    # Sample i (0-based) is the dose at which i + 0.5 samples are at least as hot.
    positions = np.arange(hottest_first.size) + 0.5
    return float(np.interp(samples, positions, hottest_first))


def cumulative_dvh(doses: np.ndarray, step_gy: float = DVH_STEP_GY) -> list[tuple[float, float]]:
    """(dose, % of volume receiving at least that dose) from 0 Gy to Dmax in ``step_gy`` steps."""
    levels = np.arange(0.0, float(doses.max()) + step_gy, step_gy)
    ascending = np.sort(doses)
    at_least = ascending.size - np.searchsorted(ascending, levels, side="left")
    return [
        (round(float(d), 4), float(100.0 * n / ascending.size)) for d, n in zip(levels, at_least, strict=True)
    ]


def mask_dose_statistics(
    mask: sitk.Image,
    dose: sitk.Image,
    transform: sitk.Transform | None = None,
    max_sub_voxel_mm: float = MAX_SUB_VOXEL_MM,
) -> DoseStatistics:
    """Statistics of ``dose`` inside a voxel ``mask``, with sub-voxel dose sampling.

    Parameters
    ----------
    mask: SimpleITK.Image
        Non-zero voxels are the structure.
    dose: SimpleITK.Image
        Dose in Gy on any grid.
    transform: SimpleITK.Transform, optional
        Maps mask-space points to dose-space points (identity when omitted).
    """
    array = sitk.GetArrayFromImage(mask) != 0
    if not array.any():
        raise InputError("the structure is empty; no dose statistics")
    low, high = np.argwhere(array).min(axis=0), np.argwhere(array).max(axis=0) + 1
    crop = array[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    split = _split(mask.GetSpacing(), int(crop.sum()), max_sub_voxel_mm)
    fine = _fine_grid(mask, low[::-1], crop.shape[::-1], split)
    sampled = sitk.Resample(
        dose, fine, transform or sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0, sitk.sitkFloat64
    )
    inside = crop.repeat(split[2], 0).repeat(split[1], 1).repeat(split[0], 2)
    sample_mm3 = float(np.prod(mask.GetSpacing())) / float(np.prod(split))
    return statistics(sitk.GetArrayViewFromImage(sampled)[inside], sample_mm3)


def _split(spacing: Sequence[float], voxels: int, max_sub_voxel_mm: float) -> tuple[int, int, int]:
    """Sub-voxels per voxel along (x, y, z): fine enough in mm and in sample count."""
    by_count = int(np.ceil((MIN_SAMPLES / max(voxels, 1)) ** (1.0 / 3.0)))
    x, y, z = (min(MAX_SPLIT, max(int(np.ceil(s / max_sub_voxel_mm)), by_count, 1)) for s in spacing)
    return (x, y, z)


def _fine_grid(
    image: sitk.Image, low: Sequence[int], size: Sequence[int], split: Sequence[int]
) -> sitk.Image:
    """A grid covering voxels [low, low + size) of ``image``, each split ``split`` times."""
    spacing = np.asarray(image.GetSpacing()) / np.asarray(split)
    # The first sub-voxel centre sits half a sub-voxel inside the first voxel's corner.
    first = np.asarray(low, dtype=float) - 0.5 + 0.5 / np.asarray(split)
    fine = sitk.Image([int(n * k) for n, k in zip(size, split, strict=True)], sitk.sitkUInt8)
    fine.SetSpacing(tuple(float(s) for s in spacing))
    fine.SetDirection(image.GetDirection())
    fine.SetOrigin(image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in first)))
    return fine


def contour_dose_statistics(
    contours: Sequence[np.ndarray],
    dose: sitk.Image,
    in_plane_mm: float = 0.25,
    between_planes_mm: float = 0.25,
) -> DoseStatistics:
    """Statistics of ``dose`` inside a structure given as closed planar contours (LPS, mm).

    Contours on one plane combine by XOR (holes); planes must share one normal.
    """
    stack = _ContourStack.from_contours(contours, in_plane_mm)
    doses: list[np.ndarray] = []
    weights: list[float] = []
    for lower, upper in zip(stack.planes[:-1], stack.planes[1:], strict=True):
        count = max(1, int(np.ceil((upper - lower) / between_planes_mm)))
        step = (upper - lower) / count
        masks = stack.interpolated_masks(lower, upper, count)
        fine = stack.grid(lower + 0.5 * step, step, count)
        # A copy, not a view: the resampled image is a temporary.
        sampled = sitk.GetArrayFromImage(
            sitk.Resample(
                dose, fine, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0, sitk.sitkFloat64
            )
        )
        doses.append(sampled[masks])
        weights.append(step * in_plane_mm**2)
    if len(stack.planes) == 1:
        raise InputError("a structure with a single contour plane has no volume")
    # Every gap samples the same in-plane area per point; only the step along the normal varies.
    samples = np.concatenate([np.repeat(w, d.size) for w, d in zip(weights, doses, strict=True)])
    values = np.concatenate(doses)
    return _weighted_statistics(values, samples)


def _weighted_statistics(values: np.ndarray, sample_mm3: np.ndarray) -> DoseStatistics:
    if np.allclose(sample_mm3, sample_mm3[0]):
        return statistics(values, float(sample_mm3[0]))
    # Unequal slabs: replicate samples in proportion to their volume (exact for rational ratios).
    units = np.maximum(1, np.round(sample_mm3 / sample_mm3.min()).astype(int))
    return statistics(np.repeat(values, units), float(sample_mm3.min()))


@dataclass
class _ContourStack:
    """Contour planes rasterised on one fine in-plane grid, with signed distance maps."""

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    normal: np.ndarray
    spacing: float
    shape: tuple[int, int]
    planes: list[float]
    distance: dict[float, np.ndarray]

    @classmethod
    def from_contours(cls, contours: Sequence[np.ndarray], spacing: float) -> _ContourStack:
        points = [np.asarray(c, dtype=np.float64).reshape(-1, 3) for c in contours if len(c) >= 3]
        if not points:
            raise InputError("the structure has no contour with three points or more")
        normal = _normal(points)
        u = np.cross(normal, [0.0, 1.0, 0.0] if abs(normal[1]) < 0.9 else [1.0, 0.0, 0.0])
        u /= np.linalg.norm(u)
        v = np.cross(normal, u)
        every = np.concatenate(points)
        lo = np.array([(every @ u).min(), (every @ v).min()]) - 2 * spacing
        hi = np.array([(every @ u).max(), (every @ v).max()]) + 2 * spacing
        shape = (int(np.ceil((hi[1] - lo[1]) / spacing)) + 1, int(np.ceil((hi[0] - lo[0]) / spacing)) + 1)
        origin = lo[0] * u + lo[1] * v
        stack = cls(origin, u, v, normal, spacing, shape, [], {})
        stack._rasterise(points)
        return stack

    def _rasterise(self, points: list[np.ndarray]) -> None:
        masks: dict[float, np.ndarray] = {}
        vertices: dict[float, np.ndarray] = {}
        for contour in points:
            plane = round(float(np.median(contour @ self.normal)), 3)
            cols = (contour @ self.u - self.origin @ self.u) / self.spacing
            rows = (contour @ self.v - self.origin @ self.v) / self.spacing
            mask = masks.setdefault(plane, np.zeros(self.shape, dtype=bool))
            mask ^= polygon_mask(rows, cols, *self.shape)
            marks = vertices.setdefault(plane, np.zeros(self.shape, dtype=bool))
            marks[np.round(rows).astype(int), np.round(cols).astype(int)] = True
        self.planes = sorted(masks)
        self.distance = {p: _signed_distance(masks[p], vertices[p]) for p in self.planes}

    def interpolated_masks(self, lower: float, upper: float, count: int) -> np.ndarray:
        """Masks at ``count`` sub-slice centres between two planes, shape (count, rows, cols).

        The signed distance of each pixel is interpolated across all planes with a monotone
        cubic (PCHIP): curved surfaces (a sphere near its pole) keep their bulge, where linear
        interpolation would cut every cap into a cone; monotonicity avoids overshoot.
        """
        positions = lower + (np.arange(count) + 0.5) * (upper - lower) / count
        if len(self.planes) < 3:
            t = ((positions - lower) / (upper - lower))[:, None, None]
            return ((1.0 - t) * self.distance[lower] + t * self.distance[upper]) < 0.0
        return self._interpolator(positions) < 0.0

    @cached_property
    def _interpolator(self) -> PchipInterpolator:
        return PchipInterpolator(self.planes, np.stack([self.distance[p] for p in self.planes]), axis=0)

    def grid(self, first: float, step: float, count: int) -> sitk.Image:
        """A SimpleITK grid of ``count`` sub-slices starting at normal position ``first``."""
        image = sitk.Image([self.shape[1], self.shape[0], count], sitk.sitkUInt8)
        image.SetSpacing((self.spacing, self.spacing, step))
        image.SetDirection(tuple(float(x) for x in np.column_stack([self.u, self.v, self.normal]).ravel()))
        image.SetOrigin(tuple(float(x) for x in self.origin + first * self.normal))
        return image


def _normal(points: list[np.ndarray]) -> np.ndarray:
    """The common unit normal of planar contours (Newell's method on the largest one)."""
    largest = max(points, key=len)
    following = np.roll(largest, -1, axis=0)
    normal = np.array(
        [
            np.sum((largest[:, 1] - following[:, 1]) * (largest[:, 2] + following[:, 2])),
            np.sum((largest[:, 2] - following[:, 2]) * (largest[:, 0] + following[:, 0])),
            np.sum((largest[:, 0] - following[:, 0]) * (largest[:, 1] + following[:, 1])),
        ]
    )
    if np.linalg.norm(normal) == 0:
        raise InputError("contours are degenerate (no area); no dose statistics")
    normal /= np.linalg.norm(normal)
    # Orient the normal along its dominant positive patient axis so plane positions increase.
    return normal if normal[np.argmax(np.abs(normal))] > 0 else -normal


def _signed_distance(mask: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Signed distance in pixels: negative inside, positive outside.

    A contour too small to cover a pixel centre (the tip of a cone, the pole of a sphere) is
    a point: distance to its vertices, so the shape tapers towards it between planes.
    """
    if not mask.any():
        return np.asarray(ndimage.distance_transform_edt(~vertices))
    return np.asarray(ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask))
