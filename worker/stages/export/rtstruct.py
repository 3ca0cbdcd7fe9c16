"""RTSTRUCT of the findings on the follow-up series, written by our own code.

rt-utils 1.2.7 (the common Python writer) misplaces non-square pixels (qurit/rt-utils#92),
assumes even slice spacing (#97), writes DS values over 16 characters, needs StudyID/Date/Time
and drops undecodable slices silently (reference/service_anchors.md §5.1). Guards could not fix
the geometry, so contours are made here: each plane's outline along pixel edges (contours.py),
placed with that plane's own IPP/IOP/PixelSpacing. rt-utils stays useful as an independent
reader in the tests.

The set is labelled unapproved; ROIs are named per task, coloured per task, AUTOMATIC; holes and
several islands are kept (loops combined by XOR on reading).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from models.tasks import TASKS
from worker.errors import AssemblyError
from worker.stages.export.algorithm import MANUFACTURER, MODEL_NAME, UNREVIEWED, AlgorithmInfo
from worker.stages.export.contours import slice_loops
from worker.stages.export.seg import Finding
from worker.stages.export.source import SourceSeries, mask_on_frames
from worker.stages.read.frames import Frame

RT_STRUCTURE_SET_STORAGE = UID("1.2.840.10008.5.1.4.1.1.481.3")
#: Customary (retired) SOP class for RTReferencedStudySequence items; TPSs expect it.
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"
DEFAULT_SERIES_NUMBER = 902
HIGH_DOSE_ROI_NAME = "HighDose_AI"
HIGH_DOSE_COLOUR = (255, 255, 0)
#: Patient/study attributes copied from the follow-up (Type 2 ones are written even when empty).
_PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "IssuerOfPatientID",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "StudyDescription",
)  # fmt: skip
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "StudyID", "AccessionNumber", "ReferringPhysicianName")  # fmt: skip


@dataclass(frozen=True)
class Roi:
    name: str
    colour: tuple[int, int, int]
    mask: np.ndarray  # (planes, rows, cols) on the source frames
    interpreted_type: str
    description: str


@dataclass(frozen=True)
class RtstructOptions:
    series_number: int = DEFAULT_SERIES_NUMBER


def write_rtstruct(
    source: SourceSeries,
    findings: Sequence[Finding],
    algorithm: AlgorithmInfo,
    *,
    high_dose_region: Finding | None = None,
    options: RtstructOptions | None = None,
) -> Dataset:
    """Build the RTSTRUCT dataset for ``findings`` (and optionally the high-dose region r)."""
    options = options or RtstructOptions()
    if not findings:
        raise AssemblyError("no findings to write into a structure set")
    rois = [_finding_roi(f, source) for f in findings]
    if high_dose_region is not None:
        rois.append(
            Roi(
                HIGH_DOSE_ROI_NAME,
                HIGH_DOSE_COLOUR,
                mask_on_frames(high_dose_region.mask, source.frames),
                "DOSE_REGION",
                "high-dose region r = largest component of dose >= tau * Dmax",
            )
        )
    ds = _header(source, algorithm, options, [f.task for f in findings])
    ds.StructureSetROISequence = DicomSequence()
    ds.ROIContourSequence = DicomSequence()
    ds.RTROIObservationsSequence = DicomSequence()
    for number, roi in enumerate(rois, start=1):
        _add_roi(ds, number, roi, source)
    return ds


def _finding_roi(finding: Finding, source: SourceSeries) -> Roi:
    spec = TASKS[finding.task]
    return Roi(
        name=spec.roi_name,
        colour=spec.colour,
        mask=mask_on_frames(finding.mask, source.frames),
        # Type 2: no defined term fits an injury finding, so it is left empty.
        interpreted_type="",
        description=f"{finding.label or spec.codes.label}, {UNREVIEWED}",
    )


def _header(
    source: SourceSeries, algorithm: AlgorithmInfo, options: RtstructOptions, tasks: list[str]
) -> Dataset:
    first = source.first
    now = dt.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = first.get("SpecificCharacterSet", "ISO_IR 192")
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for keyword in _PATIENT_STUDY:
        if keyword in first:
            setattr(ds, keyword, first.get(keyword))
        elif keyword in _TYPE2:
            setattr(ds, keyword, "")
    # Frame of Reference module (part of the RT Structure Set IOD since 2021; dciodvfy checks it).
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = options.series_number
    label = "/".join(sorted({t.upper() for t in tasks}))
    ds.SeriesDescription = f"{label} contours ({UNREVIEWED})"[:64]
    ds.OperatorsName = ""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.SoftwareVersions = algorithm.version
    ds.DeviceSerialNumber = algorithm.short_hash
    ds.InstanceNumber = 1
    ds.StructureSetLabel = f"{label}_AI"[:16]
    ds.StructureSetName = f"{label} AI"[:64]
    ds.StructureSetDescription = f"{UNREVIEWED}; model {algorithm.model_id}"[:1024]
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.ApprovalStatus = "UNAPPROVED"
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([_frame_of_reference(source)])
    return ds


def _frame_of_reference(source: SourceSeries) -> Dataset:
    first = source.first
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = DicomSequence([_image_reference(source, f) for f in source.frames])
    study = Dataset()
    study.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])
    item = Dataset()
    item.FrameOfReferenceUID = first.FrameOfReferenceUID
    item.RTReferencedStudySequence = DicomSequence([study])
    return item


def _image_reference(source: SourceSeries, frame: Frame) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.dataset_of(frame).SOPClassUID
    ref.ReferencedSOPInstanceUID = frame.sop_instance_uid
    if frame.frame_index is not None:
        ref.ReferencedFrameNumber = frame.frame_index + 1
    return ref


def _add_roi(ds: Dataset, number: int, roi: Roi, source: SourceSeries) -> None:
    structure = Dataset()
    structure.ROINumber = number
    structure.ReferencedFrameOfReferenceUID = source.first.FrameOfReferenceUID
    structure.ROIName = roi.name
    structure.ROIDescription = roi.description[:64]
    structure.ROIGenerationAlgorithm = "AUTOMATIC"
    structure.ROIGenerationDescription = "rtinjury prompted 3D SAM"
    ds.StructureSetROISequence.append(structure)

    contours = DicomSequence()
    for frame, plane in zip(source.frames, roi.mask, strict=True):
        for loop in slice_loops(plane):
            contours.append(_contour(source, frame, loop.points))
    item = Dataset()
    item.ReferencedROINumber = number
    item.ROIDisplayColor = list(roi.colour)
    if len(contours):
        item.ContourSequence = contours
    ds.ROIContourSequence.append(item)

    observation = Dataset()
    observation.ObservationNumber = number
    observation.ReferencedROINumber = number
    observation.RTROIInterpretedType = roi.interpreted_type
    observation.ROIInterpreter = ""
    ds.RTROIObservationsSequence.append(observation)


def _contour(source: SourceSeries, frame: Frame, points_rc: np.ndarray) -> Dataset:
    """One CLOSED_PLANAR contour: (row, col) pixel coordinates → this plane's LPS positions."""
    rows, cols = points_rc[:, 0], points_rc[:, 1]
    lps = (
        frame.position[None, :]
        + (cols * frame.pixel_spacing[1])[:, None] * frame.row_dir[None, :]
        + (rows * frame.pixel_spacing[0])[:, None] * frame.col_dir[None, :]
    )
    item = Dataset()
    item.ContourImageSequence = DicomSequence([_image_reference(source, frame)])
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(lps)
    item.ContourData = [_ds(v) for v in lps.ravel()]
    return item


def _ds(value: float) -> str:
    """A DS value within the standard's 16 characters (µm precision is far below any voxel)."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
