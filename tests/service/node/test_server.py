"""The node over loopback, with dcmtk's echoscu and storescu as the peers a site would use.

Each bad case ends with an echo: the node must keep answering whatever a peer did.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLosslessSV1
from pynetdicom import AE
from sqlalchemy import select

from service.config import NodePeer
from service.db.engine import Database
from service.db.models import NodeAssociation, NodeInstance, NodeStudy
from service.node.inbox import StoreStatus
from service.node.server import NodeServer
from tests.service.node.conftest import PEER_AE

Run = Callable[..., subprocess.CompletedProcess[str]]


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.dcm"))


def _dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file: what follows the file meta group."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM", path.name
    assert data[132:138] == b"\x02\x00\x00\x00UL", "file meta without group length"
    return data[144 + int.from_bytes(data[140:144], "little") :]


def _stored_path(root: Path, source: Path) -> Path:
    """Where the node files ``source``: computed here from the documented layout."""
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    key = hashlib.sha256(str(ds.PatientID).encode()).hexdigest()
    name = hashlib.sha256(str(ds.SOPInstanceUID).encode()).hexdigest()[:24] + ".dcm"
    return root / "node" / "patients" / key[:16] / name


def _statuses(result: subprocess.CompletedProcess[str]) -> list[int]:
    """The C-STORE response statuses storescu ``-d`` printed, in order."""
    found = re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", result.stdout + result.stderr)
    return [int(code, 16) for code in found]


def _rows(database: Database, model: Any) -> list[Any]:
    with database.session() as session:
        return list(session.scalars(select(model)).all())


def _wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the node"
        time.sleep(0.05)


def _associations_ended(database: Database) -> bool:
    return all(row.outcome != "open" for row in _rows(database, NodeAssociation))


def _assert_still_answers(node: NodeServer, echoscu: Run) -> None:
    result = echoscu(node)
    assert result.returncode == 0, result.stderr


# -- who may call --------------------------------------------------------------------------


def test_echo_from_an_allowed_peer(start_node, echoscu, node_database):
    node = start_node()
    result = echoscu(node)
    assert result.returncode == 0, result.stderr
    _wait_for(lambda: _associations_ended(node_database))
    [association] = _rows(node_database, NodeAssociation)
    assert (association.calling_ae, association.peer_host, association.outcome) == (
        PEER_AE,
        "127.0.0.1",
        "released",
    )


def test_unknown_calling_ae_is_refused(start_node, echoscu, node_database, caplog):
    node = start_node()
    with caplog.at_level(logging.WARNING, logger="service.node"):
        result = echoscu(node, aet="STRANGER")
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr
    assert "'STRANGER' at 127.0.0.1" in caplog.text
    assert _rows(node_database, NodeAssociation) == []
    _assert_still_answers(node, echoscu)


def test_allowed_ae_from_another_host_is_refused(start_node, echoscu, node_database):
    node = start_node(node_peers=[NodePeer(ae_title=PEER_AE, host="10.9.9.9")])
    result = echoscu(node)
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr
    assert _rows(node_database, NodeAssociation) == []


def test_no_peers_refuse_everyone(start_node, echoscu):
    node = start_node(node_peers=[])
    assert echoscu(node).returncode != 0


def test_another_called_ae_is_refused(start_node, echoscu):
    node = start_node()
    result = echoscu(node, aec="SOMEONE")
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr
    _assert_still_answers(node, echoscu)


# -- storing -------------------------------------------------------------------------------


def test_a_whole_patient_is_stored_as_sent_and_once(
    start_node, storescu, echoscu, node_database, orn_patient, caplog, monkeypatch
):
    node = start_node()
    root = node.inbox.storage_root
    sources = _dicom_files(orn_patient)
    temporary_folders: set[Path] = set()
    store = node.inbox.store

    def spy(assoc_id: str, file_meta: Any, dataset_path: Path) -> int:
        temporary_folders.add(dataset_path.parent)
        return store(assoc_id, file_meta, dataset_path)

    monkeypatch.setattr(node.inbox, "store", spy)
    caplog.set_level(logging.DEBUG)
    result = storescu(node, orn_patient)
    assert result.returncode == 0, result.stderr
    _wait_for(lambda: _associations_ended(node_database))

    instances = _rows(node_database, NodeInstance)
    assert len(instances) == len(sources)
    assert {row.state for row in instances} == {"accepted"}
    for source in sources:
        assert _dataset_bytes(_stored_path(root, source)) == _dataset_bytes(source), source.name
    # pynetdicom's temporary files were on the store's file system, not in /tmp.
    assert temporary_folders == {root / "node" / "incoming"}
    assert list((root / "node" / "incoming").iterdir()) == []
    [study] = _rows(node_database, NodeStudy)
    assert (study.pending, study.state, study.calling_aes) == (True, "receiving", [PEER_AE])
    first = _rows(node_database, NodeAssociation)
    assert [(a.outcome, a.instances) for a in first] == [("released", len(sources))]
    assert first[0].bytes == sum(_stored_path(root, s).stat().st_size for s in sources)
    assert sorted(node.inbox.accepted_files(study.patient_key)) == sorted(
        _stored_path(root, s) for s in sources
    )

    # No patient identifier or UID in any log line, at any level.
    first_ds = pydicom.dcmread(sources[0], stop_before_pixels=True)
    for secret in (str(first_ds.PatientID), str(first_ds.StudyInstanceUID), str(first_ds.SOPInstanceUID)):
        assert secret not in caplog.text

    # The same study again: success for every instance, nothing new stored.
    before = {s: _stored_path(root, s).stat() for s in sources}
    again = storescu(node, orn_patient)
    assert again.returncode == 0, again.stderr
    _wait_for(lambda: _associations_ended(node_database))
    assert len(_rows(node_database, NodeInstance)) == len(sources)
    for source, stat in before.items():
        after = _stored_path(root, source).stat()
        assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
            stat.st_ino,
            stat.st_mtime_ns,
            stat.st_size,
        )
    assert sorted((a.outcome, a.instances) for a in _rows(node_database, NodeAssociation)) == [
        ("released", 0),
        ("released", len(sources)),
    ]
    _assert_still_answers(node, echoscu)


def test_parallel_associations_store_each_instance_once(
    start_node, storescu, node_database, orn_patient, tmp_path
):
    """Two peers at once, both sending the plan: every instance once, both associations released."""
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(orn_patient / "planning", first)
    shutil.copytree(orn_patient / "followup-1", second)
    shutil.copy(orn_patient / "planning" / "rtplan.dcm", second / "rtplan.dcm")
    node = start_node()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda folder: storescu(node, folder), [first, second]))
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-500:] for r in results]
    _wait_for(lambda: _associations_ended(node_database))
    expected = len(_dicom_files(orn_patient / "planning")) + len(_dicom_files(orn_patient / "followup-1"))
    assert len(_rows(node_database, NodeInstance)) == expected
    associations = _rows(node_database, NodeAssociation)
    assert [a.outcome for a in associations] == ["released", "released"]
    assert sum(a.instances for a in associations) == expected


def test_a_jpeg_lossless_ct_is_stored_compressed(
    start_node, storescu, dcmtk_tool, node_database, orn_patient, tmp_path
):
    source = _dicom_files(orn_patient / "followup-1")[0]
    compressed = tmp_path / "sent" / "jpeg.dcm"
    compressed.parent.mkdir()
    subprocess.run([dcmtk_tool("dcmcjpeg"), "+e1", str(source), str(compressed)], check=True, timeout=60)
    assert pydicom.dcmread(compressed).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    node = start_node()

    result = storescu(node, compressed, options=("-xs",))  # propose JPEG lossless SV1
    assert result.returncode == 0, result.stderr
    _wait_for(lambda: _associations_ended(node_database))
    stored = pydicom.dcmread(_stored_path(node.inbox.storage_root, source))
    assert stored.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    assert _dataset_bytes(_stored_path(node.inbox.storage_root, source)) == _dataset_bytes(compressed)
    np.testing.assert_array_equal(stored.pixel_array, pydicom.dcmread(source).pixel_array)


def test_an_aborted_association_is_set_aside(start_node, storescu, echoscu, node_database, orn_patient):
    node = start_node()
    root = node.inbox.storage_root
    sources = _dicom_files(orn_patient / "followup-1")
    result = storescu(node, orn_patient / "followup-1", options=("--abort",))
    assert result.returncode == 0, result.stderr
    _wait_for(lambda: _associations_ended(node_database))

    [association] = _rows(node_database, NodeAssociation)
    assert (association.outcome, association.instances) == ("aborted", len(sources))
    instances = _rows(node_database, NodeInstance)
    assert {row.state for row in instances} == {"aside"}
    assert all(row.path.startswith(f"node/aside/{association.id}/") for row in instances)
    assert all((root / row.path).is_file() for row in instances)
    assert not any(_stored_path(root, s).exists() for s in sources)
    [study] = _rows(node_database, NodeStudy)
    assert study.pending is False
    assert node.inbox.accepted_files(study.patient_key) == []
    _assert_still_answers(node, echoscu)


def test_a_malformed_instance_fails_alone(
    start_node, storescu, echoscu, dcmtk_tool, node_database, orn_patient, tmp_path
):
    good = _dicom_files(orn_patient / "followup-1")[:3]
    sent = tmp_path / "sent"
    sent.mkdir()
    for index, path in enumerate(good):
        shutil.copy(path, sent / f"good{index}.dcm")
    broken = sent / "broken.dcm"
    shutil.copy(_dicom_files(orn_patient / "planning" / "ct")[0], broken)
    subprocess.run([dcmtk_tool("dcmodify"), "-nb", "-e", "(0020,000D)", str(broken)], check=True, timeout=60)
    node = start_node()

    result = storescu(node, sent, options=("-nh",))
    _wait_for(lambda: _associations_ended(node_database))
    assert sorted(_statuses(result)) == [StoreStatus.SUCCESS] * len(good) + [StoreStatus.UNREADABLE]
    [association] = _rows(node_database, NodeAssociation)
    assert (association.outcome, association.instances) == ("released", len(good))
    assert {row.state for row in _rows(node_database, NodeInstance)} == {"accepted"}
    assert not _stored_path(node.inbox.storage_root, broken).exists()
    _assert_still_answers(node, echoscu)


def test_a_full_disk_answers_out_of_resources(start_node, storescu, echoscu, node_database, orn_patient):
    node = start_node(node_min_free_bytes=10**18)
    result = storescu(node, orn_patient / "planning" / "rtplan.dcm")
    assert _statuses(result) == [StoreStatus.OUT_OF_SPACE]
    _wait_for(lambda: _associations_ended(node_database))
    assert _rows(node_database, NodeInstance) == []
    _assert_still_answers(node, echoscu)


def test_an_unexpected_error_is_a_failure_status_without_patient_data(
    start_node, storescu, echoscu, node_database, orn_patient, monkeypatch, caplog
):
    node = start_node()

    def broken_store(*_args: Any) -> int:
        raise RuntimeError("PatientID=SECRET-123")

    monkeypatch.setattr(node.inbox, "store", broken_store)
    with caplog.at_level(logging.DEBUG):
        result = storescu(node, orn_patient / "planning" / "rtplan.dcm")
        _wait_for(lambda: _associations_ended(node_database))
    assert _statuses(result) == [StoreStatus.NODE_FAILURE]
    assert "RuntimeError" in caplog.text
    assert "SECRET" not in caplog.text
    _assert_still_answers(node, echoscu)


# -- associations that do not end well -----------------------------------------------------


def test_a_silent_association_is_dropped_after_the_network_timeout(start_node, echoscu, node_database):
    node = start_node(node_network_timeout_s=2.0, node_max_associations=1)
    host, port = node.address
    peer = AE(ae_title=PEER_AE)
    peer.network_timeout = 30
    peer.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    silent = peer.associate(host, port, ae_title=node.settings.node_ae_title)
    try:
        assert silent.is_established
        # While it sits, it holds the only association the node allows.
        busy = echoscu(node)
        assert busy.returncode != 0
        assert "Local Limit Exceeded" in busy.stderr
        _wait_for(lambda: not silent.is_established, timeout_s=10)
        assert silent.is_aborted
    finally:
        silent.abort()
    _wait_for(lambda: any(row.outcome == "aborted" for row in _rows(node_database, NodeAssociation)))
    _assert_still_answers(node, echoscu)


def test_a_dropped_connection_counts_as_aborted(start_node, echoscu, node_database, orn_patient):
    node = start_node()
    host, port = node.address
    peer = AE(ae_title=PEER_AE)
    peer.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = peer.associate(host, port, ae_title=node.settings.node_ae_title)
    assert assoc.is_established
    source = _dicom_files(orn_patient / "followup-1")[0]
    status = assoc.send_c_store(source)
    assert status.Status == StoreStatus.SUCCESS
    # No A-RELEASE, no A-ABORT: the connection just goes away.
    assoc.dul.socket.close()
    assoc.kill()
    _wait_for(lambda: _associations_ended(node_database))
    [association] = _rows(node_database, NodeAssociation)
    assert (association.outcome, association.instances) == ("aborted", 1)
    assert [row.state for row in _rows(node_database, NodeInstance)] == ["aside"]
    _assert_still_answers(node, echoscu)


def test_stop_sets_open_associations_aside(node_settings, node_database, orn_patient):
    node = NodeServer(node_settings, node_database)
    node.start()
    try:
        host, port = node.address
        peer = AE(ae_title=PEER_AE)
        peer.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = peer.associate(host, port, ae_title=node.settings.node_ae_title)
        assert assoc.send_c_store(_dicom_files(orn_patient / "followup-1")[0]).Status == 0
    finally:
        node.stop()
    assert [row.outcome for row in _rows(node_database, NodeAssociation)] == ["aborted"]
    assert [row.state for row in _rows(node_database, NodeInstance)] == ["aside"]
    with pytest.raises(RuntimeError):
        _ = node.address
