"""Stack geometry: sorting, gaps, non-uniform spacing, tilt, pixel shape, orientation, patient position.

Every series written by tests.factories stores ``linear_field(p)`` at each pixel centre ``p``,
so an image read with correct LPS geometry returns ``linear_field`` at any interior point, whatever
the slice order, gaps, tilt or orientation. The tolerance is the rescale quantisation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from tests.factories import RESCALE_SLOPE, SeriesSpec, axial_positions, linear_field, write_series
from tests.worker.stages.read.sampling import direction, interior_points, sample
from worker.errors import GeometryError
from worker.stages.read.files import read_header
from worker.stages.read.frames import frames_from_dataset
from worker.stages.read.geometry import GeometryPolicy, orientation_label, regularise, sort_frames
from worker.stages.read.series import read_image_series

QUANTUM = RESCALE_SLOPE  # rescale step of the stored values; sampling error stays below it
REFUSE = GeometryPolicy(resample_nonuniform=False, resample_tilt=False)


def _assert_reproduces_field(image: sitk.Image, margin=(1.0, 1.0, 0.0), count: int = 200) -> None:
    points = interior_points(image, count=count, margin=margin)
    np.testing.assert_allclose(sample(image, points), linear_field(points), atol=QUANTUM)


def _positions_at(z: list[float], origin=(-20.0, -16.0)) -> list[list[float]]:
    return [[origin[0], origin[1], v] for v in z]


def test_regular_axial_stack_is_read_without_resampling(tmp_path: Path) -> None:
    volume = read_image_series(write_series(SeriesSpec(positions=axial_positions(6)), tmp_path))
    image = volume.image
    assert image.GetSize() == (20, 16, 6)
    assert image.GetOrigin() == pytest.approx((-20.0, -16.0, -10.0))
    assert image.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))
    np.testing.assert_allclose(direction(image), np.eye(3))
    report = volume.report
    assert (report.uniform, report.resampled, report.missing_slices, report.tilt_degrees) == (
        True,
        False,
        0,
        0.0,
    )
    assert report.orientation == "axial"
    assert volume.warnings == []
    # Exactly at the pixel centres the stored value comes back, not just near them.
    corner = np.array(image.GetOrigin())
    assert sample(image, corner[None])[0] == pytest.approx(linear_field(corner), abs=QUANTUM / 2)
    _assert_reproduces_field(image, margin=(0.0, 0.0, 0.0))


def test_missing_slice_is_reported_and_resampled(tmp_path: Path) -> None:
    z = [-10.0, -8.0, -6.0, -2.0, 0.0, 2.0]  # -4 is missing
    volume = read_image_series(write_series(SeriesSpec(positions=_positions_at(z)), tmp_path))
    report = volume.report
    assert report.missing_slices == 1 and report.gaps == [(2, 1)]
    assert not report.uniform and report.resampled
    assert "1 missing slice(s) detected" in volume.warnings
    assert any("resampled to a regular 2 mm" in w for w in volume.warnings)
    image = volume.image
    assert image.GetSize() == (20, 16, 7)  # the missing slice is interpolated back
    assert image.GetOrigin() == pytest.approx((-20.0, -16.0, -10.0))
    assert image.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))
    _assert_reproduces_field(image)
    # The interpolated slice itself holds the field at z = -4.
    plane = sitk.GetArrayFromImage(image)[3]
    x, y = np.meshgrid(-20.0 + 2 * np.arange(20), -16.0 + 2 * np.arange(16))
    expected = linear_field(np.stack([x, y, np.full_like(x, -4.0)], axis=-1))
    np.testing.assert_allclose(plane, expected, atol=QUANTUM)


def test_missing_slices_refused_by_policy_are_named(tmp_path: Path) -> None:
    z = [-10.0, -8.0, -2.0, 0.0, 2.0]  # -6 and -4 missing after the second sorted slice
    paths = write_series(SeriesSpec(positions=_positions_at(z)), tmp_path)
    with pytest.raises(GeometryError, match=r"2 missing slice\(s\).*after sorted slice\(s\) \[2\].*refused"):
        read_image_series(paths, GeometryPolicy(resample_nonuniform=False))


def test_deliberately_non_uniform_spacing_is_resampled_or_refused(tmp_path: Path) -> None:
    z = [-10.0, -8.0, -6.0, -3.0, 0.0, 2.0]  # 2 mm, then 3 mm steps: not a gap
    paths = write_series(SeriesSpec(positions=_positions_at(z)), tmp_path)
    volume = read_image_series(paths)
    assert volume.report.missing_slices == 0 and not volume.report.uniform
    assert "non-uniform slice spacing" in volume.warnings
    assert volume.image.GetSize()[2] == 7 and volume.image.GetSpacing()[2] == pytest.approx(2.0)
    _assert_reproduces_field(volume.image)
    with pytest.raises(GeometryError, match="slice spacing is not uniform"):
        read_image_series(paths, GeometryPolicy(resample_nonuniform=False))


def test_near_duplicate_positions_do_not_blow_up_the_grid(tmp_path: Path) -> None:
    # A slice re-sent with its position rounded differently, 0.01 mm from the original: a grid at
    # 0.01 mm would have 801 slices here (tens of thousands for a whole CT).
    z = [-10.0, -8.0, -6.0, -5.99, -4.0, -2.0]
    paths = write_series(SeriesSpec(positions=_positions_at(z)), tmp_path)
    with pytest.raises(GeometryError, match=r"only 0\.01 mm apart.*would need 801 slices for 6 received"):
        read_image_series(paths)


def _tilted_spec(degrees: float, count: int = 6, step: float = 2.0) -> SeriesSpec:
    # Gantry tilt: image planes tilted about the patient's left-right axis, slices acquired at
    # table positions 2 mm apart along z, so IPP drifts within the plane from slice to slice.
    t = np.radians(degrees)
    orientation = (1.0, 0.0, 0.0, 0.0, np.cos(t), -np.sin(t))
    positions = [[-20.0, -16.0, -5.0 + k * step] for k in range(count)]
    return SeriesSpec(positions=positions, orientation=orientation)


@pytest.mark.parametrize("degrees", [15.0, 5.0])
def test_gantry_tilt_is_measured_and_resampled(tmp_path: Path, degrees: float) -> None:
    volume = read_image_series(write_series(_tilted_spec(degrees), tmp_path))
    report = volume.report
    assert report.tilt_degrees == pytest.approx(degrees, abs=0.01)
    assert report.resampled and report.uniform
    assert report.slice_spacing == pytest.approx(2.0 * np.cos(np.radians(degrees)), abs=1e-4)
    assert any(f"gantry tilt / sheared stack of {degrees:.2f}°" in w for w in volume.warnings)
    # The regular grid is orthogonal: its third axis is the plane normal, not the table axis.
    t = np.radians(degrees)
    np.testing.assert_allclose(
        direction(volume.image), [[1, 0, 0], [0, np.cos(t), np.sin(t)], [0, -np.sin(t), np.cos(t)]], atol=1e-6
    )
    # Away from the edge the drift uncovers, every point holds the field (shear undone).
    _assert_reproduces_field(volume.image, margin=(2.0, 3.0, 0.0))


@pytest.mark.parametrize("axis", ["x", "y"])
def test_tilt_with_non_square_pixels_shifts_each_axis_by_its_own_spacing(tmp_path: Path, axis: str) -> None:
    # Drift along the rows (tilt about y) or along the columns (tilt about x) of 1.5 x 3.5 mm
    # pixels: swapping row and column spacing in the shear correction would break the field.
    c, s = np.cos(np.radians(10.0)), np.sin(np.radians(10.0))
    orientation = (1, 0, 0, 0, c, -s) if axis == "x" else (c, 0, -s, 0, 1, 0)
    positions = [[-20.0, -16.0, -6.0 + 3.0 * k] for k in range(6)]
    spec = SeriesSpec(
        positions=positions, orientation=orientation, pixel_spacing=(1.5, 3.5), rows=24, cols=12
    )
    volume = read_image_series(write_series(spec, tmp_path))
    assert volume.report.tilt_degrees == pytest.approx(10.0, abs=0.01)
    assert volume.image.GetSpacing()[:2] == pytest.approx((3.5, 1.5))
    _assert_reproduces_field(volume.image, margin=(2.0, 3.0, 0.0))


def test_sheared_stack_with_axial_orientation_is_detected_from_positions(tmp_path: Path) -> None:
    # The orientation says axial, but IPP drifts 0.5 mm in y per 2 mm slice: a 14.04° shear.
    positions = [[-20.0, -16.0 + 0.5 * k, -10.0 + 2.0 * k] for k in range(6)]
    volume = read_image_series(write_series(SeriesSpec(positions=positions), tmp_path))
    assert volume.report.tilt_degrees == pytest.approx(np.degrees(np.arctan(0.25)), abs=0.01)
    np.testing.assert_allclose(direction(volume.image), np.eye(3))
    _assert_reproduces_field(volume.image, margin=(1.0, 3.0, 0.0))


def test_tilt_and_missing_slice_together(tmp_path: Path) -> None:
    spec = _tilted_spec(12.0, count=7)
    spec.positions = [p for k, p in enumerate(spec.positions) if k != 3]
    volume = read_image_series(write_series(spec, tmp_path))
    assert volume.report.missing_slices == 1
    assert volume.report.tilt_degrees == pytest.approx(12.0, abs=0.01)
    assert volume.image.GetSize()[2] == 7
    _assert_reproduces_field(volume.image, margin=(2.0, 3.0, 0.0))


def test_gantry_tilt_refused_by_policy(tmp_path: Path) -> None:
    paths = write_series(_tilted_spec(15.0), tmp_path)
    with pytest.raises(GeometryError, match=r"gantry tilt.*15\.00°.*refused by policy"):
        read_image_series(paths, GeometryPolicy(resample_tilt=False))


def test_tilt_of_a_stack_moving_along_its_normal_is_zero(tmp_path: Path) -> None:
    # Tilted planes stacked along their own normal are a plain oblique stack, not a shear.
    t = np.radians(15.0)
    normal = np.array([0.0, np.sin(t), np.cos(t)])
    positions = [list(np.array([-20.0, -16.0, -5.0]) + 2.0 * k * normal) for k in range(5)]
    spec = SeriesSpec(positions=positions, orientation=(1, 0, 0, 0, np.cos(t), -np.sin(t)))
    volume = read_image_series(write_series(spec, tmp_path), REFUSE)
    assert volume.report.tilt_degrees == 0.0 and not volume.report.resampled
    assert volume.report.orientation == "oblique (nearest axial, 15.0°)"


def test_non_square_pixels_keep_column_spacing_first(tmp_path: Path) -> None:
    # PixelSpacing is (row spacing, column spacing); SimpleITK spacing is (column, row, slice).
    spec = SeriesSpec(positions=axial_positions(5, spacing=2.5), pixel_spacing=(1.5, 3.5), rows=12, cols=10)
    volume = read_image_series(write_series(spec, tmp_path))
    assert volume.image.GetSpacing() == pytest.approx((3.5, 1.5, 2.5))
    assert volume.image.GetSize() == (10, 12, 5)
    assert volume.report.pixel_spacing == (1.5, 3.5)
    # The far corner pixel (last row, last column) sits 9 x 3.5 mm along x and 11 x 1.5 mm along y.
    far = volume.image.TransformIndexToPhysicalPoint((9, 11, 0))
    assert far == pytest.approx((-20.0 + 31.5, -16.0 + 16.5, -10.0))
    _assert_reproduces_field(volume.image, margin=(0.0, 0.0, 0.0))


def _oblique_spec(rotation: Rotation, count: int = 5, spacing: float = 3.0) -> SeriesSpec:
    matrix = rotation.as_matrix()
    row, col, normal = matrix[:, 0], matrix[:, 1], matrix[:, 2]
    positions = axial_positions(count, spacing=spacing, origin=(5.0, -3.0, 7.0), normal=normal)
    return SeriesSpec(positions=positions, orientation=(*row, *col), pixel_spacing=(2.0, 2.5))


def test_oblique_stack_keeps_its_direction_cosines(tmp_path: Path) -> None:
    rotation = Rotation.from_euler("zxy", [30.0, 20.0, -10.0], degrees=True)
    spec = _oblique_spec(rotation)
    volume = read_image_series(write_series(spec, tmp_path), REFUSE)
    np.testing.assert_allclose(direction(volume.image), rotation.as_matrix(), atol=1e-7)
    assert volume.image.GetOrigin() == pytest.approx((5.0, -3.0, 7.0))
    assert volume.image.GetSpacing() == pytest.approx((2.5, 2.0, 3.0))
    assert volume.report.orientation.startswith("oblique (nearest ")
    assert volume.report.tilt_degrees == 0.0 and not volume.report.resampled
    _assert_reproduces_field(volume.image, margin=(0.0, 0.0, 0.0))


@pytest.mark.parametrize(
    ("normal", "label"),
    [
        ((0, 0, 1), "axial"),
        ((0, 1, 0), "coronal"),
        ((-1, 0, 0), "sagittal"),
        ((0, 0.017452, 0.999848), "axial"),
    ],
)
def test_orientation_label_names_the_nearest_plane(normal, label: str) -> None:
    assert orientation_label(np.asarray(normal, float)) == label


def test_orientation_label_calls_tilted_normals_oblique() -> None:
    t = np.radians(20.0)
    assert orientation_label(np.array([0.0, np.sin(t), np.cos(t)])) == "oblique (nearest axial, 20.0°)"


# (orientation, normal) for head-first/feet-first supine/prone axial acquisitions.
PATIENT_POSITIONS = {
    "HFS": ((1, 0, 0, 0, 1, 0), (0, 0, 1)),
    "FFS": ((-1, 0, 0, 0, 1, 0), (0, 0, -1)),
    "HFP": ((-1, 0, 0, 0, -1, 0), (0, 0, 1)),
    "FFP": ((1, 0, 0, 0, -1, 0), (0, 0, -1)),
}


@pytest.mark.parametrize("position", sorted(PATIENT_POSITIONS))
def test_patient_positions_follow_iop_and_ipp(tmp_path: Path, position: str) -> None:
    orientation, normal = PATIENT_POSITIONS[position]
    spec = SeriesSpec(positions=axial_positions(5), orientation=orientation, patient_position=position)
    volume = read_image_series(write_series(spec, tmp_path))
    expected = np.column_stack([orientation[:3], orientation[3:], normal])
    np.testing.assert_allclose(direction(volume.image), expected)
    assert volume.patient_position == position
    assert volume.report.orientation == "axial"
    _assert_reproduces_field(volume.image, margin=(0.0, 0.0, 0.0))
    # Slices run along the normal from the first one: for feet-first stacks that is the top slice.
    assert volume.image.GetOrigin()[2] == pytest.approx(-10.0 if normal[2] > 0 else -2.0)


def test_patient_position_tag_does_not_change_geometry(tmp_path: Path) -> None:
    # The same FFS geometry labelled HFP (deliberately wrong) reads identically.
    orientation = PATIENT_POSITIONS["FFS"][0]
    right = read_image_series(
        write_series(SeriesSpec(positions=axial_positions(4), orientation=orientation), tmp_path / "a")
    )
    wrong = read_image_series(
        write_series(
            SeriesSpec(positions=axial_positions(4), orientation=orientation, patient_position="HFP"),
            tmp_path / "b",
        )
    )
    assert wrong.patient_position == "HFP"
    for getter in ("GetOrigin", "GetSpacing", "GetDirection", "GetSize"):
        assert getattr(wrong.image, getter)() == getattr(right.image, getter)()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(wrong.image), sitk.GetArrayFromImage(right.image))


def test_descending_slices_give_the_ascending_volume(tmp_path: Path) -> None:
    ascending = axial_positions(6)
    up = read_image_series(write_series(SeriesSpec(positions=ascending), tmp_path / "up"))
    down = read_image_series(write_series(SeriesSpec(positions=ascending[::-1]), tmp_path / "down"))
    assert down.image.GetOrigin() == up.image.GetOrigin()
    assert down.image.GetDirection() == up.image.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(down.image), sitk.GetArrayFromImage(up.image))


def test_sort_frames_uses_positions_not_instance_numbers(tmp_path: Path) -> None:
    z = [4.0, -10.0, 0.0, -6.0, 8.0]
    paths = write_series(SeriesSpec(positions=_positions_at(z)), tmp_path, order=[0, 1, 2, 3, 4])
    frames = [f for p in paths for f in frames_from_dataset(read_header(p), p)]
    stack, dropped = sort_frames(frames)
    assert dropped == 0
    assert [f.position[2] for f in stack.frames] == sorted(z)
    np.testing.assert_allclose(stack.distances, np.array(sorted(z)) + 10.0)


def test_regularise_interpolates_linearly_between_frames(tmp_path: Path) -> None:
    paths = write_series(SeriesSpec(positions=_positions_at([0.0, 1.0, 4.0]), rows=2, cols=2), tmp_path)
    frames = [f for p in paths for f in frames_from_dataset(read_header(p), p)]
    stack, _ = sort_frames(frames)
    pixels = np.stack([np.full((2, 2), v, np.float32) for v in (0.0, 10.0, 40.0)])
    out = regularise(pixels, stack, 1.0)
    np.testing.assert_allclose(out[:, 0, 0], [0.0, 10.0, 20.0, 30.0, 40.0])
