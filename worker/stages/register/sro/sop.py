"""The Spatial Registration SOP instance we write (PS3.3 A.39, Spatial Registration IOD)."""

from __future__ import annotations

import copy
import re
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, SpatialRegistrationStorage

from worker.stages.register.sro.content import (
    LO_MAX,
    SeriesReference,
    check_uid,
    other_study_items,
    referenced_series_item,
    registration_item,
)
from worker.stages.register.sro.enum import MatrixTypeValues, RegistrationTypeCodes
from worker.stages.register.sro.matrix import mapping_problem, matrix_type

#: Patient and General Study attributes copied from the source dataset as they are; the ones
#: that are absent there are written empty (all are Type 2 except StudyInstanceUID).
COPIED_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
#: Optional (Type 3) attributes copied only when the source has them.
COPIED_OPTIONAL = ("IssuerOfPatientID", "StudyDescription")
MANUFACTURER = "rtinjury"
CONTENT_LABEL = "RTINJURY_REG"
CONTENT_DESCRIPTION = "AI automatic registration, not reviewed by a clinician"
SERIES_DESCRIPTION = "rtinjury follow-up to planning CT registration"
#: A fixed, high series number, so the REG sorts after the acquired series (never random).
SERIES_NUMBER = 9901
CS_PATTERN = re.compile(r"[A-Z0-9_ ]{1,16}")


class SpatialRegistration(Dataset):
    """A Spatial Registration Storage instance holding one rigid/affine fixed → moving mapping.

    Convention: the registered frame of reference (this instance's FrameOfReferenceUID) is the
    *moving* series' frame (the planning CT, where dose and structures live). The first
    Registration Sequence item carries the fixed (follow-up) frame with ``matrix``, which maps
    fixed points into the planning frame (SimpleITK's fixed → moving direction, so the values
    are the registration's own, not an inverse); the second carries the planning frame with
    the identity ("Frame of Reference Identity"). plastimatch and SlicerRT write the other
    way round (the fixed frame registered); :func:`read_spatial_registration` reads both.

    Parameters
    ----------
    source: pydicom.dataset.Dataset
        Header whose Patient and General Study attributes (and SpecificCharacterSet) are
        copied as they are: the follow-up series' first image. The REG joins that study.
    fixed: SeriesReference
        The follow-up series (SimpleITK fixed image).
    moving: SeriesReference
        The planning CT series (SimpleITK moving image).
    matrix: numpy.ndarray, shape (4, 4)
        Homogeneous matrix mapping fixed-frame LPS points (mm) to moving-frame points.
    series_instance_uid, sop_instance_uid: str
        UIDs of the new series and instance.
    series_number, instance_number: int
        SeriesNumber and InstanceNumber.
    content_label, content_description, series_description: str
        ContentLabel (CS, ≤ 16 characters), ContentDescription and SeriesDescription (≤ 64).
    comment: str, optional
        FrameOfReferenceTransformationComment of the fixed frame's registration (≤ 64).
    created: datetime.datetime, optional
        Content, series and instance creation date/time; now when omitted.

    Raises
    ------
    ValueError
        A parameter violates the IOD; the message names the attribute.
    """

    def __init__(
        self,
        source: Dataset,
        fixed: SeriesReference,
        moving: SeriesReference,
        matrix: np.ndarray,
        *,
        series_instance_uid: str,
        sop_instance_uid: str,
        series_number: int = SERIES_NUMBER,
        instance_number: int = 1,
        content_label: str = CONTENT_LABEL,
        content_description: str = CONTENT_DESCRIPTION,
        series_description: str = SERIES_DESCRIPTION,
        comment: str | None = None,
        created: datetime | None = None,
    ) -> None:
        super().__init__()
        matrix = _checked_matrix(matrix)
        _check_frames(fixed, moving)
        _check_identification(content_label, content_description, series_description, instance_number)
        when = created or datetime.now()
        _add_file_meta(self, sop_instance_uid)
        _add_patient_and_study(self, source)
        _add_series(self, series_instance_uid, series_number, series_description, when)
        _add_frame_and_equipment(self, moving.frame_of_reference_uid)
        self.ContentDate, self.ContentTime = _date(when), _time(when)
        self.InstanceNumber = instance_number
        self.ContentLabel = content_label
        self.ContentDescription = content_description
        self.ContentCreatorName = ""
        self.RegistrationSequence = DicomSequence(
            [
                registration_item(
                    fixed,
                    matrix,
                    matrix_type(matrix),
                    RegistrationTypeCodes.IMAGE_CONTENT_BASED,
                    comment,
                ),
                registration_item(
                    moving,
                    np.eye(4),
                    MatrixTypeValues.RIGID,
                    RegistrationTypeCodes.FRAME_OF_REFERENCE_IDENTITY,
                ),
            ]
        )
        _add_references(self, str(self.StudyInstanceUID), (fixed, moving))
        self.InstanceCreationDate, self.InstanceCreationTime = _date(when), _time(when)


def _checked_matrix(matrix: np.ndarray) -> np.ndarray:
    array = np.asarray(matrix, dtype=np.float64)
    if array.shape != (4, 4):
        raise ValueError(f"FrameOfReferenceTransformationMatrix: a 4×4 matrix is required, got {array.shape}")
    problem = mapping_problem(array)
    if problem:
        raise ValueError(f"FrameOfReferenceTransformationMatrix: {problem}")
    return array


def _check_frames(fixed: SeriesReference, moving: SeriesReference) -> None:
    if fixed.frame_of_reference_uid == moving.frame_of_reference_uid:
        raise ValueError(
            "FrameOfReferenceUID: the fixed and moving series share one frame of reference; "
            "they need no registration object"
        )


def _check_identification(label: str, description: str, series_description: str, number: int) -> None:
    if not CS_PATTERN.fullmatch(label):
        raise ValueError(f"ContentLabel: {label!r} must be 1-16 characters of A-Z, 0-9, '_' or space")
    for keyword, value in (("ContentDescription", description), ("SeriesDescription", series_description)):
        if len(value) > LO_MAX or "\\" in value:
            raise ValueError(f"{keyword}: at most {LO_MAX} characters and no backslash")
    if number < 1:
        raise ValueError(f"InstanceNumber: must be positive, got {number}")


def _add_file_meta(ds: Dataset, sop_instance_uid: str) -> None:
    check_uid("SOPInstanceUID", sop_instance_uid)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SpatialRegistrationStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SpatialRegistrationStorage
    ds.SOPInstanceUID = sop_instance_uid


def _add_patient_and_study(ds: Dataset, source: Dataset) -> None:
    study_uid = str(source.get("StudyInstanceUID", "") or "")
    check_uid("StudyInstanceUID", study_uid)
    if "SpecificCharacterSet" in source:
        ds.SpecificCharacterSet = copy.deepcopy(source.SpecificCharacterSet)
    ds.StudyInstanceUID = study_uid
    for keyword in COPIED_TYPE2 + COPIED_OPTIONAL:
        if keyword in source:
            ds.add(copy.deepcopy(source[keyword]))
        elif keyword in COPIED_TYPE2:
            # Type 2: present and empty when unknown; a value is never made up.
            setattr(ds, keyword, None)


def _add_series(ds: Dataset, uid: str, number: int, description: str, when: datetime) -> None:
    check_uid("SeriesInstanceUID", uid)
    ds.Modality = "REG"
    # Type 2C (paired body parts); the registration has no side of its own, so it stays empty.
    ds.Laterality = None
    ds.SeriesInstanceUID = uid
    ds.SeriesNumber = number
    ds.SeriesDate, ds.SeriesTime = _date(when), _time(when)
    ds.SeriesDescription = description


def _add_frame_and_equipment(ds: Dataset, frame_of_reference_uid: str) -> None:
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MANUFACTURER
    ds.SoftwareVersions = _software_version()


def _add_references(ds: Dataset, study_uid: str, series: tuple[SeriesReference, ...]) -> None:
    # Common Instance Reference module: series of the REG's own study go in the Referenced
    # Series Sequence, those of other studies (the planning CT, usually) one level down.
    same_study = [s for s in series if s.study_instance_uid == study_uid]
    if same_study:
        ds.ReferencedSeriesSequence = DicomSequence([referenced_series_item(s) for s in same_study])
    others = other_study_items(study_uid, series)
    if others:
        ds.StudiesContainingOtherReferencedInstancesSequence = DicomSequence(others)


def _software_version() -> str:
    try:
        return version("rtinjury")
    except PackageNotFoundError:
        return "unknown"


def _date(when: datetime) -> str:
    return when.strftime("%Y%m%d")


def _time(when: datetime) -> str:
    return when.strftime("%H%M%S")
