"""Header index of a set of files: instances grouped into series, with the links between them.

Only headers are read (no pixel data), so indexing a large study is cheap. Files that are not
DICOM are set aside and counted; a truncated, unreadable or empty DICOM file stops the assembly
with its name, because silently skipping it would leave a hole in a series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from worker.errors import DicomReadError
from worker.stages.read.files import TRUNCATED, integer_value, malformed_values, read_header

SOP_CATEGORIES = {
    "1.2.840.10008.5.1.4.1.1.2": "image",  # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1": "image",  # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.2.2": "image",  # Legacy Converted Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.4": "image",  # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1": "image",  # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.4.4": "image",  # Legacy Converted Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.481.2": "rtdose",
    "1.2.840.10008.5.1.4.1.1.481.5": "rtplan",
    "1.2.840.10008.5.1.4.1.1.481.8": "rtplan",  # RT Ion Plan
    "1.2.840.10008.5.1.4.1.1.481.3": "rtstruct",
    "1.2.840.10008.5.1.4.1.1.66.1": "reg",  # Spatial Registration
    "1.2.840.10008.5.1.4.1.1.66.3": "reg",  # Deformable Spatial Registration
    "1.2.840.10008.5.1.4.1.1.66.4": "seg",
}


@dataclass(frozen=True)
class Instance:
    """Header facts of one file."""

    path: Path
    category: str
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    modality: str
    frame_of_reference_uid: str
    date: str
    frames: int
    referenced_series: tuple[str, ...]
    referenced_frames_of_reference: tuple[str, ...]
    referenced_plan: str | None
    header: Dataset = field(repr=False, compare=False)


@dataclass
class Series:
    """Instances that share a SeriesInstanceUID."""

    uid: str
    category: str
    instances: list[Instance]

    @property
    def first(self) -> Instance:
        return self.instances[0]

    @property
    def files(self) -> list[Path]:
        return [i.path for i in self.instances]

    @property
    def frames(self) -> int:
        return sum(i.frames for i in self.instances)

    def text(self, keyword: str) -> str:
        """A header string of the series' first instance ('' when absent).

        Raises
        ------
        worker.errors.DicomReadError
            The value cannot be read (the file is malformed).
        """
        with malformed_values(self.first.path):
            value = self.first.header.get(keyword, "")
            if isinstance(value, MultiValue | list | tuple):
                return "\\".join(str(v) for v in value)
            return str(value or "")


@dataclass
class StudyIndex:
    """All series found in a set of files, plus what was set aside."""

    series: list[Series]
    not_dicom: list[Path] = field(default_factory=list)
    other: list[Instance] = field(default_factory=list)

    def of(self, category: str) -> list[Series]:
        return [s for s in self.series if s.category == category]

    @property
    def patient_ids(self) -> set[str]:
        return {i.patient_id for s in self.series for i in s.instances}


def index_files(
    files: Iterable[Path], on_error: Callable[[Path, DicomReadError], None] | None = None
) -> StudyIndex:
    """Read the headers of ``files`` and group them into series.

    Duplicate SOP instances (the same SOPInstanceUID in two files) are kept once. ``on_error``
    takes the damaged files instead of raising (a batch audit records them against their patient
    and goes on; a job must not run on a series with a hole).

    Raises
    ------
    worker.errors.DicomReadError
        A file looks like DICOM but is truncated or unreadable (unless ``on_error`` is given).
    """
    index = StudyIndex(series=[])
    by_series: dict[str, Series] = {}
    seen: set[str] = set()
    for path in files:
        try:
            instance = _instance(path, index)
        except DicomReadError as error:
            if on_error is None:
                raise
            on_error(path, error)
            continue
        if instance is None or instance.sop_instance_uid in seen:
            continue
        seen.add(instance.sop_instance_uid)
        if instance.category == "other":
            index.other.append(instance)
            continue
        series = by_series.setdefault(
            instance.series_instance_uid, Series(instance.series_instance_uid, instance.category, [])
        )
        series.instances.append(instance)
    index.series = list(by_series.values())
    return index


def _instance(path: Path, index: StudyIndex) -> Instance | None:
    try:
        ds = read_header(path)
    except DicomReadError as exc:
        # A file that announces itself as DICOM but cannot be read is damaged data the user must
        # hear about, and so is an empty file (a copy or transfer cut short: if it was a slice,
        # ignoring it would leave a hole that resampling then fills); anything else (notes,
        # thumbnails, DICOMDIR …) is simply not ours.
        if exc.code == TRUNCATED or _has_dicom_magic(path):
            raise
        if path.stat().st_size == 0:
            raise DicomReadError(
                f"{exc.message}; a copy or transfer was cut short: send the files again", code=TRUNCATED
            ) from None
        index.not_dicom.append(path)
        return None
    with malformed_values(path):
        return _describe(path, ds)


def _has_dicom_magic(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def _describe(path: Path, ds: Dataset) -> Instance:
    return Instance(
        path=path,
        category=SOP_CATEGORIES.get(str(ds.SOPClassUID), "other"),
        patient_id=str(ds.get("PatientID", "") or ""),
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        sop_instance_uid=str(ds.SOPInstanceUID),
        modality=str(ds.get("Modality", "")),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or ""),
        date=_date(ds),
        frames=integer_value(ds, "NumberOfFrames", path.name, default=1) or 1,
        referenced_series=_referenced_series(ds),
        referenced_frames_of_reference=_referenced_frames(ds),
        referenced_plan=_referenced_plan(ds),
        header=ds,
    )


def _date(ds: Dataset) -> str:
    for keyword in ("AcquisitionDate", "SeriesDate", "StudyDate", "ContentDate", "RTPlanDate"):
        if ds.get(keyword):
            return str(ds.get(keyword))
    return ""


def _referenced_series(ds: Dataset) -> tuple[str, ...]:
    uids = [str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", [])]
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            uids += [str(s.SeriesInstanceUID) for s in study.get("RTReferencedSeriesSequence", [])]
    return tuple(uids)


def referenced_images(ds: Dataset, series_uid: str) -> set[str]:
    """SOP instances of ``series_uid`` that an RTSTRUCT lists as its referenced images."""
    return {
        str(image.ReferencedSOPInstanceUID)
        for frame in ds.get("ReferencedFrameOfReferenceSequence", [])
        for study in frame.get("RTReferencedStudySequence", [])
        for series in study.get("RTReferencedSeriesSequence", [])
        if str(series.get("SeriesInstanceUID", "")) == series_uid
        for image in series.get("ContourImageSequence", [])
    }


def _referenced_frames(ds: Dataset) -> tuple[str, ...]:
    uids = [
        str(f.FrameOfReferenceUID)
        for f in ds.get("ReferencedFrameOfReferenceSequence", [])
        if f.get("FrameOfReferenceUID")
    ]
    # Spatial registrations name one frame of reference per registration item.
    uids += [
        str(r.FrameOfReferenceUID) for r in ds.get("RegistrationSequence", []) if r.get("FrameOfReferenceUID")
    ]
    return tuple(uids)


def _referenced_plan(ds: Dataset) -> str | None:
    refs = ds.get("ReferencedRTPlanSequence")
    return str(refs[0].ReferencedSOPInstanceUID) if refs else None
