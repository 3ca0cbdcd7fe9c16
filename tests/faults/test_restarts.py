"""The broker and the API process, killed under a running job and started again.

One job, a second queued behind it (one worker process), and two faults in turn:

1. Redis gets SIGKILL while the job registers. While it is down the API refuses new jobs with
   a 503 problem and still answers reads (records come from the database, progress from the
   job folders); the stage goes on, ends, and cannot send the next stage's message. Redis is
   started again on its folder (append-only file, fsync always): the queued job's message and
   the unacknowledged one are still there, the latter runs again, the job goes on.
2. ``rtinjury serve`` gets SIGKILL during inference. The worker does not need it: the job goes
   on, and the API started again on the same storage root and database finds its records and
   results.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import pytest

from tests.faults.stack import RIGID, VISIBILITY_TIMEOUT_S, Stack, running_stack

#: The whole module under one limit: its first test also runs the shared scenario.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


@dataclass
class Restarts:
    """What the module's scenario did and saw."""

    job_id: str
    queued_id: str
    #: While Redis was down: a submission, a read, a listing and /readyz.
    refused: httpx.Response
    read: httpx.Response
    listed: httpx.Response
    ready: httpx.Response
    jobs_before: int
    #: The job as the API showed it just before the API was killed.
    before_api_kill: dict[str, Any]
    #: The job folder's status once the job had gone on without the API.
    without_api: dict[str, Any]
    job: dict[str, Any]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("restarts")) as stack:
        yield stack


@pytest.fixture(scope="module")
def restarts(stack: Stack, patient_zip: bytes) -> Restarts:
    job_id = stack.submit(patient_zip, **RIGID)
    queued_id = stack.submit(patient_zip, **RIGID)

    stack.wait_for_stage(job_id, "register")
    with stack.client() as client:
        jobs_before = client.get("/v1/jobs").json()["count"]
    stack.redis.kill()
    with stack.client() as client:
        files = [("files", ("patient.zip", patient_zip, "application/zip"))]
        refused = client.post("/v1/jobs", files=files, data=RIGID)
        read, listed, ready = client.get(f"/v1/jobs/{job_id}"), client.get("/v1/jobs"), client.get("/readyz")

    # Redis comes back once the preparation has ended and its next message could not be sent.
    def prepared() -> bool | None:
        return "Giving up refused callback publish for 'rtinjury.infer'" in stack.worker.log_text() or None

    stack.wait_for("the preparation to end with Redis down", prepared, 180)
    stack.start_redis()

    before_api_kill = stack.wait_for_stage(job_id, "infer", timeout_s=VISIBILITY_TIMEOUT_S + 180)
    stack.api.kill()

    def went_on() -> dict[str, Any] | None:
        status = _status_file(stack, job_id)
        return status if status["stage"] in ("export", None) else None

    without_api = stack.wait_for("the job to go on without the API", went_on, 180)
    stack.start_api()
    job = stack.wait_until_finished(job_id)
    return Restarts(
        job_id, queued_id, refused, read, listed, ready, jobs_before, before_api_kill, without_api, job
    )


def _status_file(stack: Stack, job_id: str) -> dict[str, Any]:
    status: dict[str, Any] = json.loads((stack.job_folder(job_id) / "status.json").read_text())
    return status


def _started(stack: Stack, job_id: str) -> list[str]:
    return [e["stage"] for e in _status_file(stack, job_id)["history"] if e["event"] == "started"]


def test_while_redis_is_down_jobs_are_refused_and_reads_answered(restarts: Restarts) -> None:
    refused = restarts.refused
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "broker-unavailable"
    assert restarts.read.status_code == 200 and restarts.read.json()["state"] == "running"
    # Nothing was kept of the refused job.
    assert restarts.listed.status_code == 200 and restarts.listed.json()["count"] == restarts.jobs_before
    assert restarts.ready.status_code == 503 and not restarts.ready.json()["checks"]["broker"]["ok"]


def test_a_stage_that_ends_with_redis_down_runs_again_and_the_job_completes_once(
    stack: Stack, restarts: Restarts
) -> None:
    assert restarts.job["state"] == "succeeded", restarts.job["error"]
    started = _started(stack, restarts.job_id)
    # Its message unacknowledged, the preparation came back with Redis, and ran again.
    assert started.count("assemble") == 2, started
    assert started.count("export") == 1, started
    history = _status_file(stack, restarts.job_id)["history"]
    assert [e["event"] for e in history].count("succeeded") == 1, history


def test_a_job_queued_before_the_redis_restart_is_not_lost(stack: Stack, restarts: Restarts) -> None:
    def taken() -> dict[str, Any] | None:
        job = stack.job(restarts.queued_id)
        return job if job["state"] != "queued" else None

    job = stack.wait_for("the worker to take the queued job", taken, 120)
    assert job["state"] in ("running", "succeeded"), job["error"]


def test_the_api_restarted_mid_job_has_its_records_and_results(stack: Stack, restarts: Restarts) -> None:
    assert "infer" in restarts.without_api["timings_s"], "the network stage ended while the API was down"
    job, before = restarts.job, restarts.before_api_kill
    for field in ("created_at", "owner", "patient_alias", "task", "source", "summary"):
        assert job[field] == before[field], field
    with stack.client() as client:
        listed = client.get("/v1/jobs").json()
        report = client.get(f"/v1/jobs/{restarts.job_id}/results/report")
        seg = client.get(f"/v1/jobs/{restarts.job_id}/results/seg")
    assert [j["id"] for j in listed["data"]].count(restarts.job_id) == 1
    assert report.status_code == 200 and report.json()["task"] == "orn"
    assert seg.status_code == 200 and seg.content[128:132] == b"DICM"
