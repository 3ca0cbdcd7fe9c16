"""Study completion: quiet period, idempotent jobs, late series, routing — on real files and a
real job database; the queue is the real embedded dispatcher (no worker: messages wait)."""

from __future__ import annotations

import hashlib
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from service.config import Settings
from service.db import Database, JobRecord, NodeInstance, NodeStudy
from service.db.models import utc_now
from service.node.routing import load_routes
from service.node.studies import NODE_OWNER, StudyWatcher
from worker.dispatch import Dispatcher
from worker.jobs.folder import JobFolder
from worker.jobs.spec import read_spec
from worker.settings import WorkerSettings


class Clock:
    def __init__(self) -> None:
        self.now = utc_now()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(storage_root=tmp_path / "storage", node_quiet_period_s=30)


@pytest.fixture
def database(settings: Settings) -> Database:
    return Database(settings.sqlalchemy_url)


def _receive(
    database: Database,
    settings: Settings,
    files: list[Path],
    when: datetime,
    *,
    state: str = "accepted",
    calling_ae: str = "PACS",
) -> None:
    """What the node's inbox records for instances of a released (or still open) association."""
    with database.session() as session:
        for source in files:
            header = pydicom.dcmread(source, stop_before_pixels=True)
            key = hashlib.sha256(str(header.PatientID).encode()).hexdigest()
            target = settings.storage_root / "node" / "patients" / key[:16] / f"{header.SOPInstanceUID}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            session.add(
                NodeInstance(
                    patient_key=key,
                    sop_instance_uid=str(header.SOPInstanceUID),
                    sop_class_uid=str(header.SOPClassUID),
                    study_uid=str(header.StudyInstanceUID),
                    series_uid=str(header.SeriesInstanceUID),
                    modality=str(header.Modality),
                    path=str(target.relative_to(settings.storage_root)),
                    size=target.stat().st_size,
                    association_id="a" * 32,
                    state=state,
                )
            )
            study = session.get(NodeStudy, key) or NodeStudy(
                patient_key=key,
                patient_alias="pt-" + key[:10],
                calling_aes=[calling_ae],
                job_ids=[],
                series=[],
            )
            study.last_received_at = when
            if state == "accepted":
                study.pending, study.last_released_at = True, when
            session.add(study)
        session.commit()


def _dicom_files(folder: Path, *, without: str | None = None) -> list[Path]:
    files = [p for p in sorted(folder.rglob("*.dcm")) if "ground_truth" not in p.parts]
    return [
        p for p in files if without is None or pydicom.dcmread(p, stop_before_pixels=True).Modality != without
    ]


def _watcher(
    settings: Settings, database: Database, clock: Clock, routes: Path | None = None
) -> StudyWatcher:
    queue = Dispatcher(WorkerSettings(storage_root=settings.storage_root))
    return StudyWatcher(settings, database, queue, rules=load_routes(routes), clock=clock)


def _study(database: Database) -> NodeStudy:
    with database.session() as session:
        [study] = session.scalars(select(NodeStudy))
        return study


def test_a_study_runs_once_after_the_quiet_period(
    settings: Settings, database: Database, orn_patient: Path
) -> None:
    clock = Clock()
    watcher = _watcher(settings, database, clock)
    _receive(database, settings, _dicom_files(orn_patient), clock.now)
    clock.advance(29)
    assert watcher.run_once() == []  # still inside the quiet period
    clock.advance(2)
    [job_id] = watcher.run_once()
    study = _study(database)
    assert (study.state, study.pending, study.job_ids) == ("complete", False, [job_id])
    roles = {entry["role"] for entry in study.series}
    assert {"follow-up (ct)", "planning CT", "RTDOSE", "RTPLAN"} <= roles
    with database.session() as session:
        record = session.get(JobRecord, job_id)
        assert record is not None
        assert (record.source, record.owner, record.state, record.task) == (
            "node",
            NODE_OWNER,
            "queued",
            "orn",
        )
    spec = read_spec(JobFolder.under(settings.storage_root, job_id).spec_path)
    assert spec.followup_series_uid and spec.destinations == []

    # The same study sent again: stored once by the inbox, so the same input set: no new job.
    with database.session() as session:
        session.get(NodeStudy, study.patient_key).pending = True  # type: ignore[union-attr]
        session.commit()
    clock.advance(60)
    assert watcher.run_once() == []
    assert _study(database).job_ids == [job_id]


def test_an_open_association_holds_the_study_back(
    settings: Settings, database: Database, orn_patient: Path
) -> None:
    clock = Clock()
    watcher = _watcher(settings, database, clock)
    files = _dicom_files(orn_patient)
    _receive(database, settings, files[:-1], clock.now)
    _receive(database, settings, files[-1:], clock.now, state="received")
    clock.advance(120)
    assert watcher.run_once() == []
    assert _study(database).pending


def test_a_late_dose_completes_the_study_and_a_later_one_runs_again(
    settings: Settings, database: Database, orn_patient: Path
) -> None:
    clock = Clock()
    watcher = _watcher(settings, database, clock)
    _receive(database, settings, _dicom_files(orn_patient, without="RTDOSE"), clock.now)
    clock.advance(31)
    assert watcher.run_once() == []
    study = _study(database)
    assert study.state == "incomplete" and "dose" in (study.detail or "").lower() and not study.pending

    dose = next(p for p in _dicom_files(orn_patient) if pydicom.dcmread(p).Modality == "RTDOSE")
    _receive(database, settings, [dose], clock.now)
    clock.advance(31)
    [first] = watcher.run_once()

    # A second RTDOSE of the same plan arrives later (a re-sent, re-computed dose): new input set.
    late = pydicom.dcmread(dose)
    late.SOPInstanceUID = pydicom.uid.generate_uid()
    late.SeriesInstanceUID = pydicom.uid.generate_uid()
    copy = settings.storage_root.parent / "late-dose.dcm"
    late.save_as(copy, enforce_file_format=True)
    _receive(database, settings, [copy], clock.now)
    clock.advance(31)
    made = watcher.run_once()
    study = _study(database)
    assert len(made) == 1 and made[0] != first
    assert study.job_ids == [first, made[0]] and study.state == "complete"


def test_routes_decide_task_defaults_and_destinations(
    settings: Settings, database: Database, orn_patient: Path, tmp_path: Path
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        """
version: 1
destinations:
  pacs: {ae_title: PACS, host: 127.0.0.1, port: 11113}
routes:
  - name: mr-only
    match: {modality: [MR]}
    destinations: [pacs]
  - name: ct-from-the-pacs
    match: {task: [orn], calling_ae: ['PAC.']}
    clinical_text: mandibular pain
    destinations: [pacs]
"""
    )
    clock = Clock()
    watcher = _watcher(settings, database, clock, routes)
    _receive(database, settings, _dicom_files(orn_patient), clock.now)
    clock.advance(31)
    [job_id] = watcher.run_once()
    spec = read_spec(JobFolder.under(settings.storage_root, job_id).spec_path)
    assert spec.clinical_text == "mandibular pain"
    assert [(d.name, d.ae_title, d.port) for d in spec.destinations] == [("pacs", "PACS", 11113)]


def test_a_follow_up_no_route_takes_is_reported(
    settings: Settings, database: Database, orn_patient: Path, tmp_path: Path
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("version: 1\nroutes:\n  - name: mr-only\n    match: {modality: [MR]}\n")
    clock = Clock()
    watcher = _watcher(settings, database, clock, routes)
    _receive(database, settings, _dicom_files(orn_patient), clock.now)
    clock.advance(31)
    assert watcher.run_once() == []
    study = _study(database)
    assert study.state == "incomplete" and study.detail == "no route runs the orn follow-up (ct)"


def test_a_queue_that_is_down_leaves_the_study_pending(
    settings: Settings, database: Database, orn_patient: Path
) -> None:
    clock = Clock()
    down = Dispatcher(WorkerSettings(storage_root=settings.storage_root, broker_url="redis://127.0.0.1:1/0"))
    watcher = StudyWatcher(settings, database, down, rules=load_routes(None), clock=clock)
    _receive(database, settings, _dicom_files(orn_patient), clock.now)
    clock.advance(31)
    assert watcher.run_once() == []
    study = _study(database)
    assert study.pending and study.job_ids == []
    assert not any((settings.storage_root / "jobs").iterdir())  # nothing half-made


def test_bad_routing_rules_are_refused_with_the_reason(tmp_path: Path) -> None:
    from worker.errors import InputError

    path = tmp_path / "routes.yaml"
    path.write_text("version: 1\nroutes:\n  - name: r\n    destinations: [nowhere]\n")
    with pytest.raises(InputError, match="unknown destination"):
        load_routes(path)
    path.write_text("version: 1\nroutes:\n  - name: r\n    match: {description: ['(']}\n")
    with pytest.raises(InputError, match="not a regular expression"):
        load_routes(path)
