"""DICOM-SEG → masks on the image grid, checked against highdicom's own reading."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from tests.conftest import SHARED_DATA
from tests.factories import SeriesSpec, axial_positions, uid, write_series
from worker.errors import BrokenReferenceError, GeometryError, InputError
from worker.stages.read.rtstruct import physical_to_index
from worker.stages.read.seg import read_seg_masks
from worker.stages.read.series import read_image_series

DCMQI = SHARED_DATA / "dcmqi-ct3-seg"


@pytest.fixture(scope="module")
def ct3():
    return read_image_series(sorted((DCMQI / "ct-3slice").glob("*.dcm")))


@pytest.mark.parametrize("name", ["liver_seg.dcm", "partial_overlaps_seg.dcm"])
def test_dcmqi_segs_agree_with_highdicom_by_source_instance(ct3, name: str) -> None:
    ours = read_seg_masks(DCMQI / name, ct3)
    seg = hd.seg.segread(DCMQI / name)
    numbers = seg.get_segment_numbers()
    # dcmqi does not state that spatial locations are preserved, hence ignore_spatial_locations.
    theirs = seg.get_pixels_by_source_instance(
        ct3.sop_instance_uids, segment_numbers=numbers, ignore_spatial_locations=True
    )
    assert set(ours) == {seg.get_segment_description(n).segment_label for n in numbers}
    for i, number in enumerate(numbers):
        label = seg.get_segment_description(number).segment_label
        np.testing.assert_array_equal(ours[label], theirs[..., i].astype(bool))
    assert sum(int(m.sum()) for m in ours.values()) > 0


@pytest.mark.parametrize("name", ["liver_seg.dcm", "partial_overlaps_seg.dcm"])
def test_dcmqi_segs_agree_with_highdicom_volume_geometry(ct3, name: str) -> None:
    # highdicom's volume carries its own affine; map each of its slices into our grid by position.
    ours = read_seg_masks(DCMQI / name, ct3)
    seg = hd.seg.segread(DCMQI / name)
    volume = seg.get_volume()
    labels = [seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()]
    array = volume.array
    for i in range(array.shape[0]):
        position = (volume.affine @ np.array([i, 0, 0, 1.0]))[:3]
        col, row, k = np.round(physical_to_index(ct3.image, position[None])[0]).astype(int)
        assert (col, row) == (0, 0)
        for s, label in enumerate(labels):
            np.testing.assert_array_equal(ours[label][k], array[i, :, :, s].astype(bool))


def test_partial_overlaps_keep_each_segment(ct3) -> None:
    masks = read_seg_masks(DCMQI / "partial_overlaps_seg.dcm", ct3)
    assert list(masks) == ["GREEN", "ORANGE", "PURPLE", "LIGHT_BLUE", "DARK_BLUE"]
    assert masks["PURPLE"].sum(axis=(1, 2)).tolist() == [117, 117, 10509]
    assert (masks["GREEN"] & masks["ORANGE"]).any()  # overlapping segments are not merged


def test_seg_in_another_frame_of_reference_is_refused(ct3, tmp_path: Path) -> None:
    ds = pydicom.dcmread(DCMQI / "liver_seg.dcm")
    ds.FrameOfReferenceUID = uid("another frame of reference")
    path = tmp_path / "moved.dcm"
    ds.save_as(path)
    with pytest.raises(BrokenReferenceError, match=r"moved\.dcm: SEG frame of reference differs"):
        read_seg_masks(path, ct3)


def test_seg_frames_off_the_pixel_grid_are_refused(ct3, tmp_path: Path) -> None:
    ds = pydicom.dcmread(DCMQI / "liver_seg.dcm")
    position = ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0]
    x = float(position.ImagePositionPatient[0]) + 0.4  # half a pixel
    position.ImagePositionPatient = [f"{x:.4f}", *position.ImagePositionPatient[1:]]
    path = tmp_path / "shifted.dcm"
    ds.save_as(path)
    with pytest.raises(GeometryError, match="do not lie on the image series' pixel grid"):
        read_seg_masks(path, ct3)


def test_an_image_is_not_a_seg(ct3) -> None:
    with pytest.raises(InputError, match="not a Segmentation"):
        read_seg_masks(sorted((DCMQI / "ct-3slice").glob("*.dcm"))[0], ct3)


def test_highdicom_seg_on_a_non_square_feet_first_series(tmp_path: Path) -> None:
    # Written by highdicom from a mask on a test-made grid, read back onto the same grid;
    # empty frames are omitted from the SEG, so slices without frames must stay empty.
    spec = SeriesSpec(
        positions=axial_positions(5),
        orientation=(-1, 0, 0, 0, 1, 0),
        pixel_spacing=(1.5, 2.5),
        rows=12,
        cols=10,
    )
    paths = write_series(spec, tmp_path / "ct")
    volume = read_image_series(paths)
    sources = [pydicom.dcmread(p) for p in paths]
    by_uid = {ds.SOPInstanceUID: ds for ds in sources}
    ordered = [by_uid[u] for u in volume.sop_instance_uids]
    mask = np.zeros((5, 12, 10), dtype=bool)
    mask[1, 2:7, 3:9] = True
    mask[3, 5:11, 0:4] = True
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=ordered,
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=uid("seg series"),
        series_number=2,
        sop_instance_uid=uid("seg"),
        instance_number=1,
        manufacturer="rtinjury-tests",
        manufacturer_model_name="tests",
        software_versions="0",
        device_serial_number="0",
    )
    assert seg.NumberOfFrames == 2
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    masks = read_seg_masks(path, volume)
    np.testing.assert_array_equal(masks["lesion"], mask)
