"""Reading what the node needs from a received instance: its file meta and the few header
attributes it files by, without reading pixel data or the big RT sequences."""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from worker.stages.assemble.case import patient_alias

__all__ = ["HeaderError", "InstanceHeader", "patient_alias", "patient_key", "read_file_meta", "read_header"]

#: The attributes the node routes on, all in groups 0008-0020, so reading stops after the last one.
_HEADER_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
)
_HEADER_TAGS: list[BaseTag | int] = [Tag(keyword) for keyword in ("SpecificCharacterSet", *_HEADER_KEYWORDS)]
_LAST_HEADER_TAG = Tag("SeriesInstanceUID")
#: Inflated bytes read from a deflated dataset to find the header (it sits at the very start).
_INFLATED_HEAD_BYTES = 4 * 1024**2


def patient_key(patient_id: str) -> str:
    """The patient without the identifier: SHA-256 of the PatientID, hex."""
    return hashlib.sha256(patient_id.encode()).hexdigest()


class HeaderError(ValueError):
    """The dataset's header cannot be read or lacks an attribute; the message names no value."""


@dataclass(frozen=True)
class InstanceHeader:
    """The few attributes of a received instance the node needs to file it."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str

    @property
    def patient_key(self) -> str:
        return patient_key(self.patient_id)

    @property
    def file_name(self) -> str:
        """The stored file's name: a hash of the SOPInstanceUID, so the UID is not in the path."""
        return hashlib.sha256(self.sop_instance_uid.encode()).hexdigest()[:24] + ".dcm"


def read_header(fp: BinaryIO, transfer_syntax: UID) -> InstanceHeader:
    """Read the routing attributes of the dataset that starts at ``fp``'s position.

    Reading stops after SeriesInstanceUID (group 0020), so pixel data and the big RT sequences
    are never read, whatever the instance's size.

    Raises
    ------
    HeaderError
        When the dataset cannot be parsed or an attribute is missing or empty.
    """
    try:
        # Inside: a damaged deflated stream is a zlib.error (found by fuzz/fuzz_dicom.py).
        stream: BinaryIO = _inflated_head(fp) if transfer_syntax.is_deflated else fp
        dataset = read_dataset(
            stream,
            is_implicit_VR=transfer_syntax.is_implicit_VR,
            is_little_endian=transfer_syntax.is_little_endian,
            stop_when=_past_header,
            specific_tags=_HEADER_TAGS,
        )
        values = {keyword: _required(dataset, keyword) for keyword in _HEADER_KEYWORDS}
    except HeaderError:
        raise
    except Exception as error:
        # pydicom's messages may quote values: keep only the kind of failure.
        raise HeaderError(f"header unreadable ({type(error).__name__})") from None
    return InstanceHeader(
        patient_id=values["PatientID"],
        study_uid=values["StudyInstanceUID"],
        series_uid=values["SeriesInstanceUID"],
        sop_instance_uid=values["SOPInstanceUID"],
        sop_class_uid=values["SOPClassUID"],
        modality=values["Modality"],
    )


def _past_header(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return tag > _LAST_HEADER_TAG


def _required(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    text = "" if value is None else str(value).strip()
    if not text:
        raise HeaderError(f"{keyword} is missing or empty")
    return text


def _inflated_head(fp: BinaryIO) -> BinaryIO:
    """The first few MiB of a deflated dataset, inflated: enough for the header, never the rest."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    head = bytearray()
    while len(head) < _INFLATED_HEAD_BYTES:
        chunk = inflater.unconsumed_tail or fp.read(64 * 1024)
        if not chunk:
            break
        head += inflater.decompress(chunk, _INFLATED_HEAD_BYTES - len(head))
    return BytesIO(bytes(head))


def read_file_meta(fp: BinaryIO) -> tuple[FileMetaDataset | None, int]:
    """The file meta of a Part 10 file and where its dataset starts; ``(None, 0)`` without one.

    pynetdicom writes a received dataset as a Part 10 file (preamble, meta from the command and
    the presentation context, then the bytes as received); a bare dataset starts at 0.
    """
    fp.seek(0)
    if fp.read(132)[128:] != b"DICM":
        fp.seek(0)
        return None, 0
    # As pydicom's own reader does: the meta is the group 0002 elements, Explicit VR LE.
    meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=_not_file_meta)
    return FileMetaDataset(meta), fp.tell()


def _not_file_meta(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return tag.group != 0x0002
