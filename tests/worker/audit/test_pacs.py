"""The audit's PACS side against a real Orthanc: C-FIND, C-MOVE and C-GET, resuming.

Two synthetic ORN patients (planning study with CT, plan and dose; two follow-up CT studies)
are uploaded once per module. Failures are real where Orthanc can produce them (nothing
listening, an unknown calling AE title, a C-MOVE destination at the wrong port); a refused
sub-operation and a failure status are injected, the PACS and our storage SCP stay real.
"""

from __future__ import annotations

import datetime
import json
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom.association import Association

from models.synth import write_synthetic_patients
from tests.worker.audit.conftest import OrthancPacs, free_port
from worker.audit.pacs import (
    COMPLETE_MARKER,
    PacsPeer,
    PacsQuery,
    RetrieveOptions,
    StudyHit,
    find_patients,
    find_studies,
    retrieval,
    retrieve,
)
from worker.audit.pacs.receiver import Receiver
from worker.errors import InputError
from worker.stages.assemble.case import patient_alias


@dataclass(frozen=True)
class Patient:
    patient_id: str
    case: dict[str, Any]
    files: dict[str, Path]  # SOPInstanceUID -> source file (ground truth left out: not in the PACS)
    studies: dict[str, int]  # StudyInstanceUID -> instances

    @property
    def alias(self) -> str:
        return patient_alias(self.patient_id)


@pytest.fixture(scope="module")
def patients(orthanc: OrthancPacs, tmp_path_factory: pytest.TempPathFactory) -> list[Patient]:
    """The two synthetic patients, stored in ``orthanc``."""
    folders = write_synthetic_patients(
        tmp_path_factory.mktemp("synth"), task="orn", cases=2, seed=9300, followups=2
    )
    loaded = []
    for folder in folders:
        files: dict[str, Path] = {}
        studies: dict[str, int] = {}
        for path in sorted(folder.rglob("*.dcm")):
            if "ground_truth" in path.parts:
                continue
            header = pydicom.dcmread(path, specific_tags=["SOPInstanceUID", "StudyInstanceUID"])
            files[str(header.SOPInstanceUID)] = path
            studies[str(header.StudyInstanceUID)] = studies.get(str(header.StudyInstanceUID), 0) + 1
        case = json.loads((folder / "case.json").read_text())
        loaded.append(Patient(case["patient_id"], case, files, studies))
        orthanc.store(files.values())
    return loaded


def _only_date(patients: list[Patient]) -> tuple[Patient, datetime.date]:
    """A patient and the date of one of its follow-ups that no other study has."""
    dates = [(p, p.case["planning"]["study_date"]) for p in patients]
    dates += [(p, f["study_date"]) for p in patients for f in p.case["followups"]]
    counts: dict[str, int] = {}
    for _, date in dates:
        counts[date] = counts.get(date, 0) + 1
    patient, date = next((p, d) for p, d in dates[len(patients) :] if counts[d] == 1)
    return patient, datetime.date.fromisoformat(date)


def _assert_retrieved(dest: Path, patient: Patient) -> None:
    """``dest/<alias>`` holds the patient's instances, as sent, filed by study and SOP UID."""
    received = {path.stem: path for path in (dest / patient.alias).glob("*/*.dcm")}
    assert received.keys() == patient.files.keys()
    for uid, path in received.items():
        got, sent = pydicom.dcmread(path), pydicom.dcmread(patient.files[uid])
        assert path.parent.name == got.StudyInstanceUID
        assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        if "PixelData" in sent:
            assert got.PixelData == sent.PixelData
    for study_uid, count in patient.studies.items():
        marker = json.loads((dest / patient.alias / study_uid / COMPLETE_MARKER).read_text())
        assert marker["instances"] == count


def _mtimes(folder: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


# -- configuration (no PACS needed) -----------------------------------------------------------


def test_parse_peer() -> None:
    assert PacsPeer.parse(" PACS_1@pacs.example.org:104 ") == PacsPeer("PACS_1", "pacs.example.org", 104)
    assert PacsPeer.parse("PACS@[::1]:11112") == PacsPeer("PACS", "::1", 11112)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PACS127.0.0.1:104", "no '@'"),
        ("PACS@127.0.0.1", "no ':port'"),
        ("PACS@127.0.0.1:http", "port 'http' is not a number"),
        ("PACS@127.0.0.1:70000", "port 70000 is not a TCP port"),
        ("@127.0.0.1:104", "AE title ''"),
        ("A_VERY_LONG_AE_TITLE@127.0.0.1:104", "AE title 'A_VERY_LONG_AE_TITLE' must be 1-16"),
        ("PACS@:104", "host is empty"),
    ],
)
def test_parse_peer_names_the_wrong_part(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        PacsPeer.parse(text)


def test_query_needs_exact_ids_or_dates() -> None:
    with pytest.raises(InputError, match="needs patient IDs, a study date range, or both"):
        PacsQuery()
    with pytest.raises(InputError, match=r"patient ID #2 .* wildcard") as error:
        PacsQuery(patient_ids=("P1", "SYNTH*"))
    assert "SYNTH" not in str(error.value)  # messages never carry patient identifiers
    with pytest.raises(InputError, match=r"ends .* before it starts"):
        PacsQuery(date_from=datetime.date(2020, 1, 2), date_to=datetime.date(2020, 1, 1))


def test_query_study_date_key() -> None:
    day, later = datetime.date(2017, 3, 5), datetime.date(2017, 9, 3)
    assert PacsQuery(date_from=day, date_to=later).study_date == "20170305-20170903"
    assert PacsQuery(date_from=day).study_date == "20170305-"
    assert PacsQuery(date_to=later).study_date == "-20170903"
    assert PacsQuery(patient_ids=("P1",)).study_date == ""


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "push"}, "'move' or 'get'"),
        ({"timeout_s": 0}, "timeout must be positive"),
        ({"move_port": 0}, "move_port"),
        ({"calling_ae": "BACK\\SLASH"}, "calling_ae"),
    ],
)
def test_options_are_checked(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        RetrieveOptions(**changes)


def test_pacs_not_listening(tmp_path: Path) -> None:
    peer = PacsPeer("ORTHANC", "127.0.0.1", free_port())
    options = RetrieveOptions(move_port=free_port(peer.port), timeout_s=5)
    message = rf"cannot connect to the PACS ORTHANC@127\.0\.0\.1:{peer.port}: nothing is listening"
    with pytest.raises(InputError, match=message):
        retrieve(peer, PacsQuery(patient_ids=("P1",)), tmp_path, options)


def test_move_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        options = RetrieveOptions(move_port=port)
        with pytest.raises(InputError, match=rf"cannot listen for C-MOVE on 127\.0\.0\.1:{port}: .*in use"):
            retrieve(PacsPeer("ORTHANC", "127.0.0.1", 104), PacsQuery(patient_ids=("P1",)), tmp_path, options)
    assert list(tmp_path.iterdir()) == []


# -- against Orthanc -------------------------------------------------------------------------


@pytest.mark.tools
def test_find_patients_by_id(orthanc: OrthancPacs, patients: list[Patient]) -> None:
    ids = tuple(p.patient_id for p in reversed(patients))
    query = PacsQuery(patient_ids=(*ids, "NOT-IN-THE-PACS"))
    assert find_patients(orthanc.peer, query, orthanc.options()) == sorted(ids)


@pytest.mark.tools
def test_find_patients_by_date_range(orthanc: OrthancPacs, patients: list[Patient]) -> None:
    patient, date = _only_date(patients)
    one_day = PacsQuery(date_from=date, date_to=date)
    assert find_patients(orthanc.peer, one_day, orthanc.options()) == [patient.patient_id]
    future = datetime.date(2100, 1, 1)
    every_id = sorted(p.patient_id for p in patients)
    assert find_patients(orthanc.peer, PacsQuery(date_to=future), orthanc.options()) == every_id
    assert find_patients(orthanc.peer, PacsQuery(date_from=future), orthanc.options()) == []


@pytest.mark.tools
def test_find_studies_lists_every_study_with_its_size(orthanc: OrthancPacs, patients: list[Patient]) -> None:
    patient = patients[0]
    hits = find_studies(orthanc.peer, patient.patient_id, orthanc.options())
    # Orthanc reports NumberOfStudyRelatedInstances, so reuse is checked against the PACS's count.
    assert {hit.study_uid: hit.instances for hit in hits} == patient.studies
    dates = [patient.case["planning"]["study_date"], *(f["study_date"] for f in patient.case["followups"])]
    assert [hit.study_date for hit in hits] == sorted(d.replace("-", "") for d in dates)


@pytest.mark.tools
def test_query_from_an_unknown_ae_title_is_refused(orthanc: OrthancPacs) -> None:
    with pytest.raises(InputError, match="does it allow C-FIND from STRANGER"):
        find_patients(orthanc.peer, PacsQuery(patient_ids=("P1",)), orthanc.options(calling_ae="STRANGER"))


@pytest.mark.tools
def test_query_failure_status(orthanc: OrthancPacs, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Association, *args: Any, **kwargs: Any) -> Iterator[tuple[Dataset, None]]:
        yield _status(0xA700), None

    monkeypatch.setattr(Association, "send_c_find", refuse)
    with pytest.raises(InputError, match=r"the PACS refused the query: status 0xA700 \(.*Out of Resources"):
        find_patients(orthanc.peer, PacsQuery(patient_ids=("P1",)), orthanc.options())


@pytest.mark.tools
@pytest.mark.slow
def test_retrieve_by_date_with_move_then_reuse(
    orthanc: OrthancPacs, patients: list[Patient], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    patient, date = _only_date(patients)
    query = PacsQuery(date_from=date, date_to=date)
    lines: list[str] = []
    caplog.set_level(logging.DEBUG)
    first = retrieve(orthanc.peer, query, tmp_path, orthanc.options(), progress=lines.append)
    assert first.failures == []
    # Found by one follow-up, retrieved whole: the planning study and the other follow-up too.
    assert {s.study_uid for s in first.studies} == patient.studies.keys()
    assert not any(s.reused for s in first.studies)
    assert [p.name for p in tmp_path.iterdir()] == [patient.alias]
    _assert_retrieved(tmp_path, patient)
    # Ours and pynetdicom's, at every level: aliases, never the PatientID or name.
    for text in (*lines, caplog.text):
        assert patient.patient_id not in text
        assert patient.case["patient_name"] not in text
    assert patient.alias in lines[1]
    assert {r.name.split(".")[0] for r in caplog.records} >= {"pynetdicom", "worker"}

    before = _mtimes(tmp_path)
    again = retrieve(orthanc.peer, query, tmp_path, orthanc.options())
    assert again.failures == []
    assert [(s.study_uid, s.instances, s.reused) for s in again.studies] == [
        (s.study_uid, s.instances, True) for s in first.studies
    ]
    assert _mtimes(tmp_path) == before

    # A marker that no longer matches the PACS's count makes that study (only) come again.
    changed = first.studies[0]
    (changed.folder / COMPLETE_MARKER).write_text(json.dumps({"instances": 1, "study_date": ""}))
    third = retrieve(orthanc.peer, query, tmp_path, orthanc.options())
    assert [s.reused for s in third.studies] == [s is not changed for s in first.studies]
    _assert_retrieved(tmp_path, patient)


@pytest.mark.tools
@pytest.mark.slow
def test_retrieve_by_id_with_get(orthanc: OrthancPacs, patients: list[Patient], tmp_path: Path) -> None:
    patient = patients[1]
    result = retrieve(
        orthanc.peer, PacsQuery(patient_ids=(patient.patient_id,)), tmp_path, orthanc.options(method="get")
    )
    assert result.failures == []
    assert sorted(s.instances for s in result.studies) == sorted(patient.studies.values())
    assert [p.name for p in tmp_path.iterdir()] == [patient.alias]
    _assert_retrieved(tmp_path, patient)


@pytest.mark.tools
@pytest.mark.slow
def test_a_refused_instance_fails_its_study_until_a_rerun(
    orthanc: OrthancPacs, patients: list[Patient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patient = patients[1]
    query, options = PacsQuery(patient_ids=(patient.patient_id,)), orthanc.options(method="get")
    store, calls = Receiver.store, []

    def refuse_the_third(self: Receiver, event: Any) -> int:
        calls.append(1)
        return 0xA700 if len(calls) == 3 else store(self, event)

    monkeypatch.setattr(Receiver, "store", refuse_the_third)
    first = retrieve(orthanc.peer, query, tmp_path, options)
    [(where, reason)] = first.failures
    failed_uid = where.removeprefix(f"{patient.alias}/")
    assert failed_uid in patient.studies
    # Orthanc's C-GET carries on after a refused sub-operation and says so (C-MOVE gives 0xC000).
    assert "C-GET failed: status 0xB000" in reason
    assert f"{patient.studies[failed_uid] - 1} completed, 1 failed" in reason
    assert len(first.studies) == len(patient.studies) - 1
    assert not (tmp_path / where / COMPLETE_MARKER).exists()

    monkeypatch.setattr(Receiver, "store", store)
    again = retrieve(orthanc.peer, query, tmp_path, options)
    assert again.failures == []
    reused = {s.study_uid: s.reused for s in again.studies}
    assert reused == {uid: uid != failed_uid for uid in patient.studies}
    _assert_retrieved(tmp_path, patient)


@pytest.mark.tools
def test_move_to_a_port_the_pacs_does_not_know(
    orthanc: OrthancPacs, patients: list[Patient], tmp_path: Path
) -> None:
    patient = patients[0]
    options = orthanc.options(move_port=free_port(orthanc.move_port))
    result = retrieve(orthanc.peer, PacsQuery(patient_ids=(patient.patient_id,)), tmp_path, options)
    assert result.studies == []
    assert {where for where, _ in result.failures} == {f"{patient.alias}/{uid}" for uid in patient.studies}
    for _, reason in result.failures:
        assert reason.startswith("C-MOVE failed: status 0xC000")
        assert f"does the PACS map {orthanc.move_ae} to 127.0.0.1:{options.move_port}" in reason


@pytest.mark.tools
def test_failures_never_stop_the_others(
    orthanc: OrthancPacs, patients: list[Patient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A C-MOVE failure status fails its study; a patient whose studies cannot be listed fails
    alone; every other study is still tried."""

    def out_of_resources(self: Association, *args: Any, **kwargs: Any) -> Iterator[tuple[Dataset, None]]:
        yield _status(0xFF00, remaining=3), None
        yield _status(0xA702, completed=0, failed=3, warning=0), None

    unlisted, moved = patients

    def fail_for_one(peer: PacsPeer, patient_id: str, options: RetrieveOptions) -> list[StudyHit]:
        if patient_id == unlisted.patient_id:
            raise InputError("the PACS refused the query: status 0xC001 (Unable to process)")
        return find_studies(peer, patient_id, options)

    monkeypatch.setattr(Association, "send_c_move", out_of_resources)
    # Patched where retrieve() looks it up, its own module.
    monkeypatch.setattr(retrieval, "find_studies", fail_for_one)
    query = PacsQuery(patient_ids=(unlisted.patient_id, moved.patient_id))
    result = retrieve(orthanc.peer, query, tmp_path, orthanc.options())
    assert result.studies == []
    failures = dict(result.failures)
    assert failures.pop(unlisted.alias) == "the PACS refused the query: status 0xC001 (Unable to process)"
    assert failures.keys() == {f"{moved.alias}/{uid}" for uid in moved.studies}
    for reason in failures.values():
        assert reason.startswith("C-MOVE failed: status 0xA702 (Refused: Out of resources, unable to perform")
        assert "(sub-operations: 0 completed, 3 failed, 0 warning)" in reason


def _status(code: int, **counts: int) -> Dataset:
    status = Dataset()
    status.Status = code
    for name, value in counts.items():
        setattr(status, f"NumberOf{name.capitalize()}Suboperations", value)
    return status
