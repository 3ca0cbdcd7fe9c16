"""The acceptance cases of study completion through the real SCP and dcmtk's storescu: a study
sent twice runs once; a late RTDOSE after the quiet period makes the job it was missing, and a
later one runs the follow-up again. The queue is the real embedded dispatcher (no worker: the
jobs' messages wait), so this checks what is made, not the segmentation."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydantic import SecretStr
from sqlalchemy import select

from service.config import Settings
from service.db import Database, JobRecord, NodeStudy
from service.node.routing import load_routes
from service.node.server import NodeServer
from service.node.studies import StudyWatcher
from worker.dispatch import Dispatcher

QUIET_S = 0.5


def _watcher(settings: Settings, database: Database) -> StudyWatcher:
    return StudyWatcher(settings, database, Dispatcher(settings), rules=load_routes(None))


def _settle(watcher: StudyWatcher) -> list[str]:
    time.sleep(QUIET_S + 0.2)
    return watcher.run_once()


def _jobs(database: Database) -> list[JobRecord]:
    with database.session() as session:
        return list(session.scalars(select(JobRecord)))


def _study(database: Database) -> NodeStudy:
    with database.session() as session:
        [study] = session.scalars(select(NodeStudy))
        return study


def test_sent_twice_runs_once_and_late_doses_run_again(
    start_node: Callable[..., NodeServer],
    storescu: Callable[..., subprocess.CompletedProcess[str]],
    node_settings: Settings,
    node_database: Database,
    orn_patient: Path,
    tmp_path: Path,
) -> None:
    node = start_node(node_quiet_period_s=QUIET_S)
    settings = node.settings
    watcher = _watcher(settings, node_database)
    without_dose = tmp_path / "without-dose"
    shutil.copytree(orn_patient, without_dose, ignore=shutil.ignore_patterns("ground_truth", "rtdose.dcm"))

    sent = storescu(node, without_dose)
    assert sent.returncode == 0, sent.stderr
    assert _settle(watcher) == []
    study = _study(node_database)
    assert study.state == "incomplete" and "dose" in (study.detail or "").lower()

    dose = orn_patient / "planning" / "rtdose.dcm"
    assert storescu(node, dose).returncode == 0
    [first] = _settle(watcher)
    assert _study(node_database).state == "complete"

    # The whole study again: every instance is a duplicate, the input set is the same.
    assert storescu(node, orn_patient).returncode == 0
    assert _settle(watcher) == []
    assert [j.id for j in _jobs(node_database)] == [first]

    # A re-computed dose (new instance) after the quiet period: the follow-up runs again with it.
    late = pydicom.dcmread(dose)
    late.SOPInstanceUID = pydicom.uid.generate_uid()
    late.SeriesInstanceUID = pydicom.uid.generate_uid()
    late_path = tmp_path / "late-dose.dcm"
    late.save_as(late_path, enforce_file_format=True)
    assert storescu(node, late_path).returncode == 0
    [second] = _settle(watcher)
    jobs = {j.id: j for j in _jobs(node_database)}
    assert set(jobs) == {first, second}
    assert jobs[first].job_key != jobs[second].job_key
    assert all(j.source == "node" for j in jobs.values())
    assert _study(node_database).job_ids == [first, second]

    # What the API shows of it: the patient by alias, the series with their roles, both jobs.
    from fastapi.testclient import TestClient

    from service.main import create_app

    key = "node-test-key-0123456789"
    with TestClient(create_app(settings.model_copy(update={"api_key": SecretStr(key)}))) as client:
        answer = client.get("/v1/studies", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    [study] = answer.json()["data"]
    assert study["state"] == "complete" and study["job_ids"] == [first, second]
    assert study["patient_alias"].startswith("pt-") and study["calling_aes"] == ["PACS"]
    roles = sorted(s["role"] for s in study["series"] if s["role"])
    # The second send carried the ground-truth SEG too: held, shown, never a job input.
    assert roles == ["RTDOSE", "RTDOSE", "RTPLAN", "follow-up (ct)", "planning CT", "segmentation"]
    assert study["instances"]["accepted"] == sum(s["instances"] for s in study["series"])
