"""RTSTRUCT rasterisation: masks land at the right millimetres, holes stay holes, references are checked."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from tests.conftest import SHARED_DATA
from tests.factories import (
    SeriesSpec,
    axial_positions,
    square_contour,
    uid,
    write_rtstruct,
    write_series,
)
from tests.worker.stages.read.sampling import voxel_centres
from worker.errors import BrokenReferenceError, InputError
from worker.stages.read.rtstruct import polygon_mask, read_rtstruct_masks
from worker.stages.read.series import read_image_series

NELMS = SHARED_DATA / "nelms-dvh-phantom"
RTUTILS = SHARED_DATA / "rtutils-phantom/mock_data"
# Rows 1 mm apart, columns 2 mm apart: pixel centres at x = -20 + 2c, y = -16 + r.
NON_SQUARE = SeriesSpec(positions=axial_positions(5), pixel_spacing=(1.0, 2.0), rows=16, cols=20)
# Edges fall between pixel centres, so which pixels are inside is unambiguous.
OUTER = dict(centre=(-3.0, -8.0), half_x=10.0, half_y=5.5)  # x -13..7, y -13.5..-2.5
HOLE = dict(centre=(-3.0, -8.0), half_x=4.0, half_y=2.5)  # x -7..1, y -10.5..-5.5


def _square(z: float, centre, half_x: float, half_y: float) -> np.ndarray:
    return square_contour((*centre, z), half_x, half_y)


def _inside(points: np.ndarray, centre, half_x: float, half_y: float) -> np.ndarray:
    return (np.abs(points[..., 0] - centre[0]) < half_x) & (np.abs(points[..., 1] - centre[1]) < half_y)


@pytest.fixture
def non_square_volume(tmp_path: Path):
    return read_image_series(write_series(NON_SQUARE, tmp_path / "ct"))


def _pixel_centres(volume) -> np.ndarray:
    """LPS centres of every voxel, shape (slices, rows, cols, 3)."""
    size = volume.image.GetSize()
    return voxel_centres(volume.image, np.ones(size[::-1], dtype=bool)).reshape(*size[::-1], 3)


def test_square_with_hole_on_non_square_pixels_lands_at_the_right_mm(
    tmp_path: Path, non_square_volume
) -> None:
    contours = [_square(z, **OUTER) for z in (-6.0, -4.0)] + [_square(-6.0, **HOLE)]
    path = write_rtstruct(tmp_path / "rs.dcm", NON_SQUARE, {"Ring": contours})
    result = read_rtstruct_masks(path, non_square_volume)
    mask = result.masks["Ring"]
    assert mask.shape == (5, 16, 20) and result.warnings == []
    centres = _pixel_centres(non_square_volume)
    outer, hole = _inside(centres, **OUTER), _inside(centres, **HOLE)
    expected = np.zeros_like(mask)
    expected[2] = outer[2] & ~hole[2]  # z = -6: the ring
    expected[3] = outer[3]  # z = -4: the full square
    np.testing.assert_array_equal(mask, expected)
    # 10 columns x 11 rows in the square, 4 x 5 in the hole (not 5 x 10 / 8 x 4 as a row/column swap gives).
    assert mask[3].sum() == 110 and mask[2].sum() == 110 - 20
    assert not mask[2][hole[2]].any()
    # Every voxel set lies inside the square in millimetres.
    assert np.all(_inside(voxel_centres(non_square_volume.image, mask), **OUTER))


def test_contours_off_the_slices_are_reported(tmp_path: Path, non_square_volume) -> None:
    contours = [
        _square(-4.0, **OUTER),  # on slice 3
        _square(-5.0, **OUTER),  # halfway between two slices
        _square(30.0, **OUTER),  # beyond the last slice
    ]
    path = write_rtstruct(tmp_path / "rs.dcm", NON_SQUARE, {"GTV": contours})
    result = read_rtstruct_masks(path, non_square_volume)
    assert result.warnings == ["GTV: 2 contour(s) outside the image slices ignored"]
    assert result.masks["GTV"].sum(axis=(1, 2)).tolist() == [0, 0, 0, 110, 0]


def test_each_roi_gets_its_mask_and_number(tmp_path: Path, non_square_volume) -> None:
    rois = {"A": [_square(-10.0, **OUTER)], "B": [_square(-2.0, **HOLE)]}
    result = read_rtstruct_masks(write_rtstruct(tmp_path / "rs.dcm", NON_SQUARE, rois), non_square_volume)
    assert result.roi_numbers == {"A": 1, "B": 2}
    assert result.masks["A"].sum(axis=(1, 2)).tolist() == [110, 0, 0, 0, 0]
    assert result.masks["B"].sum(axis=(1, 2)).tolist() == [0, 0, 0, 0, 20]


def test_oblique_non_square_grid(tmp_path: Path) -> None:
    rotation = Rotation.from_euler("zxy", [25.0, 15.0, -10.0], degrees=True).as_matrix()
    row, col, normal = rotation.T
    origin = np.array([-10.0, -20.0, 5.0])
    spec = SeriesSpec(
        positions=axial_positions(4, spacing=3.0, origin=origin, normal=normal),
        orientation=(*row, *col),
        pixel_spacing=(1.5, 2.5),
        rows=16,
        cols=12,
    )
    volume = read_image_series(write_series(spec, tmp_path / "mr"))
    # A rectangle in the plane of slice 1: 3.1..19.9 mm along the rows, 5.2..14.8 mm along the columns.
    plane = origin + 3.0 * normal
    corners = [(3.1, 5.2), (19.9, 5.2), (19.9, 14.8), (3.1, 14.8)]
    contour = np.array([plane + u * row + v * col for u, v in corners])
    result = read_rtstruct_masks(write_rtstruct(tmp_path / "rs.dcm", spec, {"R": [contour]}), volume)
    mask = result.masks["R"]
    # Columns c with 3.1 < 2.5c < 19.9 (c = 2..7), rows r with 5.2 < 1.5r < 14.8 (r = 4..9).
    expected = np.zeros((4, 16, 12), dtype=bool)
    expected[1, 4:10, 2:8] = True
    np.testing.assert_array_equal(mask, expected)


def test_frame_of_reference_mismatch_is_a_broken_reference(tmp_path: Path, non_square_volume) -> None:
    path = write_rtstruct(
        tmp_path / "rs.dcm",
        NON_SQUARE,
        {"A": [_square(-6.0, **OUTER)]},
        frame_of_reference_uid=uid("elsewhere"),
    )
    with pytest.raises(BrokenReferenceError, match="frame of reference differs") as caught:
        read_rtstruct_masks(path, non_square_volume)
    assert caught.value.code == "broken-reference"


def test_missing_referenced_image_is_a_broken_reference(tmp_path: Path) -> None:
    paths = write_series(NON_SQUARE, tmp_path / "ct")
    volume = read_image_series(paths[:4])  # the last slice was never received
    rois = {"A": [_square(z, **OUTER) for z in (-4.0, -2.0)]}
    path = write_rtstruct(tmp_path / "rs.dcm", NON_SQUARE, rois)
    with pytest.raises(
        BrokenReferenceError, match=r"1 image instance\(s\) that are not in the image series \(1 of 2"
    ):
        read_rtstruct_masks(path, volume)


def test_structure_set_without_frame_of_reference_is_refused(tmp_path: Path, non_square_volume) -> None:
    path = write_rtstruct(tmp_path / "rs.dcm", NON_SQUARE, {"A": [_square(-6.0, **OUTER)]})
    ds = pydicom.dcmread(path)
    del ds.ReferencedFrameOfReferenceSequence
    for roi in ds.StructureSetROISequence:
        del roi.ReferencedFrameOfReferenceUID
    ds.save_as(path)
    with pytest.raises(BrokenReferenceError, match="names no frame of reference"):
        read_rtstruct_masks(path, non_square_volume)


def test_an_image_is_not_a_structure_set(tmp_path: Path, non_square_volume) -> None:
    with pytest.raises(InputError, match="not an RT Structure Set"):
        read_rtstruct_masks(write_series(NON_SQUARE, tmp_path / "x")[0], non_square_volume)


def test_polygon_mask_counts_pixel_centres_even_odd() -> None:
    # A 4 x 3 pixel rectangle, then the same with a concave notch.
    rows, cols = np.array([0.5, 0.5, 3.5, 3.5]), np.array([0.5, 4.5, 4.5, 0.5])
    mask = polygon_mask(rows, cols, 6, 7)
    assert mask.sum() == 12 and mask[1:4, 1:5].all()
    notch_rows = np.array([0.5, 0.5, 3.5, 3.5, 1.5, 3.5, 3.5])
    notch_cols = np.array([0.5, 4.5, 4.5, 3.5, 2.5, 1.5, 0.5])
    notched = polygon_mask(notch_rows, notch_cols, 6, 7)
    # At row 3 the notch spans columns 1.75 .. 3.25; at row 2 it spans 2.25 .. 2.75 (no centre).
    assert notched[1].tolist() == notched[2].tolist() == [False, True, True, True, True, False, False]
    assert notched[3].tolist() == [False, True, False, False, True, False, False]
    assert notched.sum() == 10


# --- real structure sets ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def nelms_ct():
    return read_image_series(sorted((NELMS / "CT").glob("*.dcm")))


def test_nelms_sphere_has_the_analytic_volume_and_centre(nelms_ct) -> None:
    result = read_rtstruct_masks(NELMS / "RTSTRUCT" / "Sphere_30_0.dcm", nelms_ct)
    assert list(result.masks) == ["Sphere_30_0"]  # the POI has no closed contour
    assert result.warnings == []
    mask = result.masks["Sphere_30_0"]
    volume_mm3 = mask.sum() * np.prod(nelms_ct.image.GetSpacing())
    assert volume_mm3 == pytest.approx(4.0 / 3.0 * np.pi * 12.0**3, rel=0.05)
    centroid = voxel_centres(nelms_ct.image, mask).mean(axis=0)
    np.testing.assert_allclose(centroid, [0.0, -6.0, 6.0], atol=0.3)


def _shoelace_mm2(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(x @ np.roll(y, -1) - y @ np.roll(x, -1)))


@pytest.mark.parametrize(
    "name", ["Cone_30_0", "Cylinder_30_0", "RtCone_30_0", "RtCylinder_30_0", "Sphere_30_0"]
)
def test_nelms_mask_area_matches_each_contour_area(nelms_ct, name: str) -> None:
    path = NELMS / "RTSTRUCT" / f"{name}.dcm"
    [mask] = read_rtstruct_masks(path, nelms_ct).masks.values()
    pixel_mm2 = nelms_ct.image.GetSpacing()[0] * nelms_ct.image.GetSpacing()[1]
    for contour in pydicom.dcmread(path).ROIContourSequence[0].ContourSequence:
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        k = round((points[0, 2] - nelms_ct.image.GetOrigin()[2]) / 3.0)
        area = _shoelace_mm2(points)
        perimeter = float(np.linalg.norm(points - np.roll(points, 1, axis=0), axis=1).sum())
        # Pixel-centre sampling moves each edge by less than half a pixel (0.3 mm), and by far
        # less on average; a mask on the wrong slice or scaled along one axis is far outside this.
        assert mask[k].sum() * pixel_mm2 == pytest.approx(area, abs=0.15 * perimeter + 0.5), (k, area)


def test_rtutils_structure_set_in_another_frame_of_reference() -> None:
    volume = read_image_series(sorted(RTUTILS.glob("ct_*.dcm")))
    with pytest.raises(BrokenReferenceError, match=r"rt\.dcm: RTSTRUCT frame of reference differs"):
        read_rtstruct_masks(RTUTILS / "rt.dcm", volume)


@pytest.mark.parametrize("name", ["invalid_reference_rt.dcm", "non_existent_reference_rt.dcm"])
def test_rtutils_structure_sets_with_missing_images(name: str) -> None:
    volume = read_image_series(sorted(RTUTILS.glob("ct_*.dcm")))
    with pytest.raises(
        BrokenReferenceError, match=r"reference 1 image instance\(s\) that are not in the image series"
    ):
        read_rtstruct_masks(RTUTILS / name, volume)


def test_dicompyler_structure_set_on_its_single_ct_slice() -> None:
    volume = read_image_series([SHARED_DATA / "dicompyler-breast/ct.0.dcm"])
    with pytest.raises(BrokenReferenceError, match=r"97 image instance\(s\) .* \(1 of 98 present\)"):
        read_rtstruct_masks(SHARED_DATA / "dicompyler-breast/rtss.dcm", volume)


# --- an independent rasteriser ----------------------------------------------------------------


def _plastimatch_masks(structure_set: Path, ct_files: list[Path], folder: Path) -> dict[str, np.ndarray]:
    if shutil.which("plastimatch") is None:
        pytest.fail("plastimatch is not installed: run ../shared/tools/install-dicom-tools.sh", pytrace=False)
    ct = folder / "ct"
    ct.mkdir(parents=True)
    for path in ct_files:
        shutil.copy(path, ct / path.name)
    subprocess.run(
        [
            "plastimatch",
            "convert",
            "--input",
            str(structure_set),
            "--referenced-ct",
            str(ct),
            "--output-prefix",
            str(folder / "out"),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return {
        p.stem: sitk.GetArrayFromImage(sitk.ReadImage(str(p))).astype(bool)
        for p in (folder / "out").glob("*.mha")
    }


@pytest.mark.tools
@pytest.mark.parametrize(
    ("structure_set", "ct_glob"),
    [
        (SHARED_DATA / "dicomrttool-anon/RS_Body_SpinalCord.dcm", "dicomrttool-anon/CT_*.dcm"),
        (NELMS / "RTSTRUCT/Sphere_30_0.dcm", "nelms-dvh-phantom/CT/*.dcm"),
    ],
    ids=["varian", "nelms-sphere"],
)
def test_masks_agree_with_plastimatch(tmp_path: Path, structure_set: Path, ct_glob: str) -> None:
    ct_files = sorted(SHARED_DATA.glob(ct_glob))
    ours = read_rtstruct_masks(structure_set, read_image_series(ct_files)).masks
    theirs = _plastimatch_masks(structure_set, ct_files, tmp_path)
    assert set(ours) <= set(theirs)
    for name, mask in ours.items():
        # Only pixels whose centres lie on a contour edge may be decided differently.
        disagreement = np.count_nonzero(mask != theirs[name])
        assert disagreement <= 0.002 * mask.sum() + 2, (name, disagreement, mask.sum())


@pytest.mark.tools
def test_non_square_squares_agree_with_plastimatch(tmp_path: Path) -> None:
    # Without the hole: plastimatch fills inner contours instead of carving them out.
    ct_files = write_series(NON_SQUARE, tmp_path / "written")
    structure_set = write_rtstruct(
        tmp_path / "rs.dcm", NON_SQUARE, {"Box": [_square(z, **OUTER) for z in (-6.0, -2.0)]}
    )
    ours = read_rtstruct_masks(structure_set, read_image_series(ct_files)).masks["Box"]
    theirs = _plastimatch_masks(structure_set, ct_files, tmp_path / "plastimatch")["Box"]
    assert ours.sum(axis=(1, 2)).tolist() == [0, 0, 110, 0, 110]
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.tools
def test_test_made_structure_set_is_a_valid_iod(tmp_path: Path) -> None:
    # The reader tests above run on structure sets written by tests.factories: check they are
    # what a conforming system would send.
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy is not installed: run ../shared/tools/install-dicom-tools.sh", pytrace=False)
    path = write_rtstruct(
        tmp_path / "rs.dcm", NON_SQUARE, {"Ring": [_square(-6.0, **OUTER), _square(-6.0, **HOLE)]}
    )
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


def _edit(path: Path, change) -> Path:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_roi_in_a_second_frame_of_reference_is_skipped_with_a_warning(
    tmp_path: Path, non_square_volume
) -> None:
    path = write_rtstruct(
        tmp_path / "rs.dcm", NON_SQUARE, {"A": [_square(-6.0, **OUTER)], "B": [_square(-4.0, **OUTER)]}
    )

    def second_frame(ds) -> None:
        ds.StructureSetROISequence[1].ReferencedFrameOfReferenceUID = uid("registered MR")

    result = read_rtstruct_masks(_edit(path, second_frame), non_square_volume)
    assert list(result.masks) == ["A"]
    assert "1 ROI(s) defined in another frame of reference ignored" in result.warnings


def test_duplicate_roi_names_keep_both_masks(tmp_path: Path, non_square_volume) -> None:
    path = write_rtstruct(
        tmp_path / "rs.dcm", NON_SQUARE, {"A": [_square(-6.0, **OUTER)], "B": [_square(-2.0, **HOLE)]}
    )

    def same_name(ds) -> None:
        ds.StructureSetROISequence[1].ROIName = "A"

    result = read_rtstruct_masks(_edit(path, same_name), non_square_volume)
    second_number = int(pydicom.dcmread(path).StructureSetROISequence[1].ROINumber)
    second = f"A (ROI {second_number})"
    assert set(result.masks) == {"A", second}
    assert result.roi_numbers[second] == second_number
    assert result.masks["A"].sum() != result.masks[second].sum()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            lambda ds: setattr(
                ds.ROIContourSequence[0].ContourSequence[0],
                "ContourData",
                list(ds.ROIContourSequence[0].ContourSequence[0].ContourData)[:-1],
            ),
            "ContourData must be finite (x, y, z) triplets",
        ),
        (
            lambda ds: delattr(ds.ROIContourSequence[0], "ReferencedROINumber"),
            "without a valid ReferencedROINumber",
        ),
    ],
)
def test_malformed_contours_are_refused_with_the_roi(
    tmp_path: Path, non_square_volume, change, words
) -> None:
    path = write_rtstruct(tmp_path / "rs.dcm", NON_SQUARE, {"A": [_square(-6.0, **OUTER)]})
    with pytest.raises(InputError, match=re.escape(words)):
        read_rtstruct_masks(_edit(path, change), non_square_volume)
