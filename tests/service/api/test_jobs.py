"""The job routes end to end in the API process: upload, follow, results, refine, delete.

The dispatcher is the real one in embedded mode: Celery's file-system queue under the storage
root, with no worker, so a queued job's messages wait in the queue folder. The worker's side of
a job (its ``status.json`` and outputs) is written here as the worker writes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api.deps import get_dispatcher
from service.config import Settings
from service.db import Database, JobRecord
from tests.service.api.conftest import AUTH, broker_down, upload, zip_folders
from worker.celery.app import queue_folders
from worker.jobs.folder import JobFolder
from worker.jobs.status import JobError, JobState, JobStatus, read_status, write_status
from worker.stages.export.files import OUTPUT_FILES


def queued_messages(settings: Settings) -> list[str]:
    """The bodies of the messages waiting in the embedded queue."""
    folder = queue_folders(settings)["messages"]
    return [path.read_text(encoding="utf-8") for path in sorted(folder.glob("*"))]


def folder_of(settings: Settings, job_id: str) -> JobFolder:
    return JobFolder.under(settings.storage_root, job_id)


def finish(settings: Settings, job_id: str, *, outputs: bool = True) -> None:
    """What the worker leaves behind when a job succeeds: a status with timings and the outputs."""
    folder = folder_of(settings, job_id)
    status = read_status(folder.status_path)
    status.state, status.stage, status.progress = JobState.SUCCEEDED, None, 100
    status.timings_s = {"assemble": 0.4, "register": 12.5, "infer": 3.0, "export": 2.0}
    write_status(status, folder.status_path)
    if outputs:
        for name, file_name in OUTPUT_FILES.items():
            (folder.outputs / file_name).write_bytes(f"{name} bytes".encode())


@pytest.fixture
def job(client: TestClient, small_patients: dict[str, Path]) -> dict[str, object]:
    response = upload(client, zip_folders(small_patients["first"]))
    assert response.status_code == 202, response.text
    body: dict[str, object] = response.json()
    return body


def test_a_zipped_synthetic_patient_is_checked_recorded_and_queued(
    client: TestClient, settings: Settings, synthetic_zip: bytes
) -> None:
    response = upload(client, synthetic_zip, clinical_text="pain and exposed bone", tau="0.7")

    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued" and job["progress"] == 0 and job["task"] == "orn"
    assert job["patient_alias"].startswith("pt-")
    assert job["summary"]["followup_modality"] == "CT" and job["summary"]["rtdose_objects"] >= 1
    assert job["links"] == {"job": f"/v1/jobs/{job['id']}", "results": {}}
    folder = folder_of(settings, job["id"])
    spec = json.loads(folder.spec_path.read_text())
    assert spec["tau"] == 0.7 and spec["clinical_text"] == "pain and exposed bone"
    assert read_status(folder.status_path).state is JobState.QUEUED
    # The archive was unpacked under generated names and removed; no client name is a path.
    assert sorted(p.name for p in folder.inputs.iterdir()) == ["upload-00001"]
    assert all(
        p.name.endswith(".dcm") and p.name[:6].isdigit() for p in folder.inputs.rglob("*") if p.is_file()
    )
    assert any(
        job["id"] in message and "rtinjury.prepare" in message for message in queued_messages(settings)
    )
    assert client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()["id"] == job["id"]


def test_loose_dicom_files_make_a_job_too(client: TestClient, small_patients: dict[str, Path]) -> None:
    files = [
        ("files", (f"slice-{number}.dcm", path.read_bytes(), "application/dicom"))
        for number, path in enumerate(sorted(small_patients["first"].rglob("*.dcm")))
    ]
    response = client.post("/v1/jobs", files=files, data={"task": "ce"}, headers=AUTH)
    assert response.status_code == 202, response.text
    assert response.json()["task"] == "ce"


def test_progress_comes_from_the_worker_status(
    client: TestClient, settings: Settings, job: dict[str, object]
) -> None:
    job_id = str(job["id"])
    folder = folder_of(settings, job_id)
    write_status(
        JobStatus(state=JobState.RUNNING, stage="register", progress=10, timings_s={"assemble": 0.4}),
        folder.status_path,
    )
    running = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
    assert (running["state"], running["stage"], running["progress"]) == ("running", "register", 10)
    assert running["timings_s"] == {"assemble": 0.4} and running["finished_at"] is None

    finish(settings, job_id)
    done = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
    assert done["state"] == "succeeded" and done["progress"] == 100 and done["finished_at"]
    assert set(done["links"]["results"]) == set(OUTPUT_FILES)
    metrics = client.get("/metrics", headers=AUTH).text
    # Each stage's time is observed once, however often the job is read.
    assert 'rtinjury_stage_duration_seconds_count{stage="register"} 1.0' in metrics
    assert 'rtinjury_stage_duration_seconds_count{stage="assemble"} 1.0' in metrics
    assert 'rtinjury_jobs{state="succeeded"} 1.0' in metrics


def test_a_failed_job_shows_its_error(client: TestClient, settings: Settings, job: dict[str, object]) -> None:
    job_id = str(job["id"])
    failed = JobStatus(
        state=JobState.FAILED,
        stage="register",
        error=JobError(code="registration-failed", message="the images never overlap"),
    )
    write_status(failed, folder_of(settings, job_id).status_path)
    shown = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
    assert shown["state"] == "failed"
    assert shown["error"] == {"code": "registration-failed", "message": "the images never overlap"}
    assert client.get(f"/v1/jobs/{job_id}/results/seg", headers=AUTH).status_code == 409


def test_results_download_with_media_type_and_file_name(
    client: TestClient, settings: Settings, job: dict[str, object]
) -> None:
    job_id = str(job["id"])
    early = client.get(f"/v1/jobs/{job_id}/results/seg", headers=AUTH)
    assert early.status_code == 409 and early.json()["code"] == "job-not-succeeded"

    finish(settings, job_id)
    seg = client.get(f"/v1/jobs/{job_id}/results/seg", headers=AUTH)
    assert seg.status_code == 200 and seg.content == b"seg bytes"
    assert seg.headers["content-type"] == "application/dicom"
    assert f'filename="{job_id}-seg.dcm"' in seg.headers["content-disposition"]
    preview = client.get(f"/v1/jobs/{job_id}/results/preview", headers=AUTH)
    assert preview.headers["content-type"] == "image/png"
    unknown = client.get(f"/v1/jobs/{job_id}/results/nifti", headers=AUTH)
    assert unknown.status_code == 404 and unknown.json()["code"] == "result-not-found"


def test_a_missing_output_is_a_404_not_a_crash(
    client: TestClient, settings: Settings, job: dict[str, object]
) -> None:
    finish(settings, str(job["id"]), outputs=False)
    response = client.get(f"/v1/jobs/{job['id']}/results/sr", headers=AUTH)
    assert response.status_code == 404 and "no sr result" in response.json()["detail"]


def test_refine_queues_the_decoder_and_keeps_the_timings(
    client: TestClient, settings: Settings, job: dict[str, object]
) -> None:
    job_id = str(job["id"])
    clicks = {"clicks": [{"point_mm": [1.0, -2.5, 30.0], "positive": True}]}
    too_early = client.post(f"/v1/jobs/{job_id}/refine", json=clicks, headers=AUTH)
    assert too_early.status_code == 409

    finish(settings, job_id)
    response = client.post(f"/v1/jobs/{job_id}/refine", json=clicks, headers=AUTH)

    assert response.status_code == 202, response.text
    refined = response.json()
    assert (refined["state"], refined["stage"], refined["refinements"]) == ("queued", "refine", 1)
    assert refined["timings_s"]["register"] == 12.5 and refined["links"]["results"] == {}
    status = read_status(folder_of(settings, job_id).status_path)
    assert status.state is JobState.QUEUED and status.refinements == 1
    assert any("rtinjury.refine" in m and job_id in m for m in queued_messages(settings))


@pytest.mark.parametrize(
    "body",
    [
        {"clicks": []},
        {"clicks": [{"point_mm": [0, 0, 0], "positive": True}] * 21},
        {"clicks": [{"point_mm": [0, 0], "positive": True}]},
        {"clicks": [{"point_mm": [0, 0, 0], "positive": "maybe"}]},
        {"points": []},
    ],
)
def test_refine_refuses_bad_clicks(
    client: TestClient, settings: Settings, job: dict[str, object], body: dict[str, object]
) -> None:
    finish(settings, str(job["id"]))
    response = client.post(f"/v1/jobs/{job['id']}/refine", json=body, headers=AUTH)
    assert response.status_code == 422 and response.json()["code"] == "validation-error"
    assert read_status(folder_of(settings, str(job["id"])).status_path).state is JobState.SUCCEEDED


def test_delete_waits_for_the_end_then_removes_the_files(
    client: TestClient, settings: Settings, job: dict[str, object]
) -> None:
    job_id = str(job["id"])
    busy = client.delete(f"/v1/jobs/{job_id}", headers=AUTH)
    assert busy.status_code == 409 and busy.json()["code"] == "job-busy"

    finish(settings, job_id)
    assert client.delete(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 204

    assert not folder_of(settings, job_id).exists()
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 404
    assert client.delete(f"/v1/jobs/{job_id}", headers=AUTH).status_code == 404
    assert client.get("/v1/jobs", headers=AUTH).json()["count"] == 0
    with Database(settings.sqlalchemy_url).session() as session:
        record = session.get(JobRecord, job_id)
        assert record is not None and record.deleted  # the record stays for the audit trail


def test_list_filters_and_pages(
    client: TestClient, settings: Settings, small_patients: dict[str, Path]
) -> None:
    body = zip_folders(small_patients["first"])
    ids = [upload(client, body).json()["id"] for _ in range(3)]
    finish(settings, ids[0])

    everything = client.get("/v1/jobs", headers=AUTH).json()
    assert everything["count"] == 3 and [j["id"] for j in everything["data"]] == ids[::-1]
    page = client.get("/v1/jobs", params={"limit": 1, "offset": 1}, headers=AUTH).json()
    assert [j["id"] for j in page["data"]] == [ids[1]] and page["count"] == 3
    succeeded = client.get("/v1/jobs", params={"state": "succeeded"}, headers=AUTH).json()
    assert [j["id"] for j in succeeded["data"]] == [ids[0]]
    owner = everything["data"][0]["owner"]
    assert client.get("/v1/jobs", params={"owner": owner}, headers=AUTH).json()["count"] == 3
    assert client.get("/v1/jobs", params={"owner": "0" * 12}, headers=AUTH).json()["count"] == 0
    assert client.get("/v1/jobs", params={"state": "lost"}, headers=AUTH).status_code == 422
    assert client.get("/v1/jobs", params={"limit": 0}, headers=AUTH).status_code == 422


def test_unknown_and_malformed_job_ids_are_404(client: TestClient) -> None:
    for job_id in ("0" * 32, "not-a-job", "..%2F..%2Fetc"):
        response = client.get(f"/v1/jobs/{job_id}", headers=AUTH)
        assert response.status_code == 404 and response.json()["code"] in ("job-not-found", "not-found")


def test_a_refinement_the_broker_refuses_leaves_the_job_as_it_was(
    client: TestClient, app: FastAPI, settings: Settings, job: dict[str, object]
) -> None:
    job_id = str(job["id"])
    finish(settings, job_id)
    app.dependency_overrides[get_dispatcher] = broker_down
    clicks = {"clicks": [{"point_mm": [1.0, 2.0, 3.0], "positive": False}]}
    response = client.post(f"/v1/jobs/{job_id}/refine", json=clicks, headers=AUTH)
    app.dependency_overrides.clear()

    assert response.status_code == 503 and response.json()["code"] == "broker-unavailable"
    shown = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
    assert (shown["state"], shown["refinements"]) == ("succeeded", 0)
    assert read_status(folder_of(settings, job_id).status_path).state is JobState.SUCCEEDED


def test_large_parts_are_stored_byte_for_byte_and_stray_files_become_warnings(
    client: TestClient, settings: Settings, small_patients: dict[str, Path]
) -> None:
    stray = os.urandom(3 * 1024 * 1024 + 17)  # several write blocks, not a multiple of one
    files = [
        ("files", ("study.zip", zip_folders(small_patients["first"]), "application/zip")),
        ("files", ("scan notes.bin", stray, "application/octet-stream")),
    ]
    response = client.post("/v1/jobs", files=files, headers=AUTH)

    assert response.status_code == 202, response.text
    job = response.json()
    inputs = folder_of(settings, job["id"]).inputs
    assert (inputs / "upload-00002.dcm").read_bytes() == stray
    assert "1 file(s) that are not DICOM were ignored" in job["warnings"]


def test_a_job_whose_folder_is_gone_keeps_its_record(
    client: TestClient, settings: Settings, job: dict[str, object]
) -> None:
    job_id = str(job["id"])
    write_status(
        JobStatus(state=JobState.RUNNING, stage="dose", progress=55), folder_of(settings, job_id).status_path
    )
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()["stage"] == "dose"
    folder_of(settings, job_id).remove()
    shown = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
    assert (shown["state"], shown["stage"], shown["progress"]) == ("running", "dose", 55)


def test_deliveries_show_after_success_and_a_resend_is_queued(
    client: TestClient, settings: Settings, job: dict[str, object]
) -> None:
    from worker.jobs.spec import Destination, read_spec, write_spec
    from worker.jobs.status import Delivery

    job_id = str(job["id"])
    finish(settings, job_id)
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()["deliveries"] == []
    no_destinations = client.post(f"/v1/jobs/{job_id}/deliver", headers=AUTH)
    assert no_destinations.status_code == 409 and no_destinations.json()["code"] == "no-destinations"

    # A node job: the spec names a destination, the worker's deliver stage records its outcome
    # after the job had already finished; reading the job shows it.
    folder = folder_of(settings, job_id)
    spec = read_spec(folder.spec_path)
    spec.destinations = [Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=11113)]
    write_spec(spec, folder.spec_path)
    with Database(settings.sqlalchemy_url).session() as session:
        record = session.get(JobRecord, job_id)
        assert record is not None
        record.spec = spec.model_dump(mode="json")
        session.commit()
    status = read_status(folder.status_path)
    status.deliveries = [Delivery(destination="pacs", state="failed", attempts=3, failed=3, error="refused")]
    write_status(status, folder.status_path)
    [delivery] = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()["deliveries"]
    assert (delivery["destination"], delivery["state"], delivery["attempts"]) == ("pacs", "failed", 3)

    resend = client.post(f"/v1/jobs/{job_id}/deliver", headers=AUTH)
    assert resend.status_code == 202, resend.text
    assert any("rtinjury.deliver" in m and job_id in m for m in queued_messages(settings))


def test_studies_need_a_key_and_list_what_the_node_holds(client: TestClient) -> None:
    assert client.get("/v1/studies").status_code == 401
    answer = client.get("/v1/studies", headers=AUTH)
    assert answer.status_code == 200 and answer.json() == {"data": [], "count": 0, "limit": 50, "offset": 0}
    assert client.get("/v1/studies?state=bogus", headers=AUTH).status_code == 422
