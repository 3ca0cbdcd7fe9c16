"""Coordinates between patient space, the 1 mm working grid and the network's crops: in one place.

The working grid is 1 mm isotropic with the voxel axes of a RAS+ canonical volume (axis 0 towards
the patient's right, 1 anterior, 2 superior), because SAM-Med3D was trained on volumes passed
through TorchIO's ``ToCanonical`` and takes clicks in that tensor order (reference/sam_med3d.md
§5). Arrays here are indexed [i, j, k] in that order; patient coordinates are DICOM LPS mm.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from models.errors import PromptInputError

WORKING_SPACING_MM = 1.0
# LPS direction cosines (as columns) of the RAS+ voxel axes.
WORKING_DIRECTION = np.diag([-1.0, -1.0, 1.0])
# Neighbouring tiles overlap by half a crop when a box is larger than one crop.
TILE_OVERLAP = 0.5


@dataclass(frozen=True)
class WorkingGrid:
    """A 1 mm grid in RAS+ voxel axes; ``origin`` is the LPS position of voxel (0, 0, 0)."""

    origin: tuple[float, float, float]
    size: tuple[int, int, int]
    spacing: float = WORKING_SPACING_MM

    @classmethod
    def covering(cls, image: sitk.Image, spacing: float = WORKING_SPACING_MM) -> WorkingGrid:
        """The smallest working grid that holds every voxel centre of ``image``."""
        corners = np.array([image.TransformContinuousIndexToPhysicalPoint(c) for c in _index_corners(image)])
        axes = corners @ WORKING_DIRECTION  # coordinates along the working axes
        lo, hi = axes.min(axis=0), axes.max(axis=0)
        size = tuple(math.floor((h - low) / spacing + 1e-6) + 1 for low, h in zip(lo, hi, strict=True))
        origin = tuple(float(v) for v in WORKING_DIRECTION @ lo)
        return cls(
            origin=(origin[0], origin[1], origin[2]), size=(size[0], size[1], size[2]), spacing=spacing
        )

    def sub_grid(self, start: Sequence[int], size: Sequence[int]) -> WorkingGrid:
        """The part of this grid from index ``start`` with ``size`` voxels per axis."""
        origin = self.index_to_patient(np.asarray([start], dtype=np.float64))[0]
        return WorkingGrid(
            origin=(float(origin[0]), float(origin[1]), float(origin[2])),
            size=(int(size[0]), int(size[1]), int(size[2])),
            spacing=self.spacing,
        )

    def reference_image(self) -> sitk.Image:
        image = sitk.Image([int(s) for s in self.size], sitk.sitkUInt8)
        image.SetOrigin(self.origin)
        image.SetSpacing([self.spacing] * 3)
        image.SetDirection(WORKING_DIRECTION.flatten().tolist())
        return image

    def patient_to_index(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) LPS mm → (N, 3) continuous working indices."""
        offsets = np.asarray(points, dtype=np.float64) - np.asarray(self.origin)
        return np.asarray((offsets @ WORKING_DIRECTION) / self.spacing)

    def index_to_patient(self, indices: np.ndarray) -> np.ndarray:
        """(N, 3) continuous working indices → (N, 3) LPS mm."""
        steps = np.asarray(indices, dtype=np.float64) * self.spacing
        return np.asarray(self.origin) + steps @ WORKING_DIRECTION.T

    def resample(self, image: sitk.Image, *, linear: bool = True, default: float = 0.0) -> np.ndarray:
        """``image`` on this grid as a float32 [i, j, k] array (outside the image: ``default``)."""
        interpolator = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
        resampled = sitk.Resample(
            sitk.Cast(image, sitk.sitkFloat32),
            self.reference_image(),
            sitk.Transform(),
            interpolator,
            default,
        )
        return to_working_array(resampled)

    def to_image(self, array: np.ndarray) -> sitk.Image:
        """A working-grid [i, j, k] array as a SimpleITK image with this geometry."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
        image.SetOrigin(self.origin)
        image.SetSpacing([self.spacing] * 3)
        image.SetDirection(WORKING_DIRECTION.flatten().tolist())
        return image


def to_working_array(image: sitk.Image) -> np.ndarray:
    """SimpleITK arrays are [k, j, i]; the network's tensors are [i, j, k]."""
    return np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)))


@dataclass(frozen=True)
class Crop:
    """A cube of the working grid fed to the network; ``start`` may lie outside (padded)."""

    start: tuple[int, int, int]
    size: int

    def shifted(self, offset: Sequence[int]) -> Crop:
        start = tuple(int(s + o) for s, o in zip(self.start, offset, strict=True))
        return Crop(start=(start[0], start[1], start[2]), size=self.size)

    def grid_to_crop(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(indices, dtype=np.float64) - np.asarray(self.start)

    def contains(self, crop_indices: np.ndarray) -> np.ndarray:
        """Which (N, 3) crop-space points lie inside the crop's voxel extent."""
        pts = np.asarray(crop_indices)
        return np.all((pts >= -0.5) & (pts <= self.size - 0.5), axis=-1)

    def extract(self, volume: np.ndarray, pad_value: float) -> np.ndarray:
        """The crop's voxels, with ``pad_value`` where it reaches beyond the volume."""
        out = np.full((self.size,) * 3, pad_value, dtype=np.float32)
        src, dst = self._overlap(volume.shape)
        if src is not None and dst is not None:
            out[dst] = volume[src]
        return out

    def add_into(self, target: np.ndarray, values: np.ndarray, weights: np.ndarray) -> None:
        """Accumulate crop values (and a count) into working-grid arrays, for tile averaging."""
        src, dst = self._overlap(target.shape)
        if src is not None and dst is not None:
            target[src] += values[dst]
            weights[src] += 1

    def _overlap(self, shape: tuple[int, ...]) -> tuple[tuple[slice, ...] | None, tuple[slice, ...] | None]:
        src: list[slice] = []
        dst: list[slice] = []
        for start, extent in zip(self.start, shape, strict=True):
            lo, hi = max(start, 0), min(start + self.size, extent)
            if lo >= hi:
                return None, None
            src.append(slice(lo, hi))
            dst.append(slice(lo - start, hi - start))
        return tuple(src), tuple(dst)


def plan_crops(lo: np.ndarray, hi: np.ndarray, crop_size: int) -> list[Crop]:
    """Crops that cover the inclusive working-index box [lo, hi].

    A box that fits is centred in one crop (TorchIO's CropOrPad centring on the box centre). A
    larger one is tiled per axis with half-crop overlap, first and last tiles flush with the box.
    """
    starts_per_axis = [_axis_starts(float(a), float(b), crop_size) for a, b in zip(lo, hi, strict=True)]
    return [Crop(start=(s0, s1, s2), size=crop_size) for s0, s1, s2 in itertools.product(*starts_per_axis)]


def covered_region(crops: Sequence[Crop], grid_size: Sequence[int]) -> tuple[list[int], list[int]]:
    """Start and size of the part of a grid that the crops cover (only that is resampled)."""
    starts = np.array([c.start for c in crops])
    start = np.maximum(starts.min(axis=0), 0)
    stop = np.minimum(starts.max(axis=0) + crops[0].size, np.asarray(grid_size))
    if np.any(stop <= start):
        raise PromptInputError("the box lies outside the image")
    return [int(v) for v in start], [int(v) for v in stop - start]


def _axis_starts(lo: float, hi: float, crop: int) -> list[int]:
    if hi < lo:
        raise PromptInputError("box corners are inverted: the maximum corner lies below the minimum")
    first, last = math.floor(lo), math.ceil(hi)
    extent = last - first + 1
    if extent <= crop:
        return [math.floor((first + last + 1) / 2 - crop / 2)]
    step = crop * (1 - TILE_OVERLAP)
    count = math.ceil((extent - crop) / step) + 1
    span = extent - crop
    return [first + round(span * t / (count - 1)) for t in range(count)]


def foreground_stats(values: np.ndarray) -> tuple[float, float]:
    """SAM-Med3D's ZNormalization statistics: mean and (unbiased) std over values > 0."""
    foreground = values[values > 0]
    if foreground.size < 2:
        raise PromptInputError("the image has no foreground (no voxel above 0) to normalise by")
    mean, std = float(foreground.mean(dtype=np.float64)), float(foreground.std(dtype=np.float64, ddof=1))
    if std == 0.0:
        raise PromptInputError("the image's foreground is constant; it cannot be normalised")
    return mean, std


def zscore_foreground(volume: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Normalise by :func:`foreground_stats` of the same values, applied everywhere."""
    mean, std = foreground_stats(volume)
    return ((volume - mean) / std).astype(np.float32), mean, std


def _index_corners(image: sitk.Image) -> list[tuple[float, float, float]]:
    size = image.GetSize()
    return [
        (float(a), float(b), float(c))
        for a, b, c in itertools.product((0, size[0] - 1), (0, size[1] - 1), (0, size[2] - 1))
    ]
