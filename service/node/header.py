"""Reading what the node needs from a received instance: its file meta and the few header
attributes it files by, without reading pixel data or the big RT sequences; and checking that
the received bytes hold every element the dataset declares (a dataset cut short, or one whose
lengths lie, is refused at once instead of failing a job later)."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from worker.logs import register_values
from worker.stages.assemble.case import patient_alias

__all__ = [
    "HeaderError",
    "InstanceHeader",
    "check_extent",
    "patient_alias",
    "patient_key",
    "read_file_meta",
    "read_header",
]

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
#: Item, item delimitation and sequence delimitation tags (PS3.5 7.5), as (group << 16) | element.
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED_LENGTH = 0xFFFFFFFF
#: Explicit VRs with a reserved field and a 4-byte length (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
#: Sequences nested deeper than this are refused (real objects nest a handful of levels).
_MAX_NESTING = 32


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
    register_values([values["PatientID"]])  # kept out of this process's logs (worker.logs)
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


def check_extent(fp: BinaryIO, transfer_syntax: UID) -> None:
    """Check that every element of the dataset starting at ``fp``'s position ends within the file.

    Only lengths are read and values skipped (by seeking), so pixel data is never read. A trailing
    fragment shorter than an element header is tolerated, as pydicom does. Deflated and big
    endian datasets are not checked (their bytes cannot be skipped through).

    Raises
    ------
    HeaderError
        When an element, item or sequence runs past the received bytes, or a sequence is malformed.
    """
    if transfer_syntax.is_deflated or not transfer_syntax.is_little_endian:
        return
    start = fp.tell()
    end = fp.seek(0, os.SEEK_END)
    fp.seek(start)
    _skip_elements(fp, end, transfer_syntax.is_implicit_VR, depth=0)


def _skip_elements(fp: BinaryIO, end: int, implicit: bool, depth: int) -> None:
    """Skip the elements of a dataset (``depth`` 0) or of an undefined-length item (its end)."""
    while True:
        head = fp.read(8)
        if len(head) < 8:
            if depth:
                raise HeaderError("dataset truncated: a sequence item has no end")
            return
        group, element, length = struct.unpack("<HHL", head)
        tag = group << 16 | element
        if tag == _ITEM_END and depth:
            return
        vr = None
        if not implicit and group != 0xFFFE:
            vr = head[4:6]
            if vr in _LONG_VRS:
                long_length = fp.read(4)
                if len(long_length) < 4:
                    raise HeaderError("dataset truncated: an element header is cut")
                length = struct.unpack("<L", long_length)[0]
            else:
                length = struct.unpack("<H", head[6:8])[0]
        if length == _UNDEFINED_LENGTH:
            # A sequence, encapsulated pixel data, or a UN holding an implicit VR sequence.
            _skip_sequence(fp, end, implicit or vr == b"UN", depth + 1)
        else:
            _skip_value(fp, length, end)


def _skip_sequence(fp: BinaryIO, end: int, implicit: bool, depth: int) -> None:
    """Skip the items of an undefined-length sequence, up to its delimitation item."""
    if depth > _MAX_NESTING:
        raise HeaderError("dataset refused: sequences nested too deeply")
    while True:
        head = fp.read(8)
        if len(head) < 8:
            raise HeaderError("dataset truncated: a sequence has no end")
        group, element, length = struct.unpack("<HHL", head)
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            return
        if tag != _ITEM:
            raise HeaderError("dataset malformed: a sequence holds something other than items")
        if length == _UNDEFINED_LENGTH:
            _skip_elements(fp, end, implicit, depth)
        else:
            _skip_value(fp, length, end)


def _skip_value(fp: BinaryIO, length: int, end: int) -> None:
    if fp.tell() + length > end:
        raise HeaderError("dataset truncated: an element is longer than the bytes received")
    fp.seek(length, os.SEEK_CUR)
