"""Transform files, composition order, linear part and the displacement field for dose resampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from worker.errors import InputError
from worker.stages.register.images import image_centre
from worker.stages.register.transforms import (
    compose,
    is_linear,
    linear_part,
    read_transform,
    rotation_degrees,
    to_displacement_field,
    write_transform,
)


def _reference() -> sitk.Image:
    image = sitk.Image([60, 50, 30], sitk.sitkFloat32)
    image.SetSpacing([1.6, 1.6, 2.5])
    image.SetOrigin([-48.0, -40.0, -100.0])
    # An oblique follow-up: the field must follow the image axes, not the patient axes.
    image.SetDirection(sitk.VersorTransform([0.0, 0.0, 1.0], np.radians(10.0)).GetMatrix())
    return image


def _rigid() -> sitk.Euler3DTransform:
    return sitk.Euler3DTransform([0.0, 0.0, -90.0], 0.05, -0.03, 0.07, [4.0, -7.0, 9.0])


def _bspline(reference: sitk.Image) -> sitk.BSplineTransform:
    # Over the reference padded by a few voxels, as the deformable stage makes it: a B-spline
    # is the identity outside its domain.
    padded = sitk.ConstantPad(reference, [3, 3, 3], [3, 3, 3])
    bspline = sitk.BSplineTransformInitializer(padded, [3, 3, 2], order=3)
    rng = np.random.default_rng(3)
    bspline.SetParameters(rng.uniform(-3.0, 3.0, bspline.GetNumberOfParameters()).tolist())
    return bspline


def _points(reference: sitk.Image, count: int = 50) -> np.ndarray:
    rng = np.random.default_rng(5)
    size = np.array(reference.GetSize()) - 1
    indices = rng.uniform(0, 1, (count, 3)) * size
    corners = np.array([[0, 0, 0], size])
    return np.array(
        [reference.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in np.vstack([indices, corners])]
    )


def _mapped(transform: sitk.Transform, points: np.ndarray) -> np.ndarray:
    return np.array([transform.TransformPoint(p.tolist()) for p in points])


@pytest.mark.parametrize("suffix", [".tfm", ".h5"])
def test_rigid_and_composite_round_trip(tmp_path: Path, suffix: str) -> None:
    reference = _reference()
    points = _points(reference)
    for name, transform in {"rigid": _rigid(), "composite": compose(_rigid(), _bspline(reference))}.items():
        path = write_transform(transform, tmp_path / f"{name}{suffix}")
        again = read_transform(path)
        np.testing.assert_allclose(_mapped(again, points), _mapped(transform, points), atol=1e-6)
        assert is_linear(again) == (name == "rigid")


def test_transform_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must end in"):
        write_transform(_rigid(), tmp_path / "t.json")
    with pytest.raises(InputError, match="no such transform file"):
        read_transform(tmp_path / "missing.tfm")
    garbage = tmp_path / "garbage.tfm"
    garbage.write_text("not a transform\n")
    with pytest.raises(InputError, match="not an ITK transform file"):
        read_transform(garbage)


def test_compose_applies_right_to_left() -> None:
    shift = sitk.TranslationTransform(3, [10.0, 0.0, 0.0])
    rotate = sitk.Euler3DTransform([0.0, 0.0, 0.0], 0.0, 0.0, np.pi / 2, [0.0, 0.0, 0.0])
    # rotate(shift(p)): (1,0,0) → (11,0,0) → (0,11,0)
    np.testing.assert_allclose(
        compose(rotate, shift).TransformPoint([1.0, 0.0, 0.0]), [0.0, 11.0, 0.0], atol=1e-9
    )


def test_linear_part_ignores_the_bspline_and_gives_the_rotation() -> None:
    rigid = _rigid()
    matrix, offset = linear_part(compose(rigid, _bspline(_reference())))
    point = np.array([12.0, -30.0, -80.0])
    np.testing.assert_allclose(matrix @ point + offset, rigid.TransformPoint(point.tolist()), atol=1e-9)
    axis_angle = sitk.VersorTransform([1.0, 2.0, 2.0], np.radians(12.5))
    assert rotation_degrees(np.array(axis_angle.GetMatrix()).reshape(3, 3)) == pytest.approx(12.5)


def test_displacement_field_matches_the_composite_over_the_reference() -> None:
    reference = _reference()
    composite = compose(_rigid(), _bspline(reference))
    field = to_displacement_field(composite, reference, spacing_mm=2.0)
    points = _points(reference)
    # Trilinear interpolation of a smooth cubic spline sampled every 2 mm: far below a voxel.
    assert np.abs(_mapped(field, points) - _mapped(composite, points)).max() < 0.1


def test_dose_resampled_through_the_field_matches_the_composite() -> None:
    reference = _reference()
    composite = compose(_rigid(), _bspline(reference))
    dose = _gaussian_dose(centre=np.array(composite.TransformPoint(image_centre(reference).tolist())))
    exact = sitk.Resample(dose, reference, composite, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    fast = sitk.Resample(
        dose, reference, to_displacement_field(composite, reference), sitk.sitkLinear, 0.0, sitk.sitkFloat32
    )
    difference = np.abs(sitk.GetArrayFromImage(exact) - sitk.GetArrayFromImage(fast))
    assert float(sitk.GetArrayFromImage(exact).max()) > 20.0
    assert float(np.percentile(difference, 99)) < 0.1


def _gaussian_dose(centre: np.ndarray, peak_gy: float = 60.0, sigma_mm: float = 25.0) -> sitk.Image:
    """A 2.5 mm dose grid (120 mm cube) holding a Gaussian around ``centre``."""
    spacing, size = 2.5, 48
    origin = centre - spacing * (size - 1) / 2
    axes = [origin[i] + spacing * np.arange(size) for i in range(3)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    r2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
    dose = sitk.GetImageFromArray((peak_gy * np.exp(-r2 / (2 * sigma_mm**2))).astype(np.float32))
    dose.SetSpacing([spacing] * 3)
    dose.SetOrigin([float(v) for v in origin])
    return dose


def test_field_spacing_must_be_positive() -> None:
    with pytest.raises(ValueError, match="spacing_mm"):
        to_displacement_field(_rigid(), _reference(), spacing_mm=0.0)
