"""DICOM-SEG of the findings on the follow-up series (highdicom).

BINARY, one segment per finding, SNOMED CT coded per task (models.tasks), AUTOMATIC with the
algorithm identification (name, version, weights hash), and a series description that says the
result is AI-generated and unreviewed. Frames are the follow-up's own planes (source.py), so the
SEG lines up with the images in any viewer, whatever their orientation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from models.tasks import TASKS
from worker.errors import AssemblyError
from worker.stages.export.algorithm import MANUFACTURER, MODEL_NAME, UNREVIEWED, AlgorithmInfo
from worker.stages.export.source import SourceSeries, mask_on_frames
from worker.stages.export.values import fit_decimal_strings

DEFAULT_SERIES_NUMBER = 901
CONTENT_LABEL = "RTINJURY"


@dataclass(frozen=True)
class Finding:
    """One segment: a task's lesion mask on (or resampled to) the follow-up."""

    task: str
    mask: sitk.Image
    #: Overrides the task's label (e.g. "ORN lesion 2" when a job reports several).
    label: str | None = None


@dataclass(frozen=True)
class SegOptions:
    series_number: int = DEFAULT_SERIES_NUMBER
    #: Some viewers (OHIF, Cornerstone) mis-place SEGs without empty frames; others prefer them
    #: omitted. A per-destination setting (highdicom's default is to omit).
    omit_empty_frames: bool = True


def write_segmentation(
    source: SourceSeries,
    findings: Sequence[Finding],
    algorithm: AlgorithmInfo,
    options: SegOptions | None = None,
) -> Dataset:
    """Build the SEG dataset (not yet saved) for ``findings`` on ``source``'s planes."""
    options = options or SegOptions()
    if not findings:
        raise AssemblyError("no findings to write into a segmentation")
    masks = [_frames_in_source_order(source, mask_on_frames(f.mask, source.frames)) for f in findings]
    pixel_array = np.stack(masks, axis=-1).astype(np.uint8)
    if options.omit_empty_frames and not pixel_array.any():
        # highdicom cannot write a SEG with no frames at all; an empty result keeps its frames.
        options = SegOptions(options.series_number, omit_empty_frames=False)
    descriptions = [_segment(i + 1, f, algorithm) for i, f in enumerate(findings)]
    tasks = sorted({f.task.upper() for f in findings})
    seg = hd.seg.Segmentation(
        source_images=source.datasets,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=options.series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=algorithm.version,
        device_serial_number=algorithm.short_hash,
        content_label=CONTENT_LABEL,
        content_description=f"{'/'.join(tasks)} {UNREVIEWED}"[:64],
        content_creator_name="rtinjury^AI",
        omit_empty_frames=options.omit_empty_frames,
    )
    seg.SeriesDescription = f"{'/'.join(tasks)} lesion ({UNREVIEWED})"[:64]
    fit_decimal_strings(seg)  # plane positions are copied from the source as they are
    return seg


def _frames_in_source_order(source: SourceSeries, planes: np.ndarray) -> np.ndarray:
    """highdicom takes single-frame sources in the order given (ours: stack order) and the frames
    of a multi-frame source in its own frame order (highdicom#330)."""
    if not source.is_multiframe:
        return planes
    order = np.argsort([f.frame_index or 0 for f in source.frames])
    return planes[order]


def _segment(number: int, finding: Finding, algorithm: AlgorithmInfo) -> hd.seg.SegmentDescription:
    spec = TASKS[finding.task]
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm.version,
        parameters={"model": algorithm.model_id, "weights_sha256": algorithm.weights_sha256},
    )
    segment = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=(finding.label or spec.codes.label)[:64],
        segmented_property_category=spec.codes.category,
        segmented_property_type=spec.codes.property_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=identification,
        tracking_uid=generate_uid(),
        tracking_id=f"{spec.name.upper()} finding {number}",
        anatomic_regions=[spec.codes.anatomic_region],
        display_color=hd.color.CIELabColor.from_rgb(*spec.colour),
    )
    return segment
