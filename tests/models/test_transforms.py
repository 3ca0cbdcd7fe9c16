"""Working grid and crops: patient coordinates survive every step, whatever the image orientation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from models.errors import PromptInputError
from models.transforms import (
    Crop,
    WorkingGrid,
    covered_region,
    plan_crops,
    to_working_array,
    zscore_foreground,
)

SPHERE_CENTRE_MM = np.array([12.0, -30.0, 45.0])


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


ORIENTATIONS = {
    "axial-hfs": np.eye(3),
    "axial-ffs": np.diag([-1.0, 1.0, -1.0]),
    "prone": np.diag([-1.0, -1.0, 1.0]),
    "oblique": _rotation(np.array([1.0, 0.4, 0.2]), 23.0),
}


def _sphere_image(direction: np.ndarray, spacing: tuple[float, float, float]) -> sitk.Image:
    """A bright sphere (radius 8 mm) at SPHERE_CENTRE_MM in an image of the given geometry."""
    size = (int(80 / spacing[0]), int(80 / spacing[1]), int(80 / spacing[2]))
    image = sitk.Image(size, sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetDirection(direction.flatten().tolist())
    centre_index = (np.array(size) - 1) / 2
    offset = direction @ (centre_index * np.array(spacing))
    image.SetOrigin((SPHERE_CENTRE_MM - offset).tolist())
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    idx = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(np.float64)
    points = np.asarray(image.GetOrigin()) + (idx * np.array(spacing)) @ direction.T
    inside = np.linalg.norm(points - SPHERE_CENTRE_MM, axis=1) <= 8.0
    array = np.where(inside, 100.0, 10.0).reshape(size[::-1]).astype(np.float32)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def test_working_axes_are_ras_canonical() -> None:
    grid = WorkingGrid(origin=(5.0, 6.0, 7.0), size=(10, 10, 10))
    steps = grid.index_to_patient(np.eye(3)) - np.array(grid.origin)
    # axis 0 → patient right (LPS −x), axis 1 → anterior (−y), axis 2 → superior (+z)
    assert np.allclose(steps, [[-1, 0, 0], [0, -1, 0], [0, 0, 1]])
    points = np.array([[1.5, -2.0, 30.25], [-40.0, 7.0, 0.0]])
    assert np.allclose(grid.index_to_patient(grid.patient_to_index(points)), points)


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.5)])
def test_sphere_lands_at_its_patient_position(name: str, spacing: tuple[float, float, float]) -> None:
    image = _sphere_image(ORIENTATIONS[name], spacing)
    grid = WorkingGrid.covering(image)
    array = grid.resample(image)
    assert array.shape == grid.size
    bright = np.argwhere(array > 55.0)
    centroid_mm = grid.index_to_patient(bright.mean(axis=0)[None])[0]
    assert np.linalg.norm(centroid_mm - SPHERE_CENTRE_MM) < 0.35
    volume_mm3 = len(bright) * grid.spacing**3
    assert volume_mm3 == pytest.approx(4 / 3 * np.pi * 8.0**3, rel=0.08)


def test_grid_to_image_round_trip_keeps_geometry() -> None:
    grid = WorkingGrid(origin=(1.0, 2.0, 3.0), size=(4, 5, 6))
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    image = grid.to_image(array)
    assert image.GetSize() == (4, 5, 6)
    # Value at working index (i, j, k) is found at that index's patient position.
    point = grid.index_to_patient(np.array([[3, 1, 2]]))[0]
    assert image[image.TransformPhysicalPointToIndex(point.tolist())] == array[3, 1, 2]
    assert np.array_equal(to_working_array(image), array)


def test_crop_extract_and_paste_with_padding() -> None:
    volume = np.arange(6 * 6 * 6, dtype=np.float32).reshape(6, 6, 6)
    crop = Crop(start=(-2, 3, 0), size=4)
    patch = crop.extract(volume, pad_value=-1.0)
    assert patch.shape == (4, 4, 4)
    assert np.all(patch[:2] == -1.0)  # before the volume on axis 0
    assert np.all(patch[:, 3:] == -1.0)  # beyond it on axis 1
    assert np.array_equal(patch[2:, :3, :], volume[0:2, 3:6, 0:4])
    total, counts = np.zeros_like(volume), np.zeros_like(volume)
    crop.add_into(total, patch, counts)
    assert counts.sum() == 2 * 3 * 4
    assert np.array_equal(total[0:2, 3:6, 0:4], volume[0:2, 3:6, 0:4])
    assert Crop(start=(10, 0, 0), size=4).extract(volume, 0.0).max() == 0.0


def test_small_box_is_centred_in_one_crop() -> None:
    crops = plan_crops(np.array([40.0, 50.0, 60.0]), np.array([59.0, 69.0, 61.0]), 128)
    assert len(crops) == 1
    centre = np.asarray(crops[0].start) + 63.5
    assert np.allclose(centre, [49.5, 59.5, 60.5], atol=0.5)


def test_large_box_is_tiled_with_overlap_and_fully_covered() -> None:
    lo, hi = np.array([0.0, 10.0, 20.0]), np.array([299.0, 100.0, 20.0])
    crops = plan_crops(lo, hi, 128)
    starts0 = sorted({c.start[0] for c in crops})
    assert len(crops) == len(starts0) == 4  # (300 − 128) / 64 → 3 steps, 4 tiles on axis 0 only
    assert starts0[0] == 0 and starts0[-1] + 127 == 299
    assert all(b - a <= 64 for a, b in itertools.pairwise(starts0))


def test_inverted_box_is_refused() -> None:
    with pytest.raises(PromptInputError, match="inverted"):
        plan_crops(np.array([10.0, 0, 0]), np.array([5.0, 0, 0]), 128)


def test_zscore_over_positive_voxels() -> None:
    volume = np.array([-1000.0, 0.0, 10.0, 20.0, 30.0], dtype=np.float32)
    normalised, mean, std = zscore_foreground(volume)
    assert mean == pytest.approx(20.0) and std == pytest.approx(10.0)
    assert np.allclose(normalised, [-102.0, -2.0, -1.0, 0.0, 1.0])
    with pytest.raises(PromptInputError, match="no foreground"):
        zscore_foreground(np.full(10, -5.0, dtype=np.float32))
    with pytest.raises(PromptInputError, match="constant"):
        zscore_foreground(np.full(10, 5.0, dtype=np.float32))


def test_sub_grid_keeps_patient_positions() -> None:
    grid = WorkingGrid(origin=(10.0, -5.0, 3.0), size=(50, 60, 70))
    sub = grid.sub_grid([7, 11, 13], [20, 20, 20])
    local = np.array([[0.0, 0.0, 0.0], [3.5, 2.0, 19.0]])
    assert np.allclose(sub.index_to_patient(local), grid.index_to_patient(local + np.array([7, 11, 13])))
    assert sub.size == (20, 20, 20)


def test_covered_region_is_clipped_to_the_grid() -> None:
    crops = [Crop(start=(-10, 5, 0), size=8), Crop(start=(-6, 9, 4), size=8)]
    start, size = covered_region(crops, (30, 14, 30))
    assert start == [0, 5, 0] and size == [2, 9, 12]
    with pytest.raises(PromptInputError, match="outside the image"):
        covered_region([Crop(start=(40, 0, 0), size=8)], (30, 30, 30))
