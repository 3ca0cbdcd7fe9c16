"""The viewer's geometry: any follow-up grid shown on an axis-aligned LPS display grid.

Each follow-up geometry (head-first, feet-first, a sagittal acquisition, non-square pixels, an
oblique one) is built with SimpleITK and checked the way the viewer uses it: a marker voxel at a
known LPS point must appear at the pixel whose ``point_mm`` is that point, in each plane, with the
radiological orientation the module promises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import SimpleITK as sitk

from worker.viewer.volumes import DisplayGrid, Plane, display_reference, on_display_grid, plane_slice

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
MARKER = 100.0
L, P, S = 0, 1, 2


def _rotation(x_degrees: float, z_degrees: float) -> tuple[float, ...]:
    """Row-major direction matrix: a rotation about x, then about z."""
    a, b = math.radians(x_degrees), math.radians(z_degrees)
    about_x = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    about_z = np.array([[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]])
    return tuple(float(v) for v in (about_z @ about_x).ravel())


@dataclass(frozen=True)
class Geometry:
    name: str
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    #: Row-major; column c is the LPS direction of voxel axis c.
    direction: tuple[float, ...]
    #: The (i, j, k) voxel of the follow-up that holds the marker.
    marker: tuple[int, int, int]
    oblique: bool = False

    def image(self, array: np.ndarray) -> sitk.Image:
        """An image of this geometry with ``array`` (shape (nz, ny, nx)) as its voxels."""
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def zeros(self, dtype: type = np.float32) -> np.ndarray:
        return np.zeros(self.size[::-1], dtype)

    def lps_of_voxels(self) -> np.ndarray:
        """The LPS point of every voxel centre, shape (nz, ny, nx, 3)."""
        k, j, i = np.meshgrid(*(np.arange(n) for n in self.size[::-1]), indexing="ij")
        index = np.stack([i, j, k], axis=-1) * np.asarray(self.spacing)
        return np.asarray(self.origin) + index @ np.asarray(self.direction).reshape(3, 3).T

    def continuous_index(self, points: np.ndarray) -> np.ndarray:
        """Points (..., 3) in LPS mm as continuous (i, j, k) voxel indices of this geometry."""
        direction = np.asarray(self.direction).reshape(3, 3)
        return ((points - np.asarray(self.origin)) @ np.linalg.inv(direction).T) / np.asarray(self.spacing)


GEOMETRIES = [
    Geometry("head-first-supine", (12, 10, 8), (1.0, 1.0, 2.0), (-6.0, -20.0, 30.0), IDENTITY, (3, 7, 5)),
    # i to the patient's right, k inferior: both reversed on the display grid.
    Geometry(
        "feet-first",
        (12, 10, 8),
        (0.8, 0.8, 2.5),
        (10.0, -5.0, 40.0),
        (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
        (2, 6, 1),
    ),
    # A sagittal acquisition: columns run posterior, rows inferior, slices to the patient's right.
    Geometry(
        "sagittal-acquisition",
        (11, 9, 7),
        (0.9, 1.1, 3.0),
        (25.0, -30.0, 60.0),
        (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
        (8, 2, 4),
    ),
    Geometry("non-square-pixels", (16, 12, 6), (0.5, 0.9, 3.0), (-4.0, 7.0, -12.0), IDENTITY, (11, 3, 4)),
    Geometry(
        "oblique", (14, 12, 10), (1.0, 1.2, 1.5), (3.0, -8.0, 15.0), _rotation(15.0, 15.0), (7, 5, 4), True
    ),
]
NON_OBLIQUE = [g for g in GEOMETRIES if not g.oblique]
OBLIQUE = next(g for g in GEOMETRIES if g.oblique)


def _ids(geometry: Geometry) -> str:
    return geometry.name


def marker_image(geometry: Geometry) -> tuple[sitk.Image, tuple[float, float, float]]:
    """An image of zeros with MARKER at ``geometry.marker``, and that voxel's LPS point."""
    array = geometry.zeros()
    i, j, k = geometry.marker
    array[k, j, i] = MARKER
    image = geometry.image(array)
    x, y, z = image.TransformIndexToPhysicalPoint(geometry.marker)
    return image, (x, y, z)


def tolerance_mm(geometry: Geometry, grid: DisplayGrid) -> float:
    """Exact (rounding only) for a reorder; half a voxel diagonal where the grid was resampled."""
    return 0.5 * float(np.linalg.norm(grid.spacing)) if geometry.oblique else 1e-6


def displayed(image: sitk.Image, *, labels: bool = False) -> tuple[DisplayGrid, np.ndarray]:
    reference = display_reference(image)
    return DisplayGrid.of(reference), sitk.GetArrayFromImage(on_display_grid(image, reference, labels=labels))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_ids)
def test_the_display_grid_is_axis_aligned_and_covers_the_followup(geometry: Geometry) -> None:
    image = geometry.image(geometry.zeros())
    reference = display_reference(image)

    assert reference.GetDirection() == pytest.approx(IDENTITY, abs=1e-9)
    grid = DisplayGrid.of(reference)
    low = np.asarray(grid.origin) - np.asarray(grid.spacing) / 2
    high = low + np.asarray(grid.size) * np.asarray(grid.spacing)
    corners = [
        image.TransformContinuousIndexToPhysicalPoint((x, y, z))
        for x in (-0.5, geometry.size[0] - 0.5)
        for y in (-0.5, geometry.size[1] - 0.5)
        for z in (-0.5, geometry.size[2] - 0.5)
    ]
    for corner in corners:
        assert np.all(np.asarray(corner) >= low - 1e-6) and np.all(np.asarray(corner) <= high + 1e-6)


@pytest.mark.parametrize("geometry", NON_OBLIQUE, ids=_ids)
def test_a_reordered_grid_keeps_the_voxels_and_their_size(geometry: Geometry) -> None:
    grid, _ = displayed(geometry.image(geometry.zeros()))

    # Each display axis is one follow-up axis: same count and spacing, taken in L, P, S order.
    axis_of = np.abs(np.asarray(geometry.direction).reshape(3, 3)).argmax(axis=1)
    assert grid.size == tuple(geometry.size[a] for a in axis_of)
    assert grid.spacing == pytest.approx(tuple(geometry.spacing[a] for a in axis_of))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_ids)
def test_the_marker_lands_on_the_voxel_that_voxel_of_names(geometry: Geometry) -> None:
    image, point = marker_image(geometry)
    grid, array = displayed(image)

    i, j, k = grid.voxel_of(point)
    if geometry.oblique:
        # Resampled linearly: the marker is spread over its neighbours, brightest next to it.
        pk, pj, pi = np.unravel_index(int(np.argmax(array)), array.shape)
        assert array[k, j, i] > 0
        assert math.dist(grid.point_mm((float(pi), float(pj), float(pk))), point) <= tolerance_mm(
            geometry, grid
        )
    else:
        assert array[k, j, i] == MARKER
        assert np.count_nonzero(array) == 1
        assert grid.point_mm((i, j, k)) == pytest.approx(point, abs=1e-6)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_ids)
@pytest.mark.parametrize("plane", list(Plane), ids=str)
def test_each_plane_shows_the_marker_at_its_lps_point(geometry: Geometry, plane: Plane) -> None:
    image, point = marker_image(geometry)
    grid, array = displayed(image)

    index = grid.slice_through(plane, grid.voxel_of(point))
    pixels = plane_slice(array, plane, index)
    shape = grid.plane(plane)
    assert pixels.shape == (shape.height, shape.width)
    assert 0 <= index < shape.count
    row, column = np.unravel_index(int(np.argmax(pixels)), pixels.shape)
    assert pixels[row, column] > 0
    shown_at = grid.point_mm(grid.voxel(plane, index, float(column), float(row)))
    assert math.dist(shown_at, point) <= tolerance_mm(geometry, grid)


def coordinate_image(geometry: Geometry, axis: int) -> sitk.Image:
    """Each voxel holds its own LPS coordinate along ``axis`` (mm): a linear function of position,
    which linear resampling reproduces exactly inside the image."""
    return geometry.image(geometry.lps_of_voxels()[..., axis].astype(np.float64))


def inside(geometry: Geometry, grid: DisplayGrid, plane: Plane, index: int) -> np.ndarray:
    """Which pixels of a display slice lie within the follow-up's voxel centres (where linear
    interpolation needs no value from outside)."""
    shape = grid.plane(plane)
    rows, columns = np.meshgrid(np.arange(shape.height), np.arange(shape.width), indexing="ij")
    voxel = grid.voxel(plane, index, columns, rows)  # type: ignore[arg-type]  # arrays: every pixel
    voxels = np.stack(np.broadcast_arrays(*voxel), axis=-1)
    points = np.asarray(grid.origin) + voxels * np.asarray(grid.spacing)
    continuous = geometry.continuous_index(points)
    return np.all((continuous >= -1e-6) & (continuous <= np.asarray(geometry.size) - 1 + 1e-6), axis=-1)


#: (plane, axis of the slice array, LPS coordinate, sign): the coordinate grows (+1) or falls (-1)
#: by one pixel spacing per step down the rows (axis 0) or along the columns (axis 1).
CONVENTIONS = [
    # Axial: posterior further down, so anterior at the top; the patient's left further right,
    # so the patient's right on the image's left.
    (Plane.AXIAL, 0, P, +1),
    (Plane.AXIAL, 1, L, +1),
    # Coronal: superior at the top; the patient's right on the image's left.
    (Plane.CORONAL, 0, S, -1),
    (Plane.CORONAL, 1, L, +1),
    # Sagittal: superior at the top; anterior on the left.
    (Plane.SAGITTAL, 0, S, -1),
    (Plane.SAGITTAL, 1, P, +1),
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_ids)
@pytest.mark.parametrize(("plane", "step_axis", "coordinate", "sign"), CONVENTIONS)
def test_planes_follow_the_radiological_convention(
    geometry: Geometry, plane: Plane, step_axis: int, coordinate: int, sign: int
) -> None:
    grid, array = displayed(coordinate_image(geometry, coordinate))
    index = grid.plane(plane).count // 2
    pixels = plane_slice(array, plane, index)
    valid = inside(geometry, grid, plane, index)

    steps = np.diff(pixels, axis=step_axis)
    both_inside = valid[1:, :] & valid[:-1, :] if step_axis == 0 else valid[:, 1:] & valid[:, :-1]
    assert both_inside.sum() >= 4, "enough of the slice lies inside the follow-up to judge"
    assert steps[both_inside] == pytest.approx(sign * grid.spacing[coordinate], abs=1e-6)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_ids)
@pytest.mark.parametrize("plane", list(Plane), ids=str)
def test_every_pixel_shows_the_value_found_at_its_point_mm(geometry: Geometry, plane: Plane) -> None:
    images = [displayed(coordinate_image(geometry, axis)) for axis in (L, P, S)]
    grid = images[0][0]
    index = grid.plane(plane).count // 3
    valid = inside(geometry, grid, plane, index)

    slices = [plane_slice(array, plane, index) for _, array in images]
    assert valid.any()
    for row, column in zip(*np.nonzero(valid), strict=True):
        shown = [float(pixels[row, column]) for pixels in slices]
        expected = grid.point_mm(grid.voxel(plane, index, float(column), float(row)))
        assert shown == pytest.approx(expected, abs=1e-6), (row, column)


@pytest.mark.parametrize("geometry", NON_OBLIQUE, ids=_ids)
def test_a_reorder_moves_values_without_interpolating(geometry: Geometry) -> None:
    original = np.arange(1, math.prod(geometry.size) + 1, dtype=np.int16).reshape(geometry.size[::-1])
    image = geometry.image(original)
    reference = display_reference(image)
    shown = on_display_grid(image, reference)
    grid, array = DisplayGrid.of(reference), sitk.GetArrayFromImage(shown)

    assert shown.GetPixelID() == image.GetPixelID()
    assert np.array_equal(np.sort(array, axis=None), np.sort(original, axis=None))
    k, j, i = np.meshgrid(*(np.arange(n) for n in array.shape), indexing="ij")
    points = np.asarray(grid.origin) + np.stack([i, j, k], axis=-1) * np.asarray(grid.spacing)
    source = geometry.continuous_index(points)
    assert source == pytest.approx(np.round(source), abs=1e-6), "display voxels are follow-up voxels"
    si, sj, sk = np.round(source).astype(int).transpose(3, 0, 1, 2)
    assert np.array_equal(array, original[sk, sj, si])


@pytest.mark.parametrize("dtype", [np.uint8, np.float32], ids=["uint8", "float32"])
def test_labels_stay_zero_or_one_on_an_oblique_grid(dtype: type) -> None:
    labels = OBLIQUE.zeros(dtype)
    labels[3:7, 4:9, 5:10] = 1
    _, array = displayed(OBLIQUE.image(labels), labels=True)

    assert array.dtype == dtype
    assert set(np.unique(array).tolist()) == {0, 1}


def test_an_oblique_intensity_image_is_its_minimum_outside() -> None:
    values = OBLIQUE.zeros()
    values[...] = 40.0
    values[0, 0, 0] = -1000.0
    grid, array = displayed(OBLIQUE.image(values))

    # The display box's corners lie outside the rotated follow-up.
    corners = [array[k, j, i] for k in (0, -1) for j in (0, -1) for i in (0, -1)]
    assert corners == [-1000.0] * 8
    assert grid.size != OBLIQUE.size, "the rotated box is larger than the follow-up"
