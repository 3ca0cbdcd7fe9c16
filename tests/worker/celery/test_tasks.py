"""Jobs through a real Celery worker process: on the real Redis, and embedded (no Redis).

The worker is a child process started the way ``rtinjury serve`` starts its embedded one; the
test sends jobs with the same dispatcher the API uses and watches ``status.json`` as a client
watching ``GET /v1/jobs/{id}`` would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.worker.jobs.conftest import new_job
from worker.celery.embedded import start_embedded_worker, stop_embedded_worker
from worker.dispatch import Dispatcher
from worker.jobs.folder import JobFolder
from worker.jobs.spec import ClickSpec, JobSpec
from worker.jobs.status import STAGES, JobState, JobStatus, read_status, write_status
from worker.settings import WorkerSettings

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/11"
JOB_TIMEOUT_S = 240


@pytest.fixture(scope="module", params=["redis", "embedded"])
def worker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dispatcher]:
    """A worker process for both queues, and the dispatcher that feeds it."""
    root = tmp_path_factory.mktemp(f"store-{request.param}")
    if request.param == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        try:
            client.flushdb()
        except redis.ConnectionError:
            pytest.fail("Redis does not answer on 127.0.0.1:6379 (.ci/run starts one)", pytrace=False)
        settings = WorkerSettings(storage_root=root, broker_url=REDIS_URL)
    else:
        settings = WorkerSettings(storage_root=root)
    process = start_embedded_worker(settings)
    yield Dispatcher(settings)
    stop_embedded_worker(process)
    assert process.returncode is not None


def _watch(folder: JobFolder) -> tuple[JobStatus, list[str]]:
    """Poll until the job has finished; returns the last status and the stages seen, in order."""
    stages: list[str] = []
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        status = read_status(folder.status_path)
        if status.stage and (not stages or stages[-1] != status.stage):
            stages.append(status.stage)
        if status.state.finished:
            return status, stages
        time.sleep(0.05)
    pytest.fail(f"the job did not finish within {JOB_TIMEOUT_S} s; last status {status}")


def test_a_job_runs_every_stage_in_order_then_refines(worker: Dispatcher, orn_patient: Path) -> None:
    folder = new_job(worker.settings.storage_root, orn_patient, job_id="1" * 32)
    worker.submit(folder.job_id)
    status, seen = _watch(folder)
    assert status.state is JobState.SUCCEEDED, status.error
    # Polling may miss a stage that takes milliseconds, never reorder them.
    assert seen == [s for s in STAGES if s in seen]
    assert {"register", "infer", "export"} <= set(seen)
    assert set(STAGES) <= set(status.timings_s)
    assert all(folder.output(name).is_file() for name in ("seg", "rtstruct", "sr", "report", "preview"))
    before = json.loads(folder.output("report").read_text())["lesion"]

    # The API's refine route: a queued status, then the decoder alone and a new export.
    write_status(JobStatus(stage="refine", refinements=1, timings_s=status.timings_s), folder.status_path)
    worker.submit_refine(folder.job_id, [ClickSpec(point_mm=tuple(before["centroid_mm"]), positive=False)])
    refined, seen = _watch(folder)
    assert refined.state is JobState.SUCCEEDED, refined.error
    assert "register" not in seen and refined.refinements == 1
    assert refined.timings_s["refine"] < status.timings_s["infer"] + status.timings_s["register"]
    after = json.loads(folder.output("report").read_text())["lesion"]
    assert after["volume_cc"] < before["volume_cc"]


def test_a_failing_stage_fails_the_job_and_stops_the_chain(worker: Dispatcher, orn_patient: Path) -> None:
    # A CE job on a CT follow-up: the API refuses this up front; here it reaches the worker.
    folder = new_job(worker.settings.storage_root, orn_patient, JobSpec(task="ce"), job_id="2" * 32)
    worker.submit(folder.job_id)
    status, _ = _watch(folder)
    assert status.state is JobState.FAILED
    assert status.error is not None and status.error.code == "invalid-study"
    assert "task 'ce'" in status.error.message
    time.sleep(1.0)  # had the chain gone on, the infer stage would have started by now
    assert read_status(folder.status_path).stage == "assemble"
    assert not any(folder.outputs.iterdir())


def test_the_broker_is_reported_reachable(worker: Dispatcher) -> None:
    assert worker.ping() is None


def test_an_unreachable_broker_is_reported(tmp_path: Path) -> None:
    dispatcher = Dispatcher(WorkerSettings(storage_root=tmp_path, broker_url="redis://127.0.0.1:1/0"))
    problem = dispatcher.ping(timeout=0.5)
    assert problem is not None and "broker" in problem
