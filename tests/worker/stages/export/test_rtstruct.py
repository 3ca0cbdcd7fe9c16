"""RTSTRUCT: contours on the follow-up's planes that read back as the mask, on every geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from tests.worker.stages.export.grids import GRIDS, Written, ring_and_island, sphere, task_for, write_grids
from worker.stages.export.algorithm import UNREVIEWED, AlgorithmInfo
from worker.stages.export.rtstruct import HIGH_DOSE_ROI_NAME, write_rtstruct
from worker.stages.export.seg import Finding
from worker.stages.export.source import source_series
from worker.stages.read.rtstruct import read_rtstruct_masks

ALGORITHM = AlgorithmInfo(model_id="small@0123456789ab", weights_sha256="0123456789ab" + "cd" * 26)
SIZES_CC = (0.2, 1.0, 5.0)


@pytest.fixture(scope="module")
def grids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Written]:
    return write_grids(tmp_path_factory.mktemp("rtstruct-grids"))


def _write(written: Written, findings: list[Finding], path: Path, region: Finding | None = None) -> Path:
    ds = write_rtstruct(source_series(written.volume), findings, ALGORITHM, high_dose_region=region)
    ds.save_as(path, enforce_file_format=True)
    return path


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize("name", sorted(GRIDS))
@pytest.mark.parametrize("cc", SIZES_CC)
def test_mask_rtstruct_mask(grids: dict[str, Written], name: str, cc: float, tmp_path: Path) -> None:
    written = grids[name]
    mask = sphere(written.volume, cc)
    task = task_for(written.grid)
    path = _write(written, [Finding(task, mask)], tmp_path / "rs.dcm")
    back = read_rtstruct_masks(path, written.volume).masks
    truth = sitk.GetArrayFromImage(mask).astype(bool)
    # Acceptance: Dice ≥ 0.97; pixel-edge contours give the mask back exactly.
    assert _dice(back[task.upper() + "_AI"], truth) >= 0.97
    assert np.array_equal(back[task.upper() + "_AI"], truth)


@pytest.mark.parametrize("name", ["ct-axial", "mr-oblique", "ct-feet-first"])
def test_holes_and_islands_are_preserved(grids: dict[str, Written], name: str, tmp_path: Path) -> None:
    written = grids[name]
    mask = ring_and_island(written.volume)
    truth = sitk.GetArrayFromImage(mask).astype(bool)
    path = _write(written, [Finding("orn", mask)], tmp_path / "rs.dcm")
    assert np.array_equal(read_rtstruct_masks(path, written.volume).masks["ORN_AI"], truth)
    ds = pydicom.dcmread(path)
    contours = ds.ROIContourSequence[0].ContourSequence
    per_plane: dict[str, int] = {}
    for contour in contours:
        uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
        per_plane[uid] = per_plane.get(uid, 0) + 1
        assert int(contour.NumberOfContourPoints) >= 3
    assert max(per_plane.values()) >= 2  # a hole or a second island on some plane


def test_contours_lie_on_their_planes_with_valid_values(grids: dict[str, Written], tmp_path: Path) -> None:
    """pydicom's view of the file: every point on the plane of the image it references, DS ≤ 16."""
    for name in ("ct-nonsquare", "mr-oblique", "mr-sagittal-nonsquare", "mr-enhanced"):
        written = grids[name]
        path = _write(written, [Finding("orn", sphere(written.volume, 1.0))], tmp_path / f"{name}.dcm")
        frames = {(f.sop_instance_uid, f.frame_index): f for f in written.volume.frames}
        raw = pydicom.dcmread(path)
        for contour in raw.ROIContourSequence[0].ContourSequence:
            ref = contour.ContourImageSequence[0]
            number = ref.get("ReferencedFrameNumber")
            frame = frames[(ref.ReferencedSOPInstanceUID, int(number) - 1 if number is not None else None)]
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            assert np.abs((points - frame.position) @ frame.normal).max() < 1e-3
            assert all(len(str(v)) <= 16 for v in contour.ContourData)


def test_structure_set_attributes(grids: dict[str, Written], tmp_path: Path) -> None:
    written = grids["ct-axial"]
    region = sphere(written.volume, 4.0)
    path = _write(
        written, [Finding("orn", sphere(written.volume, 0.5))], tmp_path / "rs.dcm", Finding("orn", region)
    )
    ds = pydicom.dcmread(path)
    assert ds.ApprovalStatus == "UNAPPROVED"
    assert UNREVIEWED in ds.SeriesDescription and UNREVIEWED in ds.StructureSetDescription
    names = {roi.ROINumber: roi.ROIName for roi in ds.StructureSetROISequence}
    assert sorted(names.values()) == sorted(["ORN_AI", HIGH_DOSE_ROI_NAME])
    assert all(roi.ROIGenerationAlgorithm == "AUTOMATIC" for roi in ds.StructureSetROISequence)
    colours = {item.ReferencedROINumber: list(item.ROIDisplayColor) for item in ds.ROIContourSequence}
    assert colours[1] == [255, 140, 0]
    types = {item.ReferencedROINumber: item.RTROIInterpretedType for item in ds.RTROIObservationsSequence}
    assert types[2] == "DOSE_REGION"
    ref = ds.ReferencedFrameOfReferenceSequence[0]
    assert ref.FrameOfReferenceUID == written.volume.frame_of_reference_uid
    series_ref = ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series_ref.SeriesInstanceUID == written.volume.series_instance_uid
    assert len(series_ref.ContourImageSequence) == len(written.volume.frames)
    masks = read_rtstruct_masks(path, written.volume).masks
    assert np.array_equal(masks[HIGH_DOSE_ROI_NAME], sitk.GetArrayFromImage(region).astype(bool))
    for keyword in (
        "StudyID",
        "PatientBirthDate",
        "ReferringPhysicianName",
        "AccessionNumber",
        "OperatorsName",
    ):
        assert keyword in ds  # Type 2: present even when the source has no value


def test_empty_finding_is_an_roi_without_contours(grids: dict[str, Written], tmp_path: Path) -> None:
    written = grids["ct-axial"]
    empty = sitk.Image(written.volume.image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(written.volume.image)
    ds = pydicom.dcmread(_write(written, [Finding("orn", empty)], tmp_path / "rs.dcm"))
    assert ds.StructureSetROISequence[0].ROIName == "ORN_AI"
    assert "ContourSequence" not in ds.ROIContourSequence[0]
