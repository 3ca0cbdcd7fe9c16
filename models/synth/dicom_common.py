"""Shared DICOM module writers: identifiers, patient/study/series, equipment, geometry.

Everything is deterministic: UIDs are hashes of the generator's inputs and all
dates and times come from the case parameters, never from the clock.
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from .geometry import AXIAL_IOP, Grid

MANUFACTURER = "rtinjury-synth"
MODEL_NAME = "analytic head-and-neck phantom"
SOFTWARE_VERSION = "rtinjury-synth 1.0"
DEVICE_SERIAL = "SYNTH-0001"
INSTITUTION = "Synthetic Hospital"


def make_uid(*parts: object) -> str:
    """A UID that depends only on ``parts``.

    The parts are joined with a separator before hashing: pydicom concatenates
    its entropy sources as-is, so ["1", "23"] and ["12", "3"] would collide.
    (``generate_uid(prefix=None)`` ignores the entropy and is random.)
    """
    return str(generate_uid(entropy_srcs=["rtinjury-synth|" + "|".join(map(str, parts))]))


def ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    return format_number_as_ds(float(value))


def da(day: dt.date) -> str:
    """DICOM DA."""
    return day.strftime("%Y%m%d")


@dataclass(frozen=True)
class PatientInfo:
    """Fake, PHI-free patient identity."""

    patient_id: str
    name: str
    birth_date: dt.date
    sex: str

    def age_on(self, day: dt.date) -> int:
        """Age in whole years on ``day``."""
        before_birthday = (day.month, day.day) < (self.birth_date.month, self.birth_date.day)
        return day.year - self.birth_date.year - int(before_birthday)


@dataclass(frozen=True)
class StudyInfo:
    """One imaging study (planning or a follow-up)."""

    uid: str
    date: dt.date
    time: str
    study_id: str
    accession: str
    description: str


@dataclass(frozen=True)
class SeriesInfo:
    """One series; ``date``/``time`` also serve as acquisition and content date."""

    uid: str
    number: int
    description: str
    date: dt.date
    time: str
    frame_of_reference_uid: str


def new_dataset(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    """An empty dataset with file meta for Explicit VR Little Endian and SOP Common set."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds_ = Dataset()
    ds_.file_meta = meta
    ds_.SOPClassUID = sop_class_uid
    ds_.SOPInstanceUID = sop_instance_uid
    return ds_


def add_patient(ds_: Dataset, patient: PatientInfo, study: StudyInfo) -> None:
    """Patient and Patient Study modules (Type 2 attributes always present)."""
    ds_.PatientName = patient.name
    ds_.PatientID = patient.patient_id
    ds_.PatientBirthDate = da(patient.birth_date)
    ds_.PatientSex = patient.sex
    ds_.PatientAge = f"{patient.age_on(study.date):03d}Y"
    ds_.PatientIdentityRemoved = "YES"
    ds_.DeidentificationMethod = "Synthetic data: no real patient"


def add_study(ds_: Dataset, study: StudyInfo) -> None:
    """General Study module."""
    ds_.StudyInstanceUID = study.uid
    ds_.StudyDate = da(study.date)
    ds_.StudyTime = study.time
    ds_.ReferringPhysicianName = ""
    ds_.StudyID = study.study_id
    ds_.AccessionNumber = study.accession
    ds_.StudyDescription = study.description


def add_series(ds_: Dataset, series: SeriesInfo, modality: str) -> None:
    """General Series (or RT Series) module, plus the Frame of Reference module."""
    ds_.Modality = modality
    ds_.SeriesInstanceUID = series.uid
    ds_.SeriesNumber = series.number
    ds_.SeriesDescription = series.description
    ds_.SeriesDate = da(series.date)
    ds_.SeriesTime = series.time
    ds_.OperatorsName = ""
    ds_.FrameOfReferenceUID = series.frame_of_reference_uid
    ds_.PositionReferenceIndicator = ""


def add_equipment(ds_: Dataset) -> None:
    """General Equipment module."""
    ds_.Manufacturer = MANUFACTURER
    ds_.InstitutionName = INSTITUTION
    ds_.ManufacturerModelName = MODEL_NAME
    ds_.DeviceSerialNumber = DEVICE_SERIAL
    ds_.SoftwareVersions = SOFTWARE_VERSION


def add_common(
    ds_: Dataset, patient: PatientInfo, study: StudyInfo, series: SeriesInfo, modality: str
) -> None:
    """Patient, study, series, frame of reference and equipment in one call."""
    add_patient(ds_, patient, study)
    add_study(ds_, study)
    add_series(ds_, series, modality)
    add_equipment(ds_)


def add_image_plane(ds_: Dataset, grid: Grid, k: int) -> None:
    """Image Plane module for slice ``k`` of an axial grid."""
    ds_.PixelSpacing = [ds(v) for v in grid.pixel_spacing]
    ds_.ImageOrientationPatient = [ds(v) for v in AXIAL_IOP]
    ds_.ImagePositionPatient = [ds(v) for v in grid.slice_position(k)]
    ds_.SliceThickness = ds(grid.spacing[2])
    ds_.SliceLocation = ds(grid.slice_z(k))


def add_pixels(ds_: Dataset, pixels: np.ndarray, bits_stored: int) -> None:
    """Image Pixel module for unsigned monochrome data, shape (rows, columns) or (frames, rows, columns)."""
    ds_.SamplesPerPixel = 1
    ds_.PhotometricInterpretation = "MONOCHROME2"
    ds_.Rows, ds_.Columns = pixels.shape[-2:]
    ds_.BitsAllocated = pixels.dtype.itemsize * 8
    ds_.BitsStored = bits_stored
    ds_.HighBit = bits_stored - 1
    ds_.PixelRepresentation = 0
    ds_.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()


def write(ds_: Dataset, path: Path) -> Path:
    """Write as a DICOM Part 10 file (Explicit VR Little Endian)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds_, enforce_file_format=True)
    return path


def _clone(template: Dataset) -> Dataset:
    """Copy each data element of a flat template.

    Dataset.update() would share the DataElement objects with the template, so
    setting one slice's UID would change every slice; deepcopy is slow.
    """
    item = Dataset()
    for elem in template:
        item.add(copy.copy(elem))
    item.file_meta = FileMetaDataset()
    for elem in template.file_meta:
        item.file_meta.add(copy.copy(elem))
    return item


def write_slices(
    template: Dataset, pixels: np.ndarray, grid: Grid, bits_stored: int, folder: Path
) -> list[Dataset]:
    """Write one single-frame image per slice of ``pixels`` (slices, rows, columns).

    ``template`` holds everything but the per-slice attributes; slice ``k`` gets
    InstanceNumber k+1, its position, a UID derived from the series UID and its
    pixels. Files are named ``0001.dcm``… in slice order (feet to head).
    """
    written = []
    for k in range(pixels.shape[0]):
        item = _clone(template)
        uid = make_uid(template.SeriesInstanceUID, "slice", k)
        item.SOPInstanceUID = uid
        item.file_meta.MediaStorageSOPInstanceUID = UID(uid)
        item.InstanceNumber = k + 1
        add_image_plane(item, grid, k)
        add_pixels(item, pixels[k], bits_stored)
        write(item, folder / f"{k + 1:04d}.dcm")
        written.append(item)
    return written
