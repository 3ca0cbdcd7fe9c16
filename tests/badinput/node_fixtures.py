"""Tools for the node's bad-input catalogue: a raw DICOM upper-layer peer and the abused datasets.

``RawPeer`` speaks PS3.8 over a plain socket, byte by byte, so a test can send what no
well-behaved tool sends: a C-STORE whose dataset contradicts its command, a dataset cut short, a
PDU that declares 4 GiB, an association that is never released. The well-behaved peers of the
catalogue are dcmtk's storescu and echoscu.
"""

from __future__ import annotations

import socket
import struct
from copy import deepcopy
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

#: PDU types (PS3.8 Table 9-11).
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07
_APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
#: The largest P-DATA PDU the raw peer asks the node to send it.
_OUR_MAX_PDU = 16384
#: Dataset bytes per P-DATA PDU the raw peer sends (well under the node's maximum).
_FRAGMENT_BYTES = 8192
#: A private SOP class no node supports (our test UID root).
PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.10.1207.99.1"
UID_ROOT = "1.2.826.0.1.3680043.10.1207.98."


def short_uid() -> str:
    """A fresh UID short enough to take a ``.<number>`` suffix (UIDs are at most 64 characters)."""
    return f"{UID_ROOT}{uuid4().int % 10**18}"


@dataclass(frozen=True)
class Pdu:
    kind: int
    body: bytes


def _uid_bytes(uid: str) -> bytes:
    """A UID as the upper layer carries it (no padding: the items have their own lengths)."""
    return uid.encode("ascii")


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBL", kind, 0, len(body)) + body


def associate_rq(calling: str, called: str, contexts: list[tuple[int, str, str]]) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing ``contexts`` as (id, abstract syntax, transfer syntax)."""
    items = _item(0x10, _APPLICATION_CONTEXT)
    for context_id, abstract, transfer in contexts:
        body = struct.pack(">BBBB", context_id, 0, 0, 0)
        body += _item(0x30, _uid_bytes(abstract)) + _item(0x40, _uid_bytes(transfer))
        items += _item(0x20, body)
    items += _item(0x50, _item(0x51, struct.pack(">L", _OUR_MAX_PDU)))
    fixed = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
    return _pdu(ASSOCIATE_RQ, fixed + items)


def p_data(context_id: int, payload: bytes, *, command: bool, last: bool) -> bytes:
    """One P-DATA-TF PDU carrying one PDV (PS3.8 E.2: bit 0 command, bit 1 last fragment)."""
    control = (1 if command else 0) | (2 if last else 0)
    pdv = struct.pack(">LBB", len(payload) + 2, context_id, control) + payload
    return _pdu(P_DATA, pdv)


def c_store_rq(sop_class: str, sop_instance: str, message_id: int) -> bytes:
    """The encoded command set of a C-STORE-RQ with a dataset (Implicit VR LE, PS3.7 9.3.1.1)."""
    command = Dataset()
    command.AffectedSOPClassUID = sop_class
    command.CommandField = 0x0001
    command.MessageID = message_id
    command.Priority = 0
    command.CommandDataSetType = 0x0000
    command.AffectedSOPInstanceUID = sop_instance
    body = _encode(command, implicit=True)
    return struct.pack("<HHL", 0x0000, 0x0000, 4) + struct.pack("<L", len(body)) + body


def _encode(dataset: Dataset, *, implicit: bool) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    write_dataset(buffer, dataset)
    return buffer.getvalue()


def context_results(accept: Pdu) -> dict[int, int]:
    """{presentation context id: result} of an A-ASSOCIATE-AC (0 accepted, 3 abstract syntax
    not supported, 4 transfer syntaxes not supported)."""
    assert accept.kind == ASSOCIATE_AC, f"expected an A-ASSOCIATE-AC, got PDU type {accept.kind}"
    results: dict[int, int] = {}
    offset = 68  # protocol version, reserved, called and calling AE titles, reserved
    while offset < len(accept.body):
        kind, _, length = struct.unpack_from(">BBH", accept.body, offset)
        if kind == 0x21:
            results[accept.body[offset + 4]] = accept.body[offset + 6]
        offset += 4 + length
    return results


def reject_reason(reject: Pdu) -> tuple[int, int, int]:
    """(result, source, reason) of an A-ASSOCIATE-RJ."""
    assert reject.kind == ASSOCIATE_RJ, f"expected an A-ASSOCIATE-RJ, got PDU type {reject.kind}"
    return reject.body[1], reject.body[2], reject.body[3]


class RawPeer:
    """One TCP connection to the node, driven PDU by PDU; always ``close()`` it (or use ``with``)."""

    def __init__(self, address: tuple[str, int], *, source_host: str | None = None, timeout_s: float = 15):
        source = (source_host, 0) if source_host else None
        self.sock = socket.create_connection(address, timeout=timeout_s, source_address=source)

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_pdu(self) -> Pdu | None:
        """The next PDU, or None when the node closed the connection."""
        header = self._read_exactly(6)
        if header is None:
            return None
        kind, _, length = struct.unpack(">BBL", header)
        body = self._read_exactly(length)
        assert body is not None, "the node closed the connection inside a PDU"
        return Pdu(kind, body)

    def read_until_closed(self) -> list[int]:
        """Read until the node closes the connection; the kinds of the PDUs it sent meanwhile.
        A read that times out fails the test (the socket's timeout)."""
        kinds: list[int] = []
        try:
            while (pdu := self.read_pdu()) is not None:
                kinds.append(pdu.kind)
        except ConnectionResetError:
            pass
        return kinds

    def associate(self, contexts: list[tuple[int, str, str]], calling: str, called: str) -> Pdu:
        self.send(associate_rq(calling, called, contexts))
        answer = self.read_pdu()
        assert answer is not None, "the node closed the connection instead of answering"
        return answer

    def send_command(self, context_id: int, sop_class: str, sop_instance: str, message_id: int = 1) -> None:
        command = c_store_rq(sop_class, sop_instance, message_id)
        self.send(p_data(context_id, command, command=True, last=True))

    def send_dataset(self, context_id: int, dataset: bytes, *, last: bool = True) -> None:
        """The dataset in fragments; the final one flagged last only when ``last``."""
        chunks = [dataset[i : i + _FRAGMENT_BYTES] for i in range(0, len(dataset), _FRAGMENT_BYTES)] or [b""]
        for index, chunk in enumerate(chunks):
            self.send(p_data(context_id, chunk, command=False, last=last and index == len(chunks) - 1))

    def store(self, context_id: int, sop_class: str, sop_instance: str, dataset: bytes) -> int:
        """A whole C-STORE; returns the response's status."""
        self.send_command(context_id, sop_class, sop_instance)
        self.send_dataset(context_id, dataset)
        return self.read_status()

    def read_status(self) -> int:
        """The Status of the next C-STORE-RSP."""
        command = b""
        while True:
            pdu = self.read_pdu()
            assert pdu is not None and pdu.kind == P_DATA, f"expected a C-STORE-RSP, got {pdu}"
            offset, last = 0, False
            while offset < len(pdu.body):
                length, _context, control = struct.unpack_from(">LBB", pdu.body, offset)
                command += pdu.body[offset + 6 : offset + 4 + length]
                last = bool(control & 2)
                offset += 4 + length
            if last:
                break
        response = read_dataset(BytesIO(command), is_implicit_VR=True, is_little_endian=True)
        return int(response.Status)

    def release(self) -> int | None:
        """A-RELEASE-RQ; the kind of the node's answer (RELEASE_RP), None if it closed."""
        self.send(_pdu(RELEASE_RQ, bytes(4)))
        answer = self.read_pdu()
        return None if answer is None else answer.kind

    def abort(self) -> None:
        self.send(_pdu(ABORT, bytes(4)))

    def _read_exactly(self, count: int) -> bytes | None:
        data = bytearray()
        while len(data) < count:
            chunk = self.sock.recv(min(count - len(data), 1 << 20))
            if not chunk:
                return None if not data else bytes(data)
            data += chunk
        return bytes(data)


# -- datasets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """An encoded dataset (Explicit VR LE, no file meta) and the UIDs its command announces."""

    sop_class: str
    sop_instance: str
    data: bytes


def tiny_ct(patient_id: str, study_uid: str, series_uid: str, number: int) -> Dataset:
    """An 8×8 CT slice with the attributes the node files by; quick to make thousands of."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{series_uid}.{number}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName, ds.PatientID = "BAD^INPUT", patient_id
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality, ds.InstanceNumber = "CT", number
    ds.ImagePositionPatient = [0, 0, 2 * number]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.full((8, 8), number % 4096, np.uint16).tobytes()
    return ds


def encoded(ds: Dataset, **changes: Any) -> Instance:
    """``ds`` (with ``changes`` applied to a copy) as the bytes of a C-STORE's dataset."""
    copy = deepcopy(ds)  # Dataset(ds) would share ds's elements
    for keyword, value in changes.items():
        setattr(copy, keyword, value)
    return Instance(str(copy.SOPClassUID), str(copy.SOPInstanceUID), _encode(copy, implicit=False))


def write_tiny_study(
    folder: Path, patient_id: str, count: int, *, study_uid: str | None = None
) -> list[Path]:
    """``count`` tiny CT files of one series under ``folder``, fast enough for thousands.

    pydicom writes the first file; the others are its bytes with the last component of the
    SOPInstanceUID changed. The components are 10001, 10002 … (five digits, no leading zero), so
    every length in the file stays right.
    """
    assert count < 90000
    folder.mkdir(parents=True, exist_ok=True)
    study, series = study_uid or short_uid(), short_uid()
    first = folder / "ct-10001.dcm"
    tiny_ct(patient_id, study, series, 10001).save_as(first, enforce_file_format=True)
    data = first.read_bytes()
    first_uid = f"{series}.10001".encode()
    assert data.count(first_uid) == 2, "the UID is in the file meta and in the dataset, once each"
    paths = [first]
    for number in range(10002, 10001 + count):
        path = folder / f"ct-{number}.dcm"
        path.write_bytes(data.replace(first_uid, f"{series}.{number}".encode()))
        paths.append(path)
    return paths


def element_offset(data: bytes, tag: tuple[int, int], vr: bytes) -> int:
    """Where the Explicit VR LE element ``tag`` with ``vr`` starts in ``data`` (exactly once)."""
    marker = struct.pack("<HH", *tag) + vr
    assert data.count(marker) == 1, f"element {tag} {vr!r} is not there exactly once"
    return data.index(marker)


def with_length(data: bytes, tag: tuple[int, int], vr: bytes, length: int) -> bytes:
    """``data`` with the declared length of element ``tag`` replaced by ``length`` (a lie)."""
    at = element_offset(data, tag, vr)
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return data[: at + 8] + struct.pack("<L", length) + data[at + 12 :]
    return data[: at + 6] + struct.pack("<H", length) + data[at + 8 :]


def with_vr(data: bytes, tag: tuple[int, int], vr: bytes, lie: bytes) -> bytes:
    """``data`` with element ``tag``'s VR ``vr`` replaced by ``lie`` (same size)."""
    at = element_offset(data, tag, vr)
    return data[: at + 4] + lie + data[at + 6 :]
