"""Building blocks of a Spatial Registration: the registered series and the sequence items."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import RE_VALID_UID
from pydicom.valuerep import format_number_as_ds

from worker.stages.register.sro.enum import Code, MatrixTypeValues

#: Matrix entries closer to zero than this are written as 0 (round-off of a rotation, not data).
ZERO_BELOW = 1e-12
#: LO values (comments, descriptions) hold at most 64 characters.
LO_MAX = 64


@dataclass(frozen=True)
class InstanceReference:
    """One referenced image: its SOP Class UID and SOP Instance UID."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class SeriesReference:
    """Identity of an image series that a registration links: study, series, frame, images.

    Parameters
    ----------
    study_instance_uid: str
        StudyInstanceUID of the series.
    series_instance_uid: str
        SeriesInstanceUID.
    frame_of_reference_uid: str
        FrameOfReferenceUID shared by all the images.
    instances: tuple[InstanceReference, ...]
        The images, referenced from the Common Instance Reference module.
    """

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    instances: tuple[InstanceReference, ...]

    def __post_init__(self) -> None:
        # Frozen, and hashable only with a tuple: a list passed in is copied into one.
        object.__setattr__(self, "instances", tuple(self.instances))
        check_uid("StudyInstanceUID", self.study_instance_uid)
        check_uid("SeriesInstanceUID", self.series_instance_uid)
        check_uid("FrameOfReferenceUID", self.frame_of_reference_uid)
        if not self.instances:
            raise ValueError("ReferencedInstanceSequence: a series reference needs at least one image")
        for instance in self.instances:
            check_uid("ReferencedSOPClassUID", instance.sop_class_uid)
            check_uid("ReferencedSOPInstanceUID", instance.sop_instance_uid)

    @classmethod
    def from_datasets(cls, datasets: Iterable[Dataset]) -> SeriesReference:
        """The reference to a series from its images' headers (pixel data not needed).

        Raises
        ------
        ValueError
            No dataset, or datasets of different series or frames of reference.
        """
        headers = list(datasets)
        if not headers:
            raise ValueError("datasets: at least one image header is required")
        for keyword in ("SeriesInstanceUID", "FrameOfReferenceUID"):
            values = {str(ds.get(keyword, "")) for ds in headers}
            if len(values) > 1:
                raise ValueError(f"{keyword}: the images belong to {len(values)} different values")
        first = headers[0]
        return cls(
            study_instance_uid=str(first.get("StudyInstanceUID", "")),
            series_instance_uid=str(first.get("SeriesInstanceUID", "")),
            frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
            instances=tuple(InstanceReference(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in headers),
        )


def check_uid(keyword: str, value: str) -> None:
    """Refuse a value that is not a UID (checked without pydicom's UID, which raises in strict mode)."""
    if not value or len(value) > 64 or not RE_VALID_UID.match(value):
        raise ValueError(f"{keyword}: {value!r} is not a valid UID")


def format_matrix(matrix: np.ndarray) -> list[str]:
    """The 16 entries of a 4×4 matrix, row-major, as DS strings of at most 16 characters.

    Each entry keeps as many significant digits as 16 characters allow (13 decimals for a
    rotation entry, 11–12 for a translation in mm), far below any geometric tolerance.
    """
    values = np.asarray(matrix, dtype=np.float64).ravel()
    if values.size != 16:
        raise ValueError(f"FrameOfReferenceTransformationMatrix: 16 values required, got {values.size}")
    return [format_number_as_ds(0.0 if abs(v) < ZERO_BELOW else float(v)) for v in values]


def code_item(code: Code) -> Dataset:
    """A Code Sequence Macro item."""
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def registration_item(
    series: SeriesReference,
    matrix: np.ndarray,
    matrix_type: MatrixTypeValues,
    code: Code,
    comment: str | None = None,
) -> Dataset:
    """A Registration Sequence item: points of the series' frame → the registered frame.

    The item names the frame (FrameOfReferenceUID) and also lists the series' images
    (ReferencedImageSequence, allowed beside the frame): they are the instances the Common
    Instance Reference module indexes, and viewers show the registration on them.
    """
    if comment is not None and len(comment) > LO_MAX:
        raise ValueError(f"FrameOfReferenceTransformationComment: at most {LO_MAX} characters")
    matrix_item = Dataset()
    matrix_item.FrameOfReferenceTransformationMatrix = format_matrix(matrix)
    matrix_item.FrameOfReferenceTransformationMatrixType = MatrixTypeValues(matrix_type).value
    registration = Dataset()
    if comment:
        registration.FrameOfReferenceTransformationComment = comment
    registration.RegistrationTypeCodeSequence = DicomSequence([code_item(code)])
    registration.MatrixSequence = DicomSequence([matrix_item])
    item = Dataset()
    item.FrameOfReferenceUID = series.frame_of_reference_uid
    item.ReferencedImageSequence = DicomSequence([_instance_item(i) for i in series.instances])
    item.MatrixRegistrationSequence = DicomSequence([registration])
    return item


def referenced_series_item(series: SeriesReference) -> Dataset:
    """A Referenced Series Sequence item (Series and Instance Reference Macro)."""
    item = Dataset()
    item.SeriesInstanceUID = series.series_instance_uid
    item.ReferencedInstanceSequence = DicomSequence(
        [_instance_item(instance) for instance in series.instances]
    )
    return item


def _instance_item(instance: InstanceReference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = instance.sop_class_uid
    item.ReferencedSOPInstanceUID = instance.sop_instance_uid
    return item


def other_study_items(study_uid: str, series: Sequence[SeriesReference]) -> list[Dataset]:
    """Studies Containing Other Referenced Instances items for series outside ``study_uid``."""
    studies: dict[str, list[SeriesReference]] = {}
    for reference in series:
        if reference.study_instance_uid != study_uid:
            studies.setdefault(reference.study_instance_uid, []).append(reference)
    items = []
    for uid, members in studies.items():
        item = Dataset()
        item.StudyInstanceUID = uid
        item.ReferencedSeriesSequence = DicomSequence([referenced_series_item(s) for s in members])
        items.append(item)
    return items
