"""RTDOSE → dose in Gy on its own grid: offset vector forms, scaling, units, types, real grids."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from tests.conftest import SHARED_DATA
from tests.factories import DoseSpec, SeriesSpec, axial_positions, dose_field, uid, write_rtdose, write_series
from tests.worker.stages.read.sampling import direction, interior_points, sample
from worker.errors import DicomReadError, DoseError, GeometryError
from worker.stages.read.geometry import GeometryPolicy
from worker.stages.read.rtdose import grid_frame_offsets, read_rtdose
from worker.stages.read.rtstruct import read_rtstruct_masks
from worker.stages.read.series import read_image_series

#: Quantisation of the default test dose (DoseGridScaling 1e-4), with room for interpolation.
DOSE_ATOL = 1e-4
NELMS = SHARED_DATA / "nelms-dvh-phantom"
#: The Nelms linear grids (Gy per fraction) as functions of LPS points, and where their kink lies.
NELMS_DOSES = {
    "Linear_AntPost_3mm_Aligned": (lambda p: np.maximum(0.0, 10.0 - p[..., 1]), 1, 10.0),
    "Linear_SupInf_3mm_Aligned": (lambda p: np.maximum(0.0, p[..., 2] + 10.0), 2, -10.0),
}


def _assert_dose_field(image: sitk.Image, field=dose_field, atol: float = DOSE_ATOL) -> None:
    points = interior_points(image, margin=(0.0, 0.0, 0.0))
    np.testing.assert_allclose(sample(image, points), field(points), atol=atol)


def _edit(path: Path, **attributes) -> Path:
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)
    return path


# --- grid geometry ----------------------------------------------------------------------------


def test_relative_offsets_place_the_grid(tmp_path: Path) -> None:
    grid = read_rtdose(write_rtdose(DoseSpec(), tmp_path / "dose.dcm"))
    assert grid.offsets_form == "relative"
    assert grid.image.GetSize() == (10, 8, 5)
    assert grid.image.GetOrigin() == pytest.approx((-20.0, -16.0, -10.0))
    assert grid.image.GetSpacing() == pytest.approx((3.0, 3.0, 3.0))
    assert grid.image.GetPixelID() == sitk.sitkFloat64
    assert (grid.summation_type, grid.dose_type, grid.units) == ("PLAN", "PHYSICAL", "GY")
    assert grid.warnings == [] and not grid.report.resampled
    _assert_dose_field(grid.image)


def test_absolute_and_relative_offsets_give_the_same_grid(tmp_path: Path) -> None:
    relative = read_rtdose(write_rtdose(DoseSpec(offsets=(0, 3, 6, 9, 12)), tmp_path / "rel.dcm"))
    absolute = read_rtdose(write_rtdose(DoseSpec(offsets=(-10, -7, -4, -1, 2)), tmp_path / "abs.dcm"))
    assert (relative.offsets_form, absolute.offsets_form) == ("relative", "absolute")
    for getter in ("GetSize", "GetOrigin", "GetSpacing", "GetDirection"):
        assert getattr(absolute.image, getter)() == pytest.approx(getattr(relative.image, getter)())
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(absolute.image), sitk.GetArrayFromImage(relative.image)
    )


def test_grid_frame_offsets_parse_both_forms(tmp_path: Path) -> None:
    ds = pydicom.dcmread(write_rtdose(DoseSpec(offsets=(-10, -7, -1)), tmp_path / "abs.dcm"))
    offsets, form = grid_frame_offsets(ds, "abs.dcm")
    assert form == "absolute"
    np.testing.assert_allclose(offsets, [0.0, 3.0, 9.0])


def test_non_uniform_offsets_are_resampled(tmp_path: Path) -> None:
    # SimpleITK/GDCM would read [0, 3, 9, 12, 15] as a uniform 3 mm grid; the field would then be off.
    grid = read_rtdose(write_rtdose(DoseSpec(offsets=(0, 3, 9, 12, 15)), tmp_path / "dose.dcm"))
    assert grid.report.resampled and not grid.report.uniform
    assert any("uneven GridFrameOffsetVector; dose resampled to 3 mm" in w for w in grid.warnings)
    assert grid.image.GetSize()[2] == 6 and grid.image.GetSpacing()[2] == pytest.approx(3.0)
    _assert_dose_field(grid.image)


def test_non_uniform_offsets_refused_by_policy(tmp_path: Path) -> None:
    path = write_rtdose(DoseSpec(offsets=(0, 2, 7, 9)), tmp_path / "dose.dcm")
    with pytest.raises(GeometryError, match="slice spacing is not uniform"):
        read_rtdose(path, policy=GeometryPolicy(resample_nonuniform=False))


def test_first_offset_neither_zero_nor_ipp_z_is_refused(tmp_path: Path) -> None:
    path = write_rtdose(DoseSpec(offsets=(5, 8, 11)), tmp_path / "dose.dcm")
    with pytest.raises(
        DoseError, match=r"starts at 5, which is neither 0 .* nor the ImagePositionPatient z -10"
    ):
        read_rtdose(path)


def test_absolute_form_on_a_non_axial_grid_is_refused(tmp_path: Path) -> None:
    spec = DoseSpec(origin=(20.0, -16.0, -10.0), orientation=(-1, 0, 0, 0, 1, 0), offsets=(-10, -13, -16))
    with pytest.raises(DoseError, match="of an axial grid"):
        read_rtdose(write_rtdose(spec, tmp_path / "dose.dcm"))


def test_descending_offsets(tmp_path: Path) -> None:
    grid = read_rtdose(write_rtdose(DoseSpec(offsets=(0, -3, -6, -9)), tmp_path / "dose.dcm"))
    assert grid.image.GetOrigin() == pytest.approx((-20.0, -16.0, -19.0))
    np.testing.assert_allclose(direction(grid.image), np.eye(3))
    _assert_dose_field(grid.image)


def test_feet_first_dose_grid(tmp_path: Path) -> None:
    spec = DoseSpec(origin=(20.0, -16.0, 2.0), orientation=(-1, 0, 0, 0, 1, 0))
    grid = read_rtdose(write_rtdose(spec, tmp_path / "dose.dcm"))
    np.testing.assert_allclose(direction(grid.image), np.diag([-1.0, 1.0, -1.0]))
    assert grid.image.GetOrigin() == pytest.approx((20.0, -16.0, 2.0))
    _assert_dose_field(grid.image)


def test_repeated_offsets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DoseError, match="repeats positions"):
        read_rtdose(write_rtdose(DoseSpec(offsets=(0, 3, 3, 6)), tmp_path / "dose.dcm"))


def test_offset_count_must_match_the_frames(tmp_path: Path) -> None:
    path = _edit(write_rtdose(DoseSpec(), tmp_path / "dose.dcm"), GridFrameOffsetVector=[0, 3, 6])
    with pytest.raises(DoseError, match="3 values for 5 frames"):
        read_rtdose(path)
    _edit(path, GridFrameOffsetVector=None)
    with pytest.raises(DoseError, match="without GridFrameOffsetVector"):
        read_rtdose(path)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("ImagePositionPatient", None), ("ImageOrientationPatient", None), ("ImagePositionPatient", "-10")],
)
def test_absolute_offsets_without_plane_geometry_are_refused(tmp_path: Path, keyword: str, value) -> None:
    path = _edit(write_rtdose(DoseSpec(offsets=(-10, -7, -4)), tmp_path / "dose.dcm"), **{keyword: value})
    with pytest.raises(
        DoseError, match="starts at -10, but ImagePositionPatient and ImageOrientationPatient"
    ):
        read_rtdose(path)


def test_frame_increment_pointer_must_name_the_offset_vector(tmp_path: Path) -> None:
    path = _edit(write_rtdose(DoseSpec(), tmp_path / "dose.dcm"), FrameIncrementPointer=0x00181063)
    with pytest.raises(DoseError, match=r"FrameIncrementPointer is \(0018,1063\), not GridFrameOffsetVector"):
        read_rtdose(path)


def test_single_frame_dose_without_offsets(tmp_path: Path) -> None:
    spec = DoseSpec(offsets=(0,))
    path = _edit(write_rtdose(spec, tmp_path / "dose.dcm"), GridFrameOffsetVector=None, NumberOfFrames=1)
    grid = read_rtdose(path)
    assert grid.image.GetSize() == (10, 8, 1)
    assert grid.image.GetOrigin() == pytest.approx((-20.0, -16.0, -10.0))


# --- values -----------------------------------------------------------------------------------


def test_dose_grid_scaling_is_applied_in_float64(tmp_path: Path) -> None:
    # Stored values near 4e9 with a 1e-9 scaling: float32 arithmetic would be off by ~1e-7 relative.
    gradient = 1.234567e-3 * np.array([1.0, 2.0, 3.0])
    spec = DoseSpec(scaling=1e-9, field_gy=lambda p: 4.0 + np.asarray(p) @ gradient)
    path = write_rtdose(spec, tmp_path / "dose.dcm")
    grid = read_rtdose(path)
    stored = pydicom.dcmread(path).pixel_array
    assert stored.max() > 4.0e9
    dose = sitk.GetArrayFromImage(grid.image)
    np.testing.assert_array_equal(dose, stored.astype(np.float64) * 1e-9)
    voxels = np.argwhere(np.ones_like(dose, dtype=bool))[:, ::-1]
    points = np.array([grid.image.TransformIndexToPhysicalPoint(tuple(int(v) for v in i)) for i in voxels])
    expected = spec.field_gy(points).reshape(dose.shape)
    np.testing.assert_allclose(dose, expected, rtol=1e-9, atol=0)


def test_missing_dose_grid_scaling_is_refused(tmp_path: Path) -> None:
    path = _edit(write_rtdose(DoseSpec(), tmp_path / "dose.dcm"), DoseGridScaling=None)
    with pytest.raises(DoseError, match="DoseGridScaling missing"):
        read_rtdose(path)


def _relative_dose(tmp_path: Path, peak: float) -> Path:
    # Fractions of the prescription: 0.5 .. peak across the grid.
    spec = DoseSpec(
        units="RELATIVE", field_gy=lambda p: 0.5 + (peak - 0.5) * (np.asarray(p)[..., 0] + 20.0) / 27.0
    )
    return write_rtdose(spec, tmp_path / "relative.dcm")


def test_relative_dose_without_prescription_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DoseError, match="RELATIVE cannot be turned into Gy without a prescription"):
        read_rtdose(_relative_dose(tmp_path, 1.07))


def test_relative_dose_is_scaled_by_the_prescription(tmp_path: Path) -> None:
    grid = read_rtdose(_relative_dose(tmp_path, 1.07), prescription_gy=60.0)
    assert grid.units == "RELATIVE"
    assert grid.max_gy == pytest.approx(1.07 * 60.0, abs=1e-2)
    assert float(sitk.GetArrayViewFromImage(grid.image).min()) == pytest.approx(30.0, abs=1e-2)


def test_relative_dose_that_looks_like_percent_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DoseError, match="looks like a percentage"):
        read_rtdose(_relative_dose(tmp_path, 107.0), prescription_gy=60.0)


def test_unknown_units_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DoseError, match="unsupported DoseUnits CGY"):
        read_rtdose(write_rtdose(DoseSpec(units="CGY"), tmp_path / "dose.dcm"))


def test_error_dose_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DoseError, match="DoseType ERROR"):
        read_rtdose(write_rtdose(DoseSpec(dose_type="ERROR"), tmp_path / "dose.dcm"))


def test_effective_dose_type_is_used_with_a_warning(tmp_path: Path) -> None:
    grid = read_rtdose(write_rtdose(DoseSpec(dose_type="EFFECTIVE"), tmp_path / "dose.dcm"))
    assert grid.dose_type == "EFFECTIVE"
    assert grid.warnings == ["dose.dcm: DoseType EFFECTIVE (biologically weighted) used as dose"]
    _assert_dose_field(grid.image)


def test_plan_and_beam_references(tmp_path: Path) -> None:
    spec = DoseSpec(summation_type="BEAM", plan_uid=uid("plan"), beam_numbers=(2, 5))
    grid = read_rtdose(write_rtdose(spec, tmp_path / "dose.dcm"))
    assert grid.referenced_plan_uid == uid("plan")
    assert grid.referenced_beam_numbers == [2, 5]
    assert grid.summation_type == "BEAM"


# --- refusals of the file itself ---------------------------------------------------------------


def test_an_image_is_not_an_rtdose(tmp_path: Path) -> None:
    path = write_series(SeriesSpec(positions=axial_positions(1)), tmp_path)[0]
    with pytest.raises(DoseError, match="not an RT Dose instance"):
        read_rtdose(path)


def test_truncated_rtdose_is_refused(tmp_path: Path) -> None:
    path = write_rtdose(DoseSpec(), tmp_path / "dose.dcm")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DicomReadError, match="truncated") as caught:
        read_rtdose(path)
    assert caught.value.code == "truncated-file"


def test_undecodable_or_absent_dose_pixels_are_a_read_error(tmp_path: Path) -> None:
    path = write_rtdose(DoseSpec(), tmp_path / "dose.dcm")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([b"\x00\x01" * 8] * 5)
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    with pytest.raises(DicomReadError, match=r"dose\.dcm: pixel data could not be decoded \(RLE Lossless\)"):
        read_rtdose(path)
    path = _edit(write_rtdose(DoseSpec(), tmp_path / "bare.dcm"), PixelData=None)
    with pytest.raises(DicomReadError, match=r"bare\.dcm: pixel data could not be decoded"):
        read_rtdose(path)


# --- real grids -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nelms_ct():
    return read_image_series(sorted((NELMS / "CT").glob("*.dcm")))


def _contour_vertices(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return np.concatenate(
        [
            np.asarray(c.ContourData, float).reshape(-1, 3)
            for roi in ds.ROIContourSequence
            for c in roi.get("ContourSequence", [])
            if c.ContourGeometricType == "CLOSED_PLANAR"
        ]
    )


def _inside(image: sitk.Image, points: np.ndarray) -> np.ndarray:
    index = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in points])
    return np.all((index >= 0) & (index <= np.asarray(image.GetSize()) - 1), axis=1)


@pytest.mark.parametrize("dose_name", sorted(NELMS_DOSES))
@pytest.mark.parametrize("roi_file", ["Sphere_30_0.dcm", "Cylinder_30_0.dcm"])
def test_nelms_dose_at_every_contour_vertex_is_analytic(dose_name: str, roi_file: str) -> None:
    field, axis, kink = NELMS_DOSES[dose_name]
    grid = read_rtdose(NELMS / "RTDOSE" / f"{dose_name}.dcm")
    assert grid.summation_type == "FRACTION" and grid.frame_of_reference_uid == "1.3.6.1.4.1.22213.2.6291.1.1"
    vertices = _contour_vertices(NELMS / "RTSTRUCT" / roi_file)
    usable = vertices[_inside(grid.image, vertices) & (np.abs(vertices[:, axis] - kink) > 3.0)]
    assert len(usable) > 2000
    np.testing.assert_allclose(sample(grid.image, usable), field(usable), atol=0.05)


@pytest.mark.parametrize("dose_name", sorted(NELMS_DOSES))
def test_nelms_mean_dose_in_the_sphere_is_the_dose_at_its_centre(nelms_ct, dose_name: str) -> None:
    field, _, _ = NELMS_DOSES[dose_name]
    grid = read_rtdose(NELMS / "RTDOSE" / f"{dose_name}.dcm")
    assert grid.frame_of_reference_uid == nelms_ct.frame_of_reference_uid
    sphere = read_rtstruct_masks(NELMS / "RTSTRUCT" / "Sphere_30_0.dcm", nelms_ct).masks["Sphere_30_0"]
    on_ct = sitk.Resample(
        grid.image, nelms_ct.image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat64
    )
    mean = float(sitk.GetArrayViewFromImage(on_ct)[sphere].mean())
    assert mean == pytest.approx(float(field(np.array([0.0, -6.0, 6.0]))), abs=0.05)  # 16 Gy per fraction


def test_dicompyler_plan_dose() -> None:
    grid = read_rtdose(SHARED_DATA / "dicompyler-breast/rtdose.dcm")
    assert grid.image.GetSize() == (194, 129, 98)
    assert grid.image.GetSpacing() == pytest.approx((2.5, 2.5, 3.0))
    assert grid.image.GetOrigin() == pytest.approx((-228.6541915, -419.2444776, -122.4407))
    assert grid.max_gy == pytest.approx(14.68, abs=0.01)
    assert (grid.summation_type, grid.units, grid.dose_type) == ("PLAN", "GY", "PHYSICAL")
    assert grid.referenced_plan_uid == str(
        pydicom.dcmread(SHARED_DATA / "dicompyler-breast/rtplan.dcm").SOPInstanceUID
    )


@pytest.mark.tools
@pytest.mark.parametrize(
    "path",
    [NELMS / "RTDOSE" / f"{name}.dcm" for name in sorted(NELMS_DOSES)]
    + [SHARED_DATA / "dicompyler-breast/rtdose.dcm"],
    ids=lambda p: p.stem,
)
def test_dose_agrees_with_plastimatch(tmp_path: Path, path: Path) -> None:
    if shutil.which("plastimatch") is None:
        pytest.fail("plastimatch is not installed: run ../shared/tools/install-dicom-tools.sh", pytrace=False)
    output = tmp_path / "dose.mha"
    subprocess.run(
        ["plastimatch", "convert", "--input", str(path), "--output-dose-img", str(output)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    theirs = sitk.ReadImage(str(output))  # plastimatch writes Gy (DoseGridScaling applied)
    ours = read_rtdose(path).image
    np.testing.assert_allclose(theirs.GetOrigin(), ours.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(theirs.GetDirection(), ours.GetDirection(), atol=1e-6)
    points = interior_points(ours, count=500, margin=(0.0, 0.0, 0.0), seed=1)
    np.testing.assert_allclose(sample(ours, points), sample(theirs, points), atol=0.05)
    assert float(sitk.GetArrayViewFromImage(ours).max()) == pytest.approx(
        float(sitk.GetArrayViewFromImage(theirs).max()), abs=0.05
    )


def test_nelms_dose_rewritten_with_absolute_offsets_keeps_its_grid(tmp_path: Path) -> None:
    # A copy rewritten with absolute offsets (z of each frame) reads onto the same grid.
    source = NELMS / "RTDOSE" / "Linear_SupInf_3mm_Aligned.dcm"
    ds = pydicom.dcmread(source)
    z0 = float(ds.ImagePositionPatient[2])
    ds.GridFrameOffsetVector = [z0 + float(v) for v in ds.GridFrameOffsetVector]
    copy = tmp_path / "absolute.dcm"
    ds.save_as(copy)
    relative, absolute = read_rtdose(source), read_rtdose(copy)
    assert absolute.offsets_form == "absolute"
    assert absolute.image.GetOrigin() == relative.image.GetOrigin()
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(absolute.image), sitk.GetArrayFromImage(relative.image)
    )
