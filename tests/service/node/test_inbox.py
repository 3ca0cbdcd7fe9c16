"""The inbox without the network: the files pynetdicom would hand over, made here from the
synthetic patient, and the rows and files the inbox makes of them."""

from __future__ import annotations

import hashlib
import shutil
import zlib
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
    RTPlanStorage,
)
from sqlalchemy import select

from service.config import Settings
from service.db.engine import Database
from service.db.models import NodeAssociation, NodeInstance, NodeStudy, utc_now
from service.node.header import HeaderError, check_extent, patient_alias, patient_key, read_file_meta
from service.node.inbox import Inbox, StoreStatus
from tests.conftest import SHARED_DATA
from tests.factories import compress_files
from worker.stages.assemble.case import Case


@pytest.fixture
def inbox(node_settings: Settings, node_database: Database) -> Inbox:
    return Inbox(node_settings, node_database)


@pytest.fixture
def ct_files(orn_patient: Path) -> list[Path]:
    return sorted((orn_patient / "followup-1" / "ct").glob("*.dcm"))[:3]


def _received(inbox: Inbox, source: Path, name: str | None = None) -> tuple[FileMetaDataset, Path]:
    """What pynetdicom hands the handler: the command's file meta and a Part 10 temporary file."""
    temporary = inbox.incoming_dir / (name or f"{source.parent.parent.name}-{source.name}")
    shutil.copy(source, temporary)
    return read_file_meta_info(source), temporary


def _bare(inbox: Inbox, source: Path, meta: FileMetaDataset) -> Path:
    """The dataset of ``source`` without preamble and meta: the other form ``store`` accepts."""
    with source.open("rb") as fp:
        _, offset = read_file_meta(fp)
        fp.seek(offset)
        bare = inbox.incoming_dir / f"bare-{source.name}"
        bare.write_bytes(fp.read())
    return bare


def _instances(database: Database) -> list[NodeInstance]:
    with database.session() as session:
        return list(session.scalars(select(NodeInstance).order_by(NodeInstance.id)).all())


def test_patient_key_and_alias_are_the_cases():
    assert patient_key("ID-1") == hashlib.sha256(b"ID-1").hexdigest()
    assert patient_alias("ID-1") == Case.patient_alias.fget(SimpleNamespace(patient_id="ID-1"))


def test_stored_instances_are_accepted_on_release(inbox, node_database, ct_files):
    inbox.open_association("a1", "PACS", "127.0.0.1")
    for source in ct_files:
        assert inbox.store("a1", *_received(inbox, source)) == StoreStatus.SUCCESS
    rows = _instances(node_database)
    assert [row.state for row in rows] == ["received"] * len(ct_files)
    key = rows[0].patient_key
    assert inbox.accepted_files(key) == []

    inbox.close_association("a1", released=True)
    inbox.close_association("a1", released=False)  # a second end changes nothing
    assert [row.state for row in _instances(node_database)] == ["accepted"] * len(ct_files)
    files = inbox.accepted_files(key)
    assert len(files) == len(ct_files)
    assert all(path.is_absolute() and path.is_file() for path in files)
    with node_database.session() as session:
        study = session.get(NodeStudy, key)
        association = session.get(NodeAssociation, "a1")
    assert (study.pending, study.state, study.calling_aes) == (True, "receiving", ["PACS"])
    assert study.patient_alias == "pt-" + key[:10]
    assert study.last_released_at is not None
    assert (association.outcome, association.instances) == ("released", len(ct_files))
    assert association.bytes == sum(path.stat().st_size for path in files)


def test_an_aborted_association_keeps_its_files_aside(inbox, node_database, ct_files):
    inbox.open_association("a2", "PACS", "127.0.0.1")
    for source in ct_files:
        inbox.store("a2", *_received(inbox, source))
    inbox.close_association("a2", released=False)
    rows = _instances(node_database)
    assert {row.state for row in rows} == {"aside"}
    assert all(row.path.startswith("node/aside/a2/") for row in rows)
    assert all((inbox.storage_root / row.path).is_file() for row in rows)
    assert inbox.accepted_files(rows[0].patient_key) == []
    with node_database.session() as session:
        assert session.get(NodeStudy, rows[0].patient_key).pending is False

    # Sent again and released: stored anew (an instance set aside is not a duplicate).
    inbox.open_association("a3", "PACS", "127.0.0.1")
    assert inbox.store("a3", *_received(inbox, ct_files[0])) == StoreStatus.SUCCESS
    inbox.close_association("a3", released=True)
    assert len(inbox.accepted_files(rows[0].patient_key)) == 1


def test_a_duplicate_is_stored_once(inbox, node_database, ct_files):
    inbox.open_association("a1", "PACS", "127.0.0.1")
    assert inbox.store("a1", *_received(inbox, ct_files[0], "first.dcm")) == StoreStatus.SUCCESS
    assert inbox.store("a1", *_received(inbox, ct_files[0], "again.dcm")) == StoreStatus.SUCCESS
    assert len(_instances(node_database)) == 1
    # The dropped copy stays where pynetdicom put it (pynetdicom deletes it after the handler).
    assert (inbox.incoming_dir / "again.dcm").exists()


def test_a_bare_deflated_dataset_gets_a_part10_file(inbox, node_database, ct_files, tmp_path):
    """The copy path: no file meta in the temporary file, a deflated syntax to read the header in."""
    ds = pydicom.dcmread(ct_files[0])
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = tmp_path / "deflated.dcm"
    ds.save_as(deflated, enforce_file_format=True)
    meta = read_file_meta_info(deflated)
    bare = _bare(inbox, deflated, meta)

    inbox.open_association("a1", "PACS", "127.0.0.1")
    assert inbox.store("a1", meta, bare) == StoreStatus.SUCCESS
    [row] = _instances(node_database)
    stored = inbox.storage_root / row.path
    assert stored.read_bytes().endswith(bare.read_bytes())
    again = pydicom.dcmread(stored)
    assert again.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert again.SOPInstanceUID == ds.SOPInstanceUID
    assert again.PixelData == ds.PixelData
    assert zlib.decompress(bare.read_bytes(), -zlib.MAX_WBITS)  # it really was deflated


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"MediaStorageSOPInstanceUID": "1.2.3.4"}, StoreStatus.INSTANCE_MISMATCH),
        ({"MediaStorageSOPClassUID": RTPlanStorage}, StoreStatus.SOP_CLASS_MISMATCH),
    ],
)
def test_a_dataset_that_is_not_what_the_command_announced_fails(
    inbox, node_database, ct_files, change, status
):
    meta, temporary = _received(inbox, ct_files[0])
    for keyword, value in change.items():
        setattr(meta, keyword, value)
    inbox.open_association("a1", "PACS", "127.0.0.1")
    assert inbox.store("a1", meta, temporary) == status
    assert _instances(node_database) == []


def test_an_unreadable_or_incomplete_header_cannot_be_understood(inbox, node_database, ct_files, caplog):
    inbox.open_association("a1", "PACS", "127.0.0.1")
    meta, _ = _received(inbox, ct_files[0])
    garbage = inbox.incoming_dir / "garbage.dcm"
    garbage.write_bytes(b"\x08\x00\x16\x00UI\xff\xff" + b"\x00" * 64)
    assert inbox.store("a1", meta, garbage) == StoreStatus.UNREADABLE

    ds = pydicom.dcmread(ct_files[0])
    del ds.PatientID
    no_patient = inbox.incoming_dir / "no-patient.dcm"
    ds.save_as(no_patient, enforce_file_format=True)
    assert inbox.store("a1", read_file_meta_info(no_patient), no_patient) == StoreStatus.UNREADABLE
    assert "PatientID is missing" in caplog.text
    assert _instances(node_database) == []


def test_a_patient_at_the_pending_cap_is_refused(node_settings, node_database, ct_files):
    inbox = Inbox(node_settings.model_copy(update={"node_max_pending_instances": 2}), node_database)
    inbox.open_association("a1", "PACS", "127.0.0.1")
    statuses = [inbox.store("a1", *_received(inbox, source)) for source in ct_files]
    assert statuses == [StoreStatus.SUCCESS, StoreStatus.SUCCESS, StoreStatus.TOO_MANY_PENDING]
    inbox.close_association("a1", released=True)
    # The count comes from the records too, not only from this association's tally.
    inbox.open_association("a2", "PACS", "127.0.0.1")
    assert inbox.store("a2", *_received(inbox, ct_files[2])) == StoreStatus.TOO_MANY_PENDING
    inbox.close_association("a2", released=True)

    # Once the watcher has assembled the study, those instances are used: the cap starts over.
    with node_database.session() as session:
        [study] = session.scalars(select(NodeStudy))
        study.settled_at = utc_now()
        session.commit()
    inbox.open_association("a3", "PACS", "127.0.0.1")
    assert inbox.store("a3", *_received(inbox, ct_files[2])) == StoreStatus.SUCCESS


def test_low_disk_is_out_of_resources(node_settings, node_database, ct_files):
    inbox = Inbox(node_settings.model_copy(update={"node_min_free_bytes": 10**18}), node_database)
    inbox.open_association("a1", "PACS", "127.0.0.1")
    assert inbox.store("a1", *_received(inbox, ct_files[0])) == StoreStatus.OUT_OF_SPACE


def test_an_unknown_association_is_an_error(inbox, ct_files):
    with pytest.raises(LookupError):
        inbox.store("nobody", *_received(inbox, ct_files[0]))


def test_recover_ends_what_a_previous_process_left(node_settings, node_database, ct_files):
    first = Inbox(node_settings, node_database)
    first.open_association("a1", "PACS", "127.0.0.1")
    first.store("a1", *_received(first, ct_files[0]))
    leftover = first.incoming_dir / "half-received.dcm"
    leftover.write_bytes(b"partial")

    restarted = Inbox(node_settings, node_database)
    restarted.recover()
    with node_database.session() as session:
        assert session.get(NodeAssociation, "a1").outcome == "aborted"
    assert [row.state for row in _instances(node_database)] == ["aside"]
    assert not leftover.exists()


def test_read_file_meta_finds_where_the_dataset_starts(ct_files, tmp_path):
    with ct_files[0].open("rb") as fp:
        meta, offset = read_file_meta(fp)
    assert meta is not None and meta.TransferSyntaxUID == ExplicitVRLittleEndian
    data = ct_files[0].read_bytes()
    assert data[offset : offset + 2] == b"\x08\x00"  # the dataset's first element, group 0008
    bare = tmp_path / "bare"
    bare.write_bytes(data[offset:])
    with bare.open("rb") as fp:
        assert read_file_meta(fp) == (None, 0)


def _part10_files(root: Path) -> list[Path]:
    paths = [path for path in sorted(root.rglob("*")) if path.is_file()]
    return [path for path in paths if path.read_bytes()[128:132] == b"DICM"]


def _check(data: bytes) -> None:
    """check_extent on the dataset of a Part 10 file held in ``data``."""
    fp = BytesIO(data)
    meta, offset = read_file_meta(fp)
    assert meta is not None
    fp.seek(offset)
    check_extent(fp, UID(meta.TransferSyntaxUID))


def test_every_real_and_compressed_file_is_complete(orn_patient, tmp_path):
    """No false refusal: the public files (implicit and explicit VR, nested sequences, RT objects,
    SEG, enhanced MR) and the synthetic patient, also encapsulated in RLE and JPEG-LS."""
    files = _part10_files(SHARED_DATA) + _part10_files(orn_patient)
    cts = sorted((orn_patient / "followup-1" / "ct").glob("*.dcm"))[:2]
    files += compress_files(cts, RLELossless, tmp_path / "rle")
    files += compress_files(cts, JPEGLSLossless, tmp_path / "jpegls")
    assert len(files) > 100
    for path in files:
        _check(path.read_bytes())


@pytest.mark.parametrize("kind", ["ct", "rtplan", "encapsulated"])
def test_a_dataset_cut_short_is_refused(orn_patient, tmp_path, kind):
    """Cut inside the pixel data, inside a nested sequence, inside an encapsulated fragment."""
    ct = sorted((orn_patient / "followup-1" / "ct").glob("*.dcm"))[0]
    source = {
        "ct": ct,
        "rtplan": next(orn_patient.rglob("rtplan*.dcm")),
    }.get(kind) or compress_files([ct], RLELossless, tmp_path)[0]
    data = source.read_bytes()
    _check(data)
    cut = data[: len(data) * 2 // 3]
    with pytest.raises(HeaderError, match="truncated"):
        _check(cut)


def test_a_truncated_instance_is_refused_and_not_stored(inbox, node_database, ct_files):
    meta, temporary = _received(inbox, ct_files[0])
    temporary.write_bytes(temporary.read_bytes()[:-100])
    inbox.open_association("a1", "PACS", "127.0.0.1")
    assert inbox.store("a1", meta, temporary) == StoreStatus.UNREADABLE
    assert _instances(node_database) == []


def test_sequences_nested_without_end_are_refused():
    item_start = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    nested = (b"\x0a\x30\xb0\x00SQ\x00\x00\xff\xff\xff\xff" + item_start) * 100
    with pytest.raises(HeaderError, match="nested too deeply"):
        check_extent(BytesIO(nested), ExplicitVRLittleEndian)
