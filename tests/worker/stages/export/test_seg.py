"""DICOM-SEG: written on the follow-up's own planes, read back identical, on every geometry."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk

from tests.worker.stages.export.grids import GRIDS, LESION_CENTRE, Written, sphere, task_for, write_grids
from worker.stages.export.algorithm import UNREVIEWED, AlgorithmInfo
from worker.stages.export.seg import Finding, SegOptions, write_segmentation
from worker.stages.export.source import source_series
from worker.stages.read.seg import read_seg_masks

ALGORITHM = AlgorithmInfo(model_id="small@0123456789ab", weights_sha256="0123456789ab" + "cd" * 26)
SIZES_CC = (0.2, 1.0, 5.0)


@pytest.fixture(scope="module")
def grids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Written]:
    return write_grids(tmp_path_factory.mktemp("seg-grids"))


def _write(written: Written, findings: list[Finding], path: Path, **options: bool) -> Path:
    seg = write_segmentation(source_series(written.volume), findings, ALGORITHM, SegOptions(**options))
    seg.save_as(path)
    return path


@pytest.mark.parametrize("name", sorted(GRIDS))
@pytest.mark.parametrize("cc", SIZES_CC)
def test_mask_seg_mask_is_identical(grids: dict[str, Written], name: str, cc: float, tmp_path: Path) -> None:
    written = grids[name]
    mask = sphere(written.volume, cc)
    path = _write(written, [Finding(task_for(written.grid), mask)], tmp_path / "seg.dcm")
    (back,) = read_seg_masks(path, written.volume).values()
    truth = sitk.GetArrayFromImage(mask).astype(bool)
    assert truth.sum() > 50
    assert np.array_equal(back, truth)


@pytest.mark.parametrize("name", ["ct-axial", "mr-oblique", "mr-enhanced"])
def test_highdicom_reads_the_same_geometry(grids: dict[str, Written], name: str, tmp_path: Path) -> None:
    """highdicom's own reader puts every SEG frame on the source plane it references."""
    written = grids[name]
    mask = sphere(written.volume, 1.0)
    path = _write(written, [Finding(task_for(written.grid), mask)], tmp_path / "seg.dcm")
    seg = hd.seg.segread(path)
    frames = {(f.sop_instance_uid, f.frame_index): f for f in written.volume.frames}
    truth = sitk.GetArrayFromImage(mask).astype(bool)
    stack_index = {key: i for i, key in enumerate(frames)}
    for item, frame_pixels in zip(
        seg.PerFrameFunctionalGroupsSequence, seg.pixel_array.reshape(-1, *truth.shape[1:]), strict=True
    ):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        number = ref.get("ReferencedFrameNumber")
        key = (ref.ReferencedSOPInstanceUID, int(number) - 1 if number is not None else None)
        frame = frames[key]
        position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        assert np.allclose(position, frame.position, atol=1e-3)
        assert np.array_equal(frame_pixels.astype(bool), truth[stack_index[key]])


def test_segment_description_and_series_say_what_made_it(grids: dict[str, Written], tmp_path: Path) -> None:
    written = grids["ct-axial"]
    path = _write(written, [Finding("orn", sphere(written.volume, 1.0))], tmp_path / "seg.dcm")
    seg = hd.seg.segread(path)
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "Osteoradionecrosis"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "6574001"  # SNOMED CT necrosis
    assert segment.AnatomicRegionSequence[0].CodeValue == "91609006"  # mandible
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    parameters = str(algorithm.AlgorithmParameters)
    assert ALGORITHM.weights_sha256 in parameters and algorithm.AlgorithmVersion == ALGORITHM.version
    assert UNREVIEWED in seg.SeriesDescription
    assert seg.FrameOfReferenceUID == written.volume.frame_of_reference_uid
    assert seg.PatientID == "TEST001"


def test_two_findings_are_two_segments(grids: dict[str, Written], tmp_path: Path) -> None:
    written = grids["mr-oblique"]
    first = sphere(written.volume, 0.5)
    second = sphere(written.volume, 0.3, centre=LESION_CENTRE + np.array([0.0, 0.0, -9.0]))
    findings = [Finding("crn", first), Finding("ce", second, label="Cerebral edema, left")]
    masks = read_seg_masks(_write(written, findings, tmp_path / "seg.dcm"), written.volume)
    assert set(masks) == {"Cerebral radiation necrosis", "Cerebral edema, left"}
    assert np.array_equal(masks["Cerebral edema, left"], sitk.GetArrayFromImage(second).astype(bool))


def test_empty_frames_kept_or_omitted_per_destination(grids: dict[str, Written], tmp_path: Path) -> None:
    written = grids["ct-axial"]
    finding = [Finding("orn", sphere(written.volume, 0.2))]
    slices = len(written.volume.frames)
    omitted = hd.seg.segread(_write(written, finding, tmp_path / "a.dcm", omit_empty_frames=True))
    kept = hd.seg.segread(_write(written, finding, tmp_path / "b.dcm", omit_empty_frames=False))
    assert int(kept.NumberOfFrames) == slices
    assert 0 < int(omitted.NumberOfFrames) < slices
    empty = sitk.Image(written.volume.image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(written.volume.image)
    nothing = hd.seg.segread(_write(written, [Finding("orn", empty)], tmp_path / "c.dcm"))
    assert int(nothing.NumberOfFrames) == slices  # a SEG cannot have no frames: an empty result keeps them
