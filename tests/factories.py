"""Tiny deterministic DICOM writers for tests: image series, enhanced images, RTDOSE, RTPLAN, RTSTRUCT.

Pixel values encode position: every image written here stores ``linear_field(p)`` at the
patient-space centre ``p`` of each pixel, so any reader that places pixels correctly reproduces
the same linear function when sampled at arbitrary points — whatever the orientation, pixel
shape, slice order, gaps or tilt of the stack. Linear interpolation reproduces a linear function
exactly, so resampled stacks are checked to round-off.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RTDoseStorage,
    RTPlanStorage,
    RTStructureSetStorage,
    generate_uid,
)

#: Stored value = (field value - intercept) / slope for CT images.
RESCALE_SLOPE = 0.05
RESCALE_INTERCEPT = -1000.0
FIELD_COEFFICIENTS = np.array([1.0, 2.0, 4.0])
UID_ROOT = "1.2.826.0.1.3680043.10.1207."


def linear_field(points: np.ndarray) -> np.ndarray:
    """The value every test image holds at LPS points, shape (..., 3) → (...)."""
    return np.asarray(points) @ FIELD_COEFFICIENTS


def uid(*parts: object) -> str:
    """A deterministic UID from the given parts."""
    return generate_uid(prefix=UID_ROOT, entropy_srcs=[str(p) for p in parts])


@dataclass
class SeriesSpec:
    """Geometry and identity of a test image series (single-frame files)."""

    positions: Sequence[Sequence[float]]
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0)
    pixel_spacing: tuple[float, float] = (2.0, 2.0)
    rows: int = 16
    cols: int = 20
    modality: str = "CT"
    patient_id: str = "TEST001"
    patient_position: str = "HFS"
    frame_of_reference_uid: str = field(default_factory=lambda: uid("for"))
    series_instance_uid: str = field(default_factory=lambda: uid("series"))
    study_instance_uid: str = field(default_factory=lambda: uid("study"))
    series_description: str = "test series"
    date: str = "20240101"
    name: str = "series"


def pixel_centres(
    position: Sequence[float],
    orientation: Sequence[float],
    spacing: tuple[float, float],
    rows: int,
    cols: int,
) -> np.ndarray:
    """LPS centres of every pixel of a plane, shape (rows, cols, 3)."""
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return (
        np.asarray(position, float)[None, None]
        + (c[..., None] * spacing[1]) * row_dir
        + (r[..., None] * spacing[0]) * col_dir
    )


def base_dataset(sop_class: str, sop_uid: str, spec: SeriesSpec) -> Dataset:
    """A dataset with file meta, patient, study, series and frame-of-reference attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientName, ds.PatientID = "TEST^PATIENT", spec.patient_id
    ds.PatientBirthDate, ds.PatientSex = "19600101", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = spec.study_instance_uid, spec.series_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = spec.date
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.Modality, ds.SeriesNumber = spec.modality, 1
    ds.SeriesDescription = spec.series_description
    ds.FrameOfReferenceUID = spec.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "rtinjury-tests"
    return ds


def image_slice(spec: SeriesSpec, index: int, position: Sequence[float]) -> Dataset:
    """One classic CT/MR slice whose pixels store :func:`linear_field`."""
    sop_class = CTImageStorage if spec.modality == "CT" else MRImageStorage
    ds = base_dataset(sop_class, uid(spec.series_instance_uid, index), spec)
    ds.PatientPosition = spec.patient_position
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in spec.orientation]
    ds.PixelSpacing = [f"{v:g}" for v in spec.pixel_spacing]
    ds.SliceThickness = "2"
    values = linear_field(pixel_centres(position, spec.orientation, spec.pixel_spacing, spec.rows, spec.cols))
    _set_pixels(ds, values, spec.rows, spec.cols)
    return ds


def _set_pixels(ds: Dataset, values: np.ndarray, rows: int, cols: int) -> None:
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = f"{RESCALE_SLOPE:g}", f"{RESCALE_INTERCEPT:g}"
    stored = np.round((values - RESCALE_INTERCEPT) / RESCALE_SLOPE).astype(np.int16)
    ds.PixelData = stored.tobytes()


def write_series(spec: SeriesSpec, folder: Path, order: Sequence[int] | None = None) -> list[Path]:
    """Write one file per position; ``order`` permutes InstanceNumbers to defeat naive sorting."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, position in enumerate(spec.positions):
        ds = image_slice(spec, i, position)
        if order is not None:
            ds.InstanceNumber = int(order[i]) + 1
        path = folder / f"{spec.name}-{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def axial_positions(
    count: int,
    spacing: float = 2.0,
    origin: Sequence[float] = (-20.0, -16.0, -10.0),
    normal: Sequence[float] = (0, 0, 1),
) -> list[list[float]]:
    """Evenly spaced slice positions along ``normal``."""
    return [list(np.asarray(origin, float) + k * spacing * np.asarray(normal, float)) for k in range(count)]


def write_enhanced_mr(spec: SeriesSpec, path: Path, frame_order: Sequence[int] | None = None) -> Path:
    """One Enhanced MR file holding every position as a frame with per-frame geometry."""
    ds = base_dataset(EnhancedMRImageStorage, uid(spec.series_instance_uid, "enhanced"), spec)
    order = list(frame_order) if frame_order is not None else list(range(len(spec.positions)))
    ds.NumberOfFrames = len(order)
    shared = Dataset()
    shared.PlaneOrientationSequence = DicomSequence(
        [_item(ImageOrientationPatient=[f"{v:.8f}" for v in spec.orientation])]
    )
    shared.PixelMeasuresSequence = DicomSequence(
        [_item(PixelSpacing=list(spec.pixel_spacing), SliceThickness=2)]
    )
    shared.PixelValueTransformationSequence = DicomSequence(
        [_item(RescaleSlope=RESCALE_SLOPE, RescaleIntercept=RESCALE_INTERCEPT, RescaleType="US")]
    )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([_per_frame(spec.positions[k]) for k in order])
    planes = [
        linear_field(
            pixel_centres(spec.positions[k], spec.orientation, spec.pixel_spacing, spec.rows, spec.cols)
        )
        for k in order
    ]
    _set_pixels(ds, np.stack(planes), spec.rows, spec.cols)
    del ds.RescaleSlope, ds.RescaleIntercept  # enhanced images carry them per frame group
    ds.save_as(path, enforce_file_format=True)
    return path


def _per_frame(position: Sequence[float]) -> Dataset:
    item = Dataset()
    item.PlanePositionSequence = DicomSequence([_item(ImagePositionPatient=[f"{v:.6f}" for v in position])])
    item.FrameContentSequence = DicomSequence([_item(StackID="1")])
    return item


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


@dataclass
class DoseSpec:
    """A test RTDOSE: geometry, scaling and the RT attributes under test."""

    origin: Sequence[float] = (-20.0, -16.0, -10.0)
    offsets: Sequence[float] = (0, 3, 6, 9, 12)
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0)
    pixel_spacing: tuple[float, float] = (3.0, 3.0)
    rows: int = 8
    cols: int = 10
    scaling: float = 1e-4
    units: str = "GY"
    dose_type: str = "PHYSICAL"
    summation_type: str = "PLAN"
    plan_uid: str | None = None
    beam_numbers: Sequence[int] = ()
    frame_of_reference_uid: str = field(default_factory=lambda: uid("for"))
    patient_id: str = "TEST001"
    name: str = "dose"
    #: Dose (Gy, before units handling) at LPS points; defaults to a positive linear field.
    field_gy: Callable[[np.ndarray], np.ndarray] | None = None


def dose_field(points: np.ndarray) -> np.ndarray:
    """Default test dose: a positive linear function of position (Gy)."""
    return 30.0 + 0.1 * (np.asarray(points) @ np.array([1.0, 2.0, 3.0]))


def write_rtdose(spec: DoseSpec, path: Path) -> Path:
    """An RTDOSE whose frame k lies at origin + offsets[k] · normal (relative offsets).

    For the absolute form, pass offsets that start at the origin's z on an axial grid.
    """
    series = SeriesSpec(
        positions=[],
        modality="RTDOSE",
        patient_id=spec.patient_id,
        frame_of_reference_uid=spec.frame_of_reference_uid,
        series_instance_uid=uid(spec.name, "series"),
    )
    ds = base_dataset(RTDoseStorage, uid(spec.name, "sop"), series)
    ds.ImagePositionPatient = list(spec.origin)
    ds.ImageOrientationPatient = list(spec.orientation)
    ds.PixelSpacing = list(spec.pixel_spacing)
    ds.GridFrameOffsetVector = list(spec.offsets)
    ds.FrameIncrementPointer = 0x3004000C
    ds.NumberOfFrames = len(spec.offsets)
    ds.DoseUnits, ds.DoseType = spec.units, spec.dose_type
    ds.DoseSummationType, ds.DoseGridScaling = spec.summation_type, f"{spec.scaling:.6g}"
    _reference_plan(ds, spec)
    dose = np.stack([_dose_plane(spec, k) for k in range(len(spec.offsets))])
    ds.Rows, ds.Columns = spec.rows, spec.cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    ds.PixelData = np.round(dose / float(f"{spec.scaling:.6g}")).astype(np.uint32).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _dose_plane(spec: DoseSpec, k: int) -> np.ndarray:
    row_dir, col_dir = np.asarray(spec.orientation[:3], float), np.asarray(spec.orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    # Relative and absolute forms both place frame k at offsets[k] - offsets[0] along the normal.
    relative = np.asarray(spec.offsets, float) - float(spec.offsets[0])
    position = np.asarray(spec.origin, float) + relative[k] * normal
    centres = pixel_centres(position, spec.orientation, spec.pixel_spacing, spec.rows, spec.cols)
    return (spec.field_gy or dose_field)(centres)


def _reference_plan(ds: Dataset, spec: DoseSpec) -> None:
    if spec.plan_uid is None:
        return
    beams = DicomSequence([_item(ReferencedBeamNumber=n) for n in spec.beam_numbers])
    group = _item(ReferencedFractionGroupNumber=1)
    if spec.beam_numbers:
        group.ReferencedBeamSequence = beams
    plan = _item(ReferencedSOPClassUID=RTPlanStorage, ReferencedSOPInstanceUID=spec.plan_uid)
    if spec.summation_type == "BEAM":
        plan.ReferencedFractionGroupSequence = DicomSequence([group])
    ds.ReferencedRTPlanSequence = DicomSequence([plan])


def write_rtplan(
    path: Path,
    *,
    sop_uid: str,
    prescription_gy: float | None = 60.0,
    fractions: int = 30,
    beam_doses: Sequence[float] = (),
    frame_of_reference_uid: str | None = None,
    patient_id: str = "TEST001",
) -> Path:
    """A minimal RTPLAN with a prescription and a fraction group."""
    series = SeriesSpec(
        positions=[],
        modality="RTPLAN",
        patient_id=patient_id,
        frame_of_reference_uid=frame_of_reference_uid or uid("for"),
        series_instance_uid=uid(sop_uid, "series"),
    )
    ds = base_dataset(RTPlanStorage, sop_uid, series)
    ds.RTPlanLabel, ds.RTPlanDate, ds.RTPlanGeometry = "TESTPLAN", "20231201", "PATIENT"
    ds.ApprovalStatus = "APPROVED"
    if prescription_gy is not None:
        ds.DoseReferenceSequence = DicomSequence(
            [
                _item(
                    DoseReferenceNumber=1,
                    DoseReferenceStructureType="SITE",
                    DoseReferenceType="TARGET",
                    TargetPrescriptionDose=prescription_gy,
                )
            ]
        )
    group = _item(
        FractionGroupNumber=1,
        NumberOfFractionsPlanned=fractions,
        NumberOfBeams=len(beam_doses),
        NumberOfBrachyApplicationSetups=0,
    )
    group.ReferencedBeamSequence = DicomSequence(
        [_item(ReferencedBeamNumber=i + 1, BeamDose=d) for i, d in enumerate(beam_doses)]
    )
    ds.FractionGroupSequence = DicomSequence([group])
    ds.save_as(path, enforce_file_format=True)
    return path


def write_rtstruct(
    path: Path,
    spec: SeriesSpec,
    rois: Mapping[str, Sequence[np.ndarray]],
    *,
    frame_of_reference_uid: str | None = None,
) -> Path:
    """A minimal RTSTRUCT on the series written from ``spec``, one ROI per entry of ``rois``.

    Each contour is an array of LPS points (N, 3) in mm, written as CLOSED_PLANAR. It references
    the slice of ``spec`` nearest to it along the slice normal, so image references stay valid
    even for a contour that lies between or beyond the slices.
    """
    for_uid = frame_of_reference_uid or spec.frame_of_reference_uid
    series = SeriesSpec(
        positions=[],
        modality="RTSTRUCT",
        patient_id=spec.patient_id,
        frame_of_reference_uid=for_uid,
        series_instance_uid=uid(spec.series_instance_uid, "rtstruct"),
        study_instance_uid=spec.study_instance_uid,
    )
    ds = base_dataset(RTStructureSetStorage, uid(spec.series_instance_uid, "rtstruct", "sop"), series)
    ds.OperatorsName = ""
    ds.StructureSetLabel, ds.StructureSetDate, ds.StructureSetTime = "TEST", spec.date, "120000"
    image_class = CTImageStorage if spec.modality == "CT" else MRImageStorage
    slice_uids = [uid(spec.series_instance_uid, i) for i in range(len(spec.positions))]
    images = [_item(ReferencedSOPClassUID=image_class, ReferencedSOPInstanceUID=u) for u in slice_uids]
    series_ref = _item(SeriesInstanceUID=spec.series_instance_uid, ContourImageSequence=DicomSequence(images))
    study_ref = _item(
        ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1",  # Detached Study Management (retired, customary)
        ReferencedSOPInstanceUID=spec.study_instance_uid,
        RTReferencedSeriesSequence=DicomSequence([series_ref]),
    )
    ds.ReferencedFrameOfReferenceSequence = DicomSequence(
        [_item(FrameOfReferenceUID=for_uid, RTReferencedStudySequence=DicomSequence([study_ref]))]
    )
    nearest = _nearest_slice(spec)
    ds.StructureSetROISequence = DicomSequence()
    ds.ROIContourSequence = DicomSequence()
    ds.RTROIObservationsSequence = DicomSequence()
    for number, (name, contours) in enumerate(rois.items(), start=1):
        ds.StructureSetROISequence.append(
            _item(
                ROINumber=number,
                ReferencedFrameOfReferenceUID=for_uid,
                ROIName=name,
                ROIGenerationAlgorithm="",
            )
        )
        items = [_contour_item(points, images[nearest(points)]) for points in contours]
        ds.ROIContourSequence.append(
            _item(
                ReferencedROINumber=number, ROIDisplayColor=[255, 0, 0], ContourSequence=DicomSequence(items)
            )
        )
        ds.RTROIObservationsSequence.append(
            _item(
                ObservationNumber=number,
                ReferencedROINumber=number,
                RTROIInterpretedType="",
                ROIInterpreter="",
            )
        )
    ds.save_as(path, enforce_file_format=True)
    return path


def _nearest_slice(spec: SeriesSpec) -> Callable[[np.ndarray], int]:
    normal = np.cross(np.asarray(spec.orientation[:3], float), np.asarray(spec.orientation[3:], float))
    depths = np.asarray(spec.positions, float) @ normal
    return lambda points: int(np.argmin(np.abs(depths - np.asarray(points, float).mean(axis=0) @ normal)))


def _contour_item(points: np.ndarray, image: Dataset) -> Dataset:
    image_ref = _item(
        ReferencedSOPClassUID=image.ReferencedSOPClassUID,
        ReferencedSOPInstanceUID=image.ReferencedSOPInstanceUID,
    )
    flat = np.asarray(points, float).ravel()
    return _item(
        ContourImageSequence=DicomSequence([image_ref]),
        ContourGeometricType="CLOSED_PLANAR",
        NumberOfContourPoints=len(flat) // 3,
        ContourData=[f"{v:.4f}" for v in flat],  # DS values stay within 16 characters
    )


def square_contour(centre: Sequence[float], half_x: float, half_y: float) -> np.ndarray:
    """An axial rectangle (4 LPS points) around ``centre``, at the centre's z."""
    x, y, z = (float(v) for v in centre)
    return np.array(
        [
            [x - half_x, y - half_y, z],
            [x + half_x, y - half_y, z],
            [x + half_x, y + half_y, z],
            [x - half_x, y + half_y, z],
        ]
    )


def compress_files(paths: Sequence[Path], syntax: str, folder: Path) -> list[Path]:
    """Copies of ``paths`` in ``folder`` re-encoded with a compressed transfer syntax.

    Uses pydicom's encoders: RLE Lossless natively, JPEG-LS through pyjpegls and JPEG 2000
    through pylibjpeg-openjpeg (which needs images of at least 32 x 32 pixels).
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        target = folder / Path(path).name
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def read_back(path: Path) -> Dataset:
    """Re-read a written file (strict parse)."""
    return pydicom.dcmread(path)
