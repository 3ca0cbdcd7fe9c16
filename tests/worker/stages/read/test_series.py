"""Reading one image series: file order, enhanced multi-frame, localizers, duplicates, 4D, real files."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from tests.conftest import SHARED_DATA
from tests.factories import (
    RESCALE_SLOPE,
    SeriesSpec,
    axial_positions,
    image_slice,
    linear_field,
    uid,
    write_enhanced_mr,
    write_rtplan,
    write_series,
)
from tests.worker.stages.read.sampling import direction, interior_points, sample
from worker.errors import DicomReadError, GeometryError, InputError
from worker.stages.read.series import read_image_series


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _assert_same_image(actual: sitk.Image, expected: sitk.Image, atol: float = 0.0) -> None:
    assert actual.GetSize() == expected.GetSize()
    np.testing.assert_allclose(actual.GetOrigin(), expected.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(actual.GetSpacing(), expected.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(actual.GetDirection(), expected.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(_array(actual), _array(expected), atol=atol)


def _write_extra_slice(spec: SeriesSpec, index: int, position, path: Path, **attributes) -> Path:
    """One more slice of ``spec``'s series with attributes overridden (ImageType, orientation ...)."""
    ds = image_slice(spec, index, position)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_unsorted_files_with_lying_instance_numbers(tmp_path: Path) -> None:
    spec = SeriesSpec(positions=axial_positions(6))
    reference = read_image_series(write_series(spec, tmp_path / "ref"))
    # InstanceNumbers say the opposite of the geometry; the file list is shuffled.
    paths = write_series(replace(spec, name="lying"), tmp_path / "lying", order=[5, 4, 3, 2, 1, 0])
    random.Random(3).shuffle(paths)
    volume = read_image_series(paths)
    _assert_same_image(volume.image, reference.image)
    assert volume.sop_instance_uids == [uid(spec.series_instance_uid, i) for i in range(6)]
    assert volume.image.GetOrigin()[2] == pytest.approx(-10.0)


def test_volume_facts(tmp_path: Path) -> None:
    spec = SeriesSpec(positions=axial_positions(3), modality="MR", patient_position="FFS")
    volume = read_image_series(write_series(spec, tmp_path))
    assert (volume.modality, volume.patient_position) == ("MR", "FFS")
    assert volume.series_instance_uid == spec.series_instance_uid
    assert volume.frame_of_reference_uid == spec.frame_of_reference_uid
    assert (volume.received, volume.decoded) == (3, 3)
    assert volume.image.GetPixelID() == sitk.sitkFloat32


def test_enhanced_mr_with_shuffled_frames_equals_the_classic_series(tmp_path: Path) -> None:
    spec = SeriesSpec(positions=axial_positions(5, spacing=3.0), modality="MR", pixel_spacing=(1.5, 2.0))
    classic = read_image_series(write_series(spec, tmp_path / "classic"))
    enhanced_path = write_enhanced_mr(spec, tmp_path / "enhanced.dcm", frame_order=[3, 0, 4, 1, 2])
    enhanced = read_image_series([enhanced_path])
    _assert_same_image(enhanced.image, classic.image)
    assert (enhanced.received, enhanced.decoded) == (5, 5)
    points = interior_points(enhanced.image)
    np.testing.assert_allclose(sample(enhanced.image, points), linear_field(points), atol=RESCALE_SLOPE)


def test_enhanced_image_without_plane_position_is_refused(tmp_path: Path) -> None:
    path = write_enhanced_mr(SeriesSpec(positions=axial_positions(3), modality="MR"), tmp_path / "e.dcm")
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence
    ds.save_as(path)
    with pytest.raises(GeometryError, match="frame 2 has no plane position"):
        read_image_series([path])


def test_localizer_in_the_series_is_dropped_with_a_warning(tmp_path: Path) -> None:
    spec = SeriesSpec(positions=axial_positions(5))
    reference = read_image_series(write_series(spec, tmp_path / "ref"))
    paths = write_series(spec, tmp_path / "series")
    coronal = replace(spec, orientation=(1, 0, 0, 0, 0, -1))
    paths.append(
        _write_extra_slice(
            coronal,
            99,
            (-20.0, 0.0, 10.0),
            tmp_path / "series" / "scout.dcm",
            ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        )
    )
    volume = read_image_series(paths)
    assert "1 localizer image(s) dropped" in volume.warnings
    _assert_same_image(volume.image, reference.image)
    assert uid(spec.series_instance_uid, 99) not in volume.sop_instance_uids


def test_images_of_another_orientation_or_size_are_dropped(tmp_path: Path) -> None:
    spec = SeriesSpec(positions=axial_positions(5))
    paths = write_series(spec, tmp_path)
    paths.append(
        _write_extra_slice(
            replace(spec, orientation=(0, 1, 0, 0, 0, -1)), 50, (0, -16, 10), tmp_path / "s.dcm"
        )
    )
    paths.append(_write_extra_slice(replace(spec, rows=8), 51, (-20, -16, 30), tmp_path / "m.dcm"))
    volume = read_image_series(paths)
    assert "2 image(s) with another orientation, pixel spacing or matrix size dropped" in volume.warnings
    assert volume.image.GetSize() == (20, 16, 5)


def test_slice_with_another_pixel_spacing_is_not_stacked(tmp_path: Path) -> None:
    # Stacked with the others, its pixels would be placed on a 2 mm grid they were not sampled on.
    spec = SeriesSpec(positions=axial_positions(5))
    paths = write_series(spec, tmp_path)
    _write_extra_slice(replace(spec, pixel_spacing=(2.5, 2.5)), 2, spec.positions[2], paths[2])
    volume = read_image_series(paths)
    assert "1 image(s) with another orientation, pixel spacing or matrix size dropped" in volume.warnings
    assert volume.report.missing_slices == 1 and volume.report.resampled
    points = interior_points(volume.image)
    np.testing.assert_allclose(sample(volume.image, points), linear_field(points), atol=RESCALE_SLOPE)


def test_series_of_localizers_only_is_refused(tmp_path: Path) -> None:
    spec = SeriesSpec(positions=axial_positions(2))
    paths = [
        _write_extra_slice(spec, i, p, tmp_path / f"{i}.dcm", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
        for i, p in enumerate(spec.positions)
    ]
    with pytest.raises(GeometryError, match="only localizer"):
        read_image_series(paths)


def test_duplicate_positions_are_dropped_keeping_the_lowest_instance_number(tmp_path: Path) -> None:
    spec = SeriesSpec(positions=axial_positions(4))
    paths = write_series(spec, tmp_path)
    duplicate = _write_extra_slice(spec, 7, spec.positions[2], tmp_path / "dup.dcm", InstanceNumber=40)
    volume = read_image_series([duplicate, *paths])
    assert volume.report.duplicates_dropped == 1
    assert "1 frame(s) at duplicate positions dropped" in volume.warnings
    assert volume.image.GetSize()[2] == 4
    assert volume.sop_instance_uids[2] == uid(spec.series_instance_uid, 2)
    assert uid(spec.series_instance_uid, 7) not in volume.sop_instance_uids


def test_two_temporal_positions_at_the_same_positions_are_refused(tmp_path: Path) -> None:
    spec = SeriesSpec(positions=axial_positions(3), modality="MR")
    paths = []
    for phase in (1, 2):
        for i, position in enumerate(spec.positions):
            index = 10 * phase + i
            paths.append(
                _write_extra_slice(
                    spec, index, position, tmp_path / f"{index}.dcm", TemporalPositionIdentifier=phase
                )
            )
    with pytest.raises(GeometryError, match="2 volumes at the same positions") as caught:
        read_image_series(paths)
    assert caught.value.code == "invalid-geometry"


def test_enhanced_image_with_two_temporal_positions_is_refused(tmp_path: Path) -> None:
    spec = SeriesSpec(positions=axial_positions(3) * 2, modality="MR")
    path = write_enhanced_mr(spec, tmp_path / "4d.dcm")
    ds = pydicom.dcmread(path)
    for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        item.FrameContentSequence[0].TemporalPositionIndex = 1 + k // 3
    ds.save_as(path)
    with pytest.raises(GeometryError, match="volumes at the same positions"):
        read_image_series([path])


def test_enhanced_image_with_two_echoes_is_refused(tmp_path: Path) -> None:
    spec = SeriesSpec(positions=axial_positions(3) * 2, modality="MR")
    path = write_enhanced_mr(spec, tmp_path / "echoes.dcm")
    ds = pydicom.dcmread(path)
    for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        echo = pydicom.Dataset()
        echo.EffectiveEchoTime = 10.0 if k < 3 else 90.0
        item.MREchoSequence = pydicom.Sequence([echo])
    ds.save_as(path)
    with pytest.raises(GeometryError, match="2 volumes at the same positions"):
        read_image_series([path])


def test_missing_type_2_attributes_still_read(tmp_path: Path) -> None:
    spec = SeriesSpec(positions=axial_positions(4))
    reference = read_image_series(write_series(spec, tmp_path / "ref"))
    stripped = []
    for path in write_series(spec, tmp_path / "anon"):
        ds = pydicom.dcmread(path)
        for keyword in (
            "PatientName",
            "PatientBirthDate",
            "PatientSex",
            "StudyDate",
            "StudyTime",
            "StudyID",
            "AccessionNumber",
            "ReferringPhysicianName",
            "SeriesNumber",
            "InstanceNumber",
            "PatientPosition",
            "SliceThickness",
            "PositionReferenceIndicator",
        ):
            delattr(ds, keyword)
        ds.save_as(path)
        stripped.append(path)
    volume = read_image_series(stripped)
    _assert_same_image(volume.image, reference.image)
    assert volume.patient_position == ""


def test_several_series_are_refused(tmp_path: Path) -> None:
    a = write_series(SeriesSpec(positions=axial_positions(2)), tmp_path / "a")
    b = write_series(
        SeriesSpec(positions=axial_positions(2), series_instance_uid=uid("other")), tmp_path / "b"
    )
    with pytest.raises(InputError, match="2 image series given"):
        read_image_series(a + b)


def test_no_files_and_non_images_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no image files"):
        read_image_series([])
    plan = write_rtplan(tmp_path / "plan.dcm", sop_uid=uid("plan"))
    with pytest.raises(InputError, match=r"plan.dcm: not an image \(Modality RTPLAN\)"):
        read_image_series([plan])


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
def test_slice_without_geometry_is_refused(tmp_path: Path, keyword: str) -> None:
    paths = write_series(SeriesSpec(positions=axial_positions(3)), tmp_path)
    ds = pydicom.dcmread(paths[1])
    delattr(ds, keyword)
    ds.save_as(paths[1])
    with pytest.raises(GeometryError, match=f"series-001.dcm: no {keyword}"):
        read_image_series(paths)


def test_truncated_slice_is_refused_with_the_truncation_code(tmp_path: Path) -> None:
    paths = write_series(SeriesSpec(positions=axial_positions(4)), tmp_path)
    paths[2].write_bytes(paths[2].read_bytes()[:-50])
    with pytest.raises(DicomReadError, match=r"series-002\.dcm.*truncated") as caught:
        read_image_series(paths)
    assert caught.value.code == "truncated-file"


def test_non_dicom_file_in_the_list_is_refused(tmp_path: Path) -> None:
    paths = write_series(SeriesSpec(positions=axial_positions(3)), tmp_path)
    (tmp_path / "notes.txt").write_text("not an image\n")
    with pytest.raises(DicomReadError, match=r"notes\.txt"):
        read_image_series([*paths, tmp_path / "notes.txt"])


# --- real files -------------------------------------------------------------------------------


def _read_with_simpleitk(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.parametrize(
    "folder",
    ["rtutils-phantom/oriented_data", "nelms-dvh-phantom/CT", "dcmqi-ct3-seg/ct-3slice"],
)
def test_real_series_match_simpleitk_gdcm_reader(folder: str) -> None:
    files = sorted((SHARED_DATA / folder).glob("*.dcm"))
    ours = read_image_series(files)
    theirs = _read_with_simpleitk(SHARED_DATA / folder)
    _assert_same_image(ours.image, sitk.Cast(theirs, sitk.sitkFloat32), atol=1e-4)
    assert ours.warnings == []


def test_oblique_non_square_rtutils_series() -> None:
    volume = read_image_series(sorted((SHARED_DATA / "rtutils-phantom/oriented_data").glob("*.dcm")))
    ds = pydicom.dcmread(SHARED_DATA / "rtutils-phantom/oriented_data/0.dcm")
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    np.testing.assert_allclose(direction(volume.image)[:, :2], np.column_stack([iop[:3], iop[3:]]), atol=1e-6)
    assert volume.image.GetSpacing()[:2] == pytest.approx((2.5, 3.5))  # PixelSpacing is [3.5, 2.5]
    assert volume.image.GetSize() == (100, 50, 3)
    assert volume.report.orientation.startswith("oblique")


def test_enhanced_mr_without_functional_groups_is_refused() -> None:
    with pytest.raises(GeometryError, match=r"emri_small\.dcm.*no per-frame geometry"):
        read_image_series([SHARED_DATA / "mr-small/emri_small.dcm"])


def test_single_slice_mr_reads_as_one_slice() -> None:
    path = SHARED_DATA / "mr-small/MR_small.dcm"
    volume = read_image_series([path])
    ds = pydicom.dcmread(path)
    assert volume.image.GetSize() == (64, 64, 1)
    assert volume.image.GetSpacing() == pytest.approx((0.3125, 0.3125, 0.8))  # thickness for one slice
    assert volume.image.GetOrigin() == pytest.approx([float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_array_equal(_array(volume.image)[0], ds.pixel_array.astype(np.float32))
    assert volume.modality == "MR"
