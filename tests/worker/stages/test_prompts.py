"""The high-dose region r and its box, in voxel and patient coordinates, on any follow-up grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from worker.errors import PromptError
from worker.stages.prompts import high_dose_region

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
FFS = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # feet first supine: x and z reversed


def _oblique() -> tuple[float, ...]:
    rotation = sitk.VersorTransform((0.3, 1.0, 0.2), np.radians(25.0))
    return tuple(rotation.GetMatrix())


def _dose_on(
    direction, *, spacing=(1.5, 1.0, 2.0), size=(40, 36, 30), origin=(-25.0, -20.0, -30.0), field=None
):
    """A dose image on a follow-up grid; ``field`` gives Gy at LPS points (N, 3)."""
    image = sitk.Image(size, sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    matrix = np.asarray(direction).reshape(3, 3) * np.asarray(spacing)
    points = np.asarray(origin) + index @ matrix.T
    values = field(points).reshape(size).transpose(2, 1, 0)  # (x, y, z) → (z, y, x)
    dose = sitk.GetImageFromArray(values.astype(np.float32))
    dose.CopyInformation(image)
    return dose, points.reshape(*size, 3).transpose(2, 1, 0, 3)


def _box_field(low, high, peak=70.0, base=20.0):
    low, high = np.asarray(low), np.asarray(high)
    return lambda p: np.where(np.all((p >= low) & (p <= high), axis=-1), peak, base)


@pytest.mark.parametrize(
    ("direction", "origin"),
    [(AXIAL, (-25.0, -20.0, -30.0)), (FFS, (25.0, -20.0, 30.0)), (_oblique(), (-25.0, -20.0, -30.0))],
    ids=["axial-HFS", "FFS", "oblique"],
)
def test_region_and_box_lie_where_the_high_dose_is(direction, origin) -> None:
    low, high = (-8.0, -6.0, -10.0), (6.0, 4.0, 2.0)
    dose, points = _dose_on(direction, origin=origin, field=_box_field(low, high))
    assert np.all((points >= low) & (points <= high), axis=-1).sum() > 100, "the grid must cover the box"
    region = high_dose_region(dose, tau=0.8)
    inside = np.all((points >= low) & (points <= high), axis=-1)
    np.testing.assert_array_equal(region.mask, inside)
    assert region.threshold_gy == pytest.approx(56.0) and region.dmax_gy == pytest.approx(70.0)
    # Every corner of the box is the centre of a voxel of r's bounding box, in patient space.
    corners = np.asarray(region.corners_mm)
    selected = points[inside]
    assert np.all(corners.min(axis=0) <= selected.min(axis=0) + 1e-6)
    assert np.all(corners.max(axis=0) >= selected.max(axis=0) - 1e-6)
    index = np.argwhere(inside)  # z, y, x
    assert region.index_min == tuple(int(v) for v in index.min(axis=0)[::-1])
    assert region.index_max == tuple(int(v) for v in index.max(axis=0)[::-1])
    assert region.corner_min_mm == pytest.approx(dose.TransformIndexToPhysicalPoint(region.index_min))
    assert region.volume_cc == pytest.approx(inside.sum() * 1.5 * 1.0 * 2.0 / 1000.0)


def test_axial_box_corners_are_the_extreme_voxel_centres() -> None:
    dose, _ = _dose_on(AXIAL, field=_box_field((-8.0, -6.0, -10.0), (6.0, 4.0, 2.0)))
    region = high_dose_region(dose)
    # x centres −25 + 1.5i inside [−8, 6] → −7 … 5; y −20 + j in [−6, 4]; z −30 + 2k in [−10, 2].
    assert region.corner_min_mm == pytest.approx((-7.0, -6.0, -10.0))
    assert region.corner_max_mm == pytest.approx((5.0, 4.0, 2.0))


def test_ffs_box_min_index_is_the_patient_max_corner() -> None:
    dose, _ = _dose_on(
        FFS, origin=(25.0, -20.0, 30.0), field=_box_field((-8.0, -6.0, -10.0), (6.0, 4.0, 2.0))
    )
    region = high_dose_region(dose)
    # x and z run backwards on a feet-first grid: the lowest index sits at the largest x and z.
    assert region.corner_min_mm[0] > region.corner_max_mm[0]
    assert region.corner_min_mm[2] > region.corner_max_mm[2]
    # x centres 25 − 1.5i in [−8, 6] → 5.5 … −8; z centres 30 − 2k in [−10, 2] → 2 … −10.
    assert region.corner_min_mm == pytest.approx((5.5, -6.0, 2.0))
    assert region.corner_max_mm == pytest.approx((-8.0, 4.0, -10.0))


def test_largest_component_only() -> None:
    big, small = _box_field((-10, -10, -10), (0, 0, 0)), _box_field((10, 8, 10), (12, 10, 14))
    dose, points = _dose_on(AXIAL, field=lambda p: np.maximum(big(p), small(p)))
    region = high_dose_region(dose)
    assert region.components == 2
    assert not region.mask[np.all(points >= (10, 8, 10), axis=-1)].any()


def test_dmax_uses_tau_of_the_maximum() -> None:
    dose, _ = _dose_on(AXIAL, field=lambda p: 60.0 * np.exp(-np.sum(p**2, axis=-1) / (2 * 8.0**2)))
    region = high_dose_region(dose, tau=0.5)
    values = sitk.GetArrayFromImage(dose)
    assert values[region.mask].min() >= 0.5 * values.max() - 1e-5
    assert region.components == 1


@pytest.mark.parametrize(
    ("field", "tau", "words"),
    [
        (lambda p: np.zeros(len(p)), 0.8, "does not reach the follow-up"),
        (_box_field((0.0, 0.0, 0.0), (0.5, 0.5, 0.5)), 0.8, "cannot frame a 3D prompt"),
        (_box_field((-10.0, -10.0, -2.0), (10.0, 10.0, -1.0)), 0.8, "one voxel thin"),
        (_box_field((-8.0, -6.0, -10.0), (6.0, 4.0, 2.0)), 0.0, "tau must be in"),
        (_box_field((-8.0, -6.0, -10.0), (6.0, 4.0, 2.0)), 1.5, "tau must be in"),
    ],
)
def test_unusable_regions_are_refused(field, tau: float, words: str) -> None:
    dose, _ = _dose_on(AXIAL, field=field)
    with pytest.raises(PromptError, match=words) as caught:
        high_dose_region(dose, tau=tau)
    assert caught.value.code == "no-high-dose-region"
