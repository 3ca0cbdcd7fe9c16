"""The planning dose carried onto the follow-up grid, and its coverage of the follow-up."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from worker.stages.dose_map import map_dose


def _image(size, spacing, origin, values=None, pixel=sitk.sitkFloat32):
    image = sitk.Image(size, pixel)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if values is not None:
        filled = sitk.GetImageFromArray(values.astype(np.float64))
        filled.CopyInformation(image)
        return filled
    return image


def _linear_dose() -> sitk.Image:
    """Dose = 20 + 0.5 x + 0.25 y + 0.1 z on a 3 mm grid covering x, y, z ∈ [−30, 30)."""
    size, spacing, origin = (20, 20, 20), (3.0, 3.0, 3.0), (-28.5, -28.5, -28.5)
    z, y, x = np.indices(size[::-1]).astype(float) * 3.0 - 28.5
    return _image(size, spacing, origin, 20.0 + 0.5 * x + 0.25 * y + 0.1 * z)


def _value(p):
    return 20.0 + 0.5 * p[0] + 0.25 * p[1] + 0.1 * p[2]


def test_same_frame_of_reference_keeps_dose_values() -> None:
    followup = _image((30, 30, 10), (1.0, 1.0, 2.0), (-15.0, -15.0, -10.0))
    mapped = map_dose(_linear_dose(), followup)
    for index in [(0, 0, 0), (12, 20, 5), (29, 29, 9)]:
        point = followup.TransformIndexToPhysicalPoint(index)
        assert mapped.image.GetPixel(index) == pytest.approx(_value(point), abs=1e-4)
    assert mapped.coverage_percent == pytest.approx(100.0)


def test_rigid_transform_moves_the_dose() -> None:
    followup = _image((20, 20, 10), (1.0, 1.0, 2.0), (-10.0, -10.0, -10.0))
    transform = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.0, 0.0, np.radians(10.0), (4.0, -2.0, 1.0))
    mapped = map_dose(_linear_dose(), followup, transform)
    for index in [(0, 0, 0), (10, 5, 3), (19, 19, 9)]:
        point = followup.TransformIndexToPhysicalPoint(index)
        assert mapped.image.GetPixel(index) == pytest.approx(
            _value(transform.TransformPoint(point)), abs=1e-4
        )


def test_outside_the_dose_grid_is_zero_and_coverage_is_reported() -> None:
    # Follow-up spans x ∈ [−60, 59]; the dose grid's voxel centres only x ∈ [−28.5, 28.5].
    followup = _image((120, 10, 5), (1.0, 1.0, 1.0), (-60.0, -5.0, -2.0))
    mapped = map_dose(_linear_dose(), followup)
    values = sitk.GetArrayFromImage(mapped.image)
    assert values[:, :, 0].max() == 0.0 and values[:, :, -1].max() == 0.0
    inside_x = np.arange(-60, 60)
    expected = 100.0 * np.count_nonzero((inside_x >= -30) & (inside_x < 30)) / 120
    assert mapped.coverage_percent == pytest.approx(expected, abs=100.0 / 120 + 1e-9)
    assert 0.0 < mapped.coverage_percent < 100.0


def test_displacement_field_transform_is_accepted() -> None:
    followup = _image((20, 20, 10), (1.0, 1.0, 2.0), (-10.0, -10.0, -10.0))
    field = sitk.Image((12, 12, 12), sitk.sitkVectorFloat64, 3)
    field.SetSpacing((3.0, 3.0, 3.0))
    field.SetOrigin((-18.0, -18.0, -18.0))
    array = sitk.GetArrayFromImage(field)
    array[..., 0] = 2.0  # every point moves 2 mm along x
    displacement = sitk.GetImageFromArray(array, isVector=True)
    displacement.CopyInformation(field)
    transform = sitk.DisplacementFieldTransform(displacement)
    mapped = map_dose(_linear_dose(), followup, transform)
    point = followup.TransformIndexToPhysicalPoint((10, 10, 5))
    assert mapped.image.GetPixel((10, 10, 5)) == pytest.approx(_value(point) + 0.5 * 2.0, abs=1e-4)
