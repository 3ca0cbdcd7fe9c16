"""The API process and the broker, killed under running jobs and started again.

The worker does not need the API: a job goes on while ``rtinjury serve`` is down, and the API
started again on the same storage root and database finds its records and results. Redis
killed with SIGKILL and started again on its folder (append-only file, fsync always) still
holds the queued messages; while it is down the API refuses new jobs with a 503 problem and
still answers reads (records come from the database, progress from the job folders).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults.stack import RIGID, VISIBILITY_TIMEOUT_S, Stack, running_stack

pytestmark = pytest.mark.slow

PREPARING = ("assemble", "read", "register")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("restarts")) as stack:
        yield stack


def _status_file(stack: Stack, job_id: str) -> dict[str, Any]:
    status: dict[str, Any] = json.loads((stack.job_folder(job_id) / "status.json").read_text())
    return status


def _completions(stack: Stack, job_id: str) -> int:
    return [e["event"] for e in _status_file(stack, job_id)["history"]].count("succeeded")


@pytest.mark.timeout(300)
def test_the_api_killed_mid_job_comes_back_with_its_records_and_results(
    stack: Stack, patient_zip: bytes
) -> None:
    job_id = stack.submit(patient_zip, **RIGID)
    before = stack.wait_for_stage(job_id, *PREPARING)
    stack.api.kill()

    # Without the API the worker goes on: the job folder shows the network stage or later.
    def past_preparation() -> bool | None:
        return True if _status_file(stack, job_id)["stage"] in ("infer", "export", None) else None

    stack.wait_for("the job to go on without the API", past_preparation, 180)
    stack.start_api()
    job = stack.wait_until_finished(job_id)
    assert job["state"] == "succeeded", job["error"]
    for field in ("created_at", "owner", "patient_alias", "task", "source", "summary"):
        assert job[field] == before[field], field
    assert _completions(stack, job_id) == 1
    with stack.client() as client:
        listed = client.get("/v1/jobs").json()
        report = client.get(f"/v1/jobs/{job_id}/results/report")
        seg = client.get(f"/v1/jobs/{job_id}/results/seg")
    assert [j["id"] for j in listed["data"]].count(job_id) == 1
    assert report.status_code == 200 and report.json()["task"] == "orn"
    assert seg.status_code == 200 and seg.content[128:132] == b"DICM"


@pytest.mark.timeout(300)
def test_a_redis_restart_mid_job_loses_no_job(stack: Stack, patient_zip: bytes) -> None:
    running = stack.submit(patient_zip, **RIGID)
    queued = stack.submit(patient_zip, **RIGID)  # waits behind the first: one worker process
    stack.wait_for_stage(running, "register")
    with stack.client() as client:
        jobs_before = client.get("/v1/jobs").json()["count"]
    stack.redis.kill()

    with stack.client() as client:
        refused = client.post(
            "/v1/jobs", files=[("files", ("patient.zip", patient_zip, "application/zip"))], data=RIGID
        )
        read = client.get(f"/v1/jobs/{running}")
        listed = client.get("/v1/jobs")
        ready = client.get("/readyz")
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "broker-unavailable"
    assert read.status_code == 200 and read.json()["state"] == "running"
    assert listed.status_code == 200 and listed.json()["count"] == jobs_before  # none kept of the refused
    assert ready.status_code == 503 and not ready.json()["checks"]["broker"]["ok"]

    # The stage goes on meanwhile and ends with Redis still down: its progress cannot be
    # mirrored to the result backend, the next stage's message cannot be sent.
    def prepared() -> bool | None:
        log = stack.worker.log_text()
        return True if "Giving up refused callback publish for 'rtinjury.infer'" in log else None

    stack.wait_for("the preparation to end while Redis is down", prepared, 180)
    stack.start_redis()

    job = stack.wait_until_finished(running, timeout_s=VISIBILITY_TIMEOUT_S + 240)
    assert job["state"] == "succeeded", job["error"]
    history = _status_file(stack, running)["history"]
    started = [e["stage"] for e in history if e["event"] == "started"]
    # Its message unacknowledged, the preparation came back once Redis did, and ran again.
    assert started.count("assemble") == 2 and started.count("export") == 1, history
    assert _completions(stack, running) == 1
    # The queued job's message survived the restart: the worker takes it.
    stack.wait_for_stage(queued, *PREPARING, "dose", "prompts", "infer", timeout_s=120)
