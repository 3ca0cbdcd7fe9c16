"""A job's volumes as the web viewer shows them: on an axis-aligned LPS grid, sliced in three planes.

Every layer (the follow-up, the dose on it, the lesion, the planning CT on it) lies on the
follow-up grid, which may be oblique, feet-first or stored in any voxel order. The viewer shows
them on one *display grid* with the identity direction: voxel (i, j, k) at
``origin + (i·sx, j·sy, k·sz)`` in LPS millimetres, so i runs to the patient's left, j to
posterior and k to superior. A follow-up whose axes are a permutation of L, P, S (with any signs)
is only reordered (``DICOMOrient``, no interpolation); an oblique one is resampled onto the
axis-aligned box around it with its own spacing.

The planes follow the radiological convention, as the preview does:

- axial (index k): rows j (anterior at the top), columns i (patient right on the left);
- coronal (index j): rows k from superior down, columns i;
- sagittal (index i): rows k from superior down, columns j (anterior on the left).

A pixel is ``pixel_mm`` wide and high (non-square for thick slices): the browser scales it,
and a click is mapped back to LPS millimetres by :meth:`DisplayGrid.point_mm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import SimpleITK as sitk

Point = tuple[float, float, float]
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


class Plane(StrEnum):
    AXIAL = "axial"
    CORONAL = "coronal"
    SAGITTAL = "sagittal"


@dataclass(frozen=True)
class PlaneShape:
    count: int
    width: int
    height: int
    #: Width and height of one pixel, in mm.
    pixel_mm: tuple[float, float]


@dataclass(frozen=True)
class DisplayGrid:
    """The display grid: ``size`` (nx, ny, nz), ``spacing`` and ``origin`` in LPS mm."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: Point

    @classmethod
    def of(cls, image: sitk.Image) -> DisplayGrid:
        nx, ny, nz = image.GetSize()
        sx, sy, sz = image.GetSpacing()
        x, y, z = image.GetOrigin()
        return cls((nx, ny, nz), (sx, sy, sz), (x, y, z))

    def plane(self, plane: Plane) -> PlaneShape:
        (nx, ny, nz), (sx, sy, sz) = self.size, self.spacing
        if plane is Plane.AXIAL:
            return PlaneShape(nz, nx, ny, (sx, sy))
        if plane is Plane.CORONAL:
            return PlaneShape(ny, nx, nz, (sx, sz))
        return PlaneShape(nx, ny, nz, (sy, sz))

    def voxel(self, plane: Plane, index: int, column: float, row: float) -> tuple[float, float, float]:
        """The (i, j, k) voxel coordinates of a pixel (column, row) of slice ``index`` of ``plane``."""
        top = self.size[2] - 1
        if plane is Plane.AXIAL:
            return (column, row, index)
        if plane is Plane.CORONAL:
            return (column, index, top - row)
        return (index, column, top - row)

    def point_mm(self, voxel: tuple[float, float, float]) -> Point:
        return (
            self.origin[0] + voxel[0] * self.spacing[0],
            self.origin[1] + voxel[1] * self.spacing[1],
            self.origin[2] + voxel[2] * self.spacing[2],
        )

    def voxel_of(self, point: Point) -> tuple[int, int, int]:
        """The nearest voxel of an LPS point, clipped into the grid."""
        return (
            _clip(round((point[0] - self.origin[0]) / self.spacing[0]), self.size[0]),
            _clip(round((point[1] - self.origin[1]) / self.spacing[1]), self.size[1]),
            _clip(round((point[2] - self.origin[2]) / self.spacing[2]), self.size[2]),
        )

    def slice_through(self, plane: Plane, voxel: tuple[int, int, int]) -> int:
        """The index of the ``plane`` slice that holds ``voxel``."""
        return {Plane.AXIAL: voxel[2], Plane.CORONAL: voxel[1], Plane.SAGITTAL: voxel[0]}[plane]


def _clip(value: int, count: int) -> int:
    return min(max(value, 0), count - 1)


def display_reference(followup: sitk.Image) -> sitk.Image:
    """An empty image on the display grid of ``followup`` (only its geometry is used)."""
    if _is_identity(followup.GetDirection()):
        return _geometry_only(followup)
    oriented = sitk.DICOMOrient(_geometry_only(followup), "LPS")
    if _is_identity(oriented.GetDirection()):
        return oriented
    return _axis_aligned_box(oriented)


def on_display_grid(image: sitk.Image, reference: sitk.Image, *, labels: bool = False) -> sitk.Image:
    """``image`` (on the follow-up grid) on the display grid ``reference``.

    Reordered without interpolation where the grids' voxels coincide; resampled otherwise
    (nearest neighbour for ``labels``, linear for intensities; outside the image: its minimum).
    """
    # Most follow-ups are stored in LPS order already: no reordering (and no copy) then.
    oriented = image if _is_identity(image.GetDirection()) else sitk.DICOMOrient(image, "LPS")
    if _same_grid(oriented, reference):
        if oriented is not image:  # never change the caller's image
            oriented.SetOrigin(reference.GetOrigin())  # equal within rounding: one origin for all layers
        return oriented
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    outside = 0.0 if labels else float(np.min(sitk.GetArrayViewFromImage(image)))
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, outside, image.GetPixelID())


def plane_slice(volume: np.ndarray, plane: Plane, index: int) -> np.ndarray:
    """One slice of a display-grid array (``volume[k, j, i]``), rows and columns as shown."""
    if plane is Plane.AXIAL:
        return volume[index, :, :]
    if plane is Plane.CORONAL:
        return volume[::-1, index, :]
    return volume[::-1, :, index]


def _geometry_only(image: sitk.Image) -> sitk.Image:
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    return empty


def _is_identity(direction: tuple[float, ...]) -> bool:
    return bool(np.allclose(direction, _IDENTITY, atol=1e-6))


def _same_grid(image: sitk.Image, reference: sitk.Image) -> bool:
    spacing_tolerance = 1e-4 * max(reference.GetSpacing())
    return (
        image.GetSize() == reference.GetSize()
        and _is_identity(image.GetDirection())
        and np.allclose(image.GetSpacing(), reference.GetSpacing(), atol=spacing_tolerance)
        and np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=spacing_tolerance)
    )


def _axis_aligned_box(image: sitk.Image) -> sitk.Image:
    """An identity-direction grid covering ``image``'s corners, with its spacing per axis."""
    size = image.GetSize()
    corners = np.array(
        [
            image.TransformContinuousIndexToPhysicalPoint((x, y, z))
            for x in (-0.5, size[0] - 0.5)
            for y in (-0.5, size[1] - 0.5)
            for z in (-0.5, size[2] - 0.5)
        ]
    )
    spacing = np.array(image.GetSpacing())
    low, high = corners.min(axis=0), corners.max(axis=0)
    count = np.maximum(np.ceil((high - low) / spacing).astype(int), 1)
    box = sitk.Image([int(n) for n in count], sitk.sitkUInt8)
    box.SetSpacing(tuple(float(s) for s in spacing))
    box.SetOrigin(tuple(float(v) for v in low + spacing / 2))
    box.SetDirection(_IDENTITY)
    return box
