"""Ground-truth DICOM-SEG writer (highdicom), one binary segment on the follow-up series.

Segment codes come from :mod:`models.tasks`.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM

from models.tasks import TASKS, SegmentCodes

from .dicom_common import (
    DEVICE_SERIAL,
    INSTITUTION,
    MANUFACTURER,
    MODEL_NAME,
    SOFTWARE_VERSION,
    SeriesInfo,
    da,
    make_uid,
    write,
)

SEGMENT_CODES: dict[str, SegmentCodes] = {name: spec.codes for name, spec in TASKS.items()}

SERIES_DESCRIPTION = "Ground truth (synthetic)"


def _segment(task: str, tracking_uid: str) -> hd.seg.SegmentDescription:
    spec = SEGMENT_CODES[task]
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=spec.label,
        segmented_property_category=spec.category,
        segmented_property_type=spec.property_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        tracking_uid=tracking_uid,
        tracking_id=f"{task.upper()} lesion 1",
        anatomic_regions=[spec.anatomic_region],
    )
    segment.SegmentDescription = "Synthetic ground truth: analytic lesion sampled at voxel centres"
    return segment


def _make_deterministic(seg: hd.seg.Segmentation, series: SeriesInfo) -> None:
    # highdicom stamps creation and contribution times from the clock and
    # draws a random DimensionOrganizationUID; replace them so that equal
    # inputs give equal bytes.
    seg.InstanceCreationDate = DA(da(series.date))
    seg.InstanceCreationTime = TM(series.time)
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = da(series.date) + series.time
    new_uid = make_uid(series.uid, "dimension-organization")
    seg.DimensionOrganizationSequence[0].DimensionOrganizationUID = new_uid
    for index in seg.DimensionIndexSequence:
        index.DimensionOrganizationUID = new_uid


def write_seg(
    task: str,
    mask: np.ndarray,
    source_images: list[Dataset],
    series: SeriesInfo,
    sop_instance_uid: str,
    tracking_uid: str,
    path: Path,
) -> Dataset:
    """Write the ground truth of one follow-up as a binary DICOM-SEG.

    Parameters
    ----------
    task : str
        "orn", "ce" or "crn" (selects label and codes).
    mask : numpy.ndarray, bool, shape (slices, rows, columns)
        Lesion on the follow-up grid, slices in the order of ``source_images``.
    source_images : list of pydicom.dataset.Dataset
        The follow-up series the mask is drawn on.
    series : SeriesInfo
        The SEG series (its date is the content date).
    sop_instance_uid, tracking_uid : str
    path : pathlib.Path
    """
    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment(task, tracking_uid)],
        series_instance_uid=series.uid,
        series_number=series.number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
        device_serial_number=DEVICE_SERIAL,
        content_description="Synthetic ground truth",
        content_creator_name="SYNTH^GROUNDTRUTH",
        content_label="GROUND_TRUTH",
        series_description=SERIES_DESCRIPTION,
        content_date=series.date,
        content_time=series.time,
        series_date=series.date,
        series_time=series.time,
        institution_name=INSTITUTION,
    )
    _make_deterministic(seg, series)
    write(seg, path)
    return seg
