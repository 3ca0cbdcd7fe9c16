"""Image frames: plane geometry from IPP/IOP/PixelSpacing only, per-frame groups, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.factories import SeriesSpec, axial_positions, write_enhanced_mr, write_series
from worker.errors import GeometryError
from worker.stages.read.files import read_header
from worker.stages.read.frames import frames_from_dataset


def _one_slice(tmp_path: Path, **spec) -> tuple[pydicom.Dataset, Path]:
    path = write_series(SeriesSpec(positions=axial_positions(1), **spec), tmp_path)[0]
    return pydicom.dcmread(path), path


def test_classic_frame_geometry(tmp_path: Path) -> None:
    ds, path = _one_slice(tmp_path, pixel_spacing=(1.5, 2.5), orientation=(-1, 0, 0, 0, 1, 0))
    [frame] = frames_from_dataset(ds, path)
    np.testing.assert_array_equal(frame.position, [-20.0, -16.0, -10.0])
    np.testing.assert_array_equal(frame.row_dir, [-1, 0, 0])
    np.testing.assert_array_equal(frame.col_dir, [0, 1, 0])
    np.testing.assert_array_equal(frame.normal, [0, 0, -1])
    assert frame.pixel_spacing == (1.5, 2.5)
    assert (frame.rows, frame.cols, frame.slope, frame.intercept) == (16, 20, 0.05, -1000.0)
    assert frame.frame_index is None and not frame.is_localizer


def test_geometry_ignores_patient_position_and_slice_location(tmp_path: Path) -> None:
    ds, path = _one_slice(tmp_path)
    [before] = frames_from_dataset(ds, path)
    ds.PatientPosition, ds.SliceLocation = "FFP", "123.4"
    [after] = frames_from_dataset(ds, path)
    np.testing.assert_array_equal(after.position, before.position)
    assert after.orientation_key == before.orientation_key


def test_rounded_direction_cosines_are_reorthonormalised(tmp_path: Path) -> None:
    ds, path = _one_slice(tmp_path)
    ds.ImageOrientationPatient = [0.9999, 0.0001, 0.0, 0.0, 1.0, 0.0004]
    [frame] = frames_from_dataset(ds, path)
    assert np.linalg.norm(frame.row_dir) == pytest.approx(1.0)
    assert np.linalg.norm(frame.col_dir) == pytest.approx(1.0)
    assert abs(float(frame.row_dir @ frame.col_dir)) < 1e-12


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("ImageOrientationPatient", [1, 0, 0, 0.2, 1, 0], "is not two orthonormal vectors"),
        ("ImageOrientationPatient", [1, 0, 0, 1, 0, 0], "is not two orthonormal vectors"),
        ("ImageOrientationPatient", [1, 0, 0, 0, 1], "must have 6 values"),
        ("ImagePositionPatient", [0, 0], "must have 3 values"),
        ("PixelSpacing", "0.5", r"PixelSpacing must have 2 values, got \['0\.5'\]"),
        ("ImagePositionPatient", "12", "ImagePositionPatient must have 3 values"),
        ("PixelSpacing", [0, 1], "PixelSpacing must be positive"),
        ("PixelSpacing", [1, -2], "PixelSpacing must be positive"),
    ],
)
def test_invalid_geometry_is_refused_naming_the_attribute(tmp_path: Path, keyword, value, message) -> None:
    ds, path = _one_slice(tmp_path)
    setattr(ds, keyword, value)
    with pytest.raises(GeometryError, match=message) as caught:
        frames_from_dataset(ds, path)
    assert caught.value.message.startswith("series-000.dcm")


def test_localizer_and_stack_key_of_classic_frames(tmp_path: Path) -> None:
    ds, path = _one_slice(tmp_path)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.EchoNumbers, ds.TemporalPositionIdentifier = 2, 3
    [frame] = frames_from_dataset(ds, path)
    assert frame.is_localizer
    assert frame.stack_key == ("2", "3", "")


def test_enhanced_frames_take_per_frame_positions_and_shared_groups(tmp_path: Path) -> None:
    spec = SeriesSpec(positions=axial_positions(3), modality="MR", pixel_spacing=(1.5, 2.5))
    path = write_enhanced_mr(spec, tmp_path / "e.dcm", frame_order=[2, 0, 1])
    frames = frames_from_dataset(read_header(path), path)
    assert [f.frame_index for f in frames] == [0, 1, 2]
    assert [f.position[2] for f in frames] == [-6.0, -10.0, -8.0]
    assert {f.pixel_spacing for f in frames} == {(1.5, 2.5)}
    assert {(f.slope, f.intercept) for f in frames} == {(0.05, -1000.0)}


def test_multi_frame_image_without_functional_groups_is_refused(tmp_path: Path) -> None:
    ds, path = _one_slice(tmp_path)
    ds.NumberOfFrames = 2
    with pytest.raises(GeometryError, match="no per-frame geometry"):
        frames_from_dataset(ds, path)
