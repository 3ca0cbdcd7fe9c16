"""How a stage task reports failures: injected faults, the real task wrapper and status file."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from worker.celery.tasks import StageBody
from worker.errors import DoseError
from worker.jobs.folder import JobFolder
from worker.jobs.progress import StatusReporter
from worker.jobs.spec import JobSpec, write_spec
from worker.jobs.status import JobState, JobStatus, read_status, write_status
from worker.settings import WorkerSettings, get_worker_settings

JOB_ID = "4" * 32


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobFolder]:
    monkeypatch.setenv("RTINJURY_STORAGE_ROOT", str(tmp_path))
    monkeypatch.delenv("RTINJURY_BROKER_URL", raising=False)
    get_worker_settings.cache_clear()
    job = JobFolder.under(tmp_path, JOB_ID).create()
    write_status(JobStatus(), job.status_path)
    yield job
    get_worker_settings.cache_clear()


def _stage_raising(error: BaseException) -> StageBody:
    def body(folder: JobFolder, settings: WorkerSettings, reporter: StatusReporter) -> None:
        reporter.stage("register")
        raise error

    return body


def _run(error: BaseException) -> None:
    from worker.celery.tasks import prepare_task, run_stage

    run_stage(prepare_task, JOB_ID, _stage_raising(error))


def test_an_input_error_fails_the_job_with_its_code_and_message(folder: JobFolder) -> None:
    with pytest.raises(DoseError):
        _run(DoseError("the RTDOSE has no DoseGridScaling"))
    status = read_status(folder.status_path)
    assert status.state is JobState.FAILED and status.stage == "register"
    assert status.error is not None
    assert (status.error.code, status.error.message) == ("invalid-dose", "the RTDOSE has no DoseGridScaling")


def test_an_unexpected_error_is_reported_without_its_details(folder: JobFolder) -> None:
    with pytest.raises(ValueError):
        _run(ValueError("/data/jobs/.../DOE^JOHN/ct-001.dcm broke"))
    status = read_status(folder.status_path)
    assert status.error is not None and status.error.code == "internal-error"
    assert "DOE" not in status.error.message and "ValueError" in status.error.message


def test_the_soft_time_limit_fails_the_job_clearly(folder: JobFolder) -> None:
    with pytest.raises(SoftTimeLimitExceeded):
        _run(SoftTimeLimitExceeded())
    status = read_status(folder.status_path)
    assert status.error is not None and status.error.code == "time-limit"
    assert "register stage ran longer than" in status.error.message


def test_a_transient_fault_leaves_the_job_running_for_the_retry(folder: JobFolder) -> None:
    with pytest.raises(ConnectionError):
        _run(ConnectionError("storage went away"))
    status = read_status(folder.status_path)
    assert status.state is JobState.RUNNING and status.error is None


def test_the_tasks_retry_transient_faults_only() -> None:
    from worker.celery.tasks import TRANSIENT_ERRORS, export_task, infer_task, prepare_task, refine_task

    for task in (prepare_task, infer_task, export_task, refine_task):
        assert tuple(task.autoretry_for) == TRANSIENT_ERRORS
        assert task.max_retries == 3 and task.acks_late
    assert not any(issubclass(DoseError, kind) for kind in TRANSIENT_ERRORS)


def test_a_failed_refinement_keeps_the_job_and_its_results(folder: JobFolder) -> None:
    from worker.celery.tasks import refine_task

    write_spec(JobSpec(), folder.spec_path)
    write_status(JobStatus(stage="refine", refinements=2, timings_s={"infer": 1.0}), folder.status_path)
    folder.output("seg").write_bytes(b"the SEG from before")
    # No embedding was saved for this job: the refinement cannot run.
    with pytest.raises(FileNotFoundError):
        refine_task.run(JOB_ID, [{"point_mm": [0, 0, 0], "positive": True}])
    status = read_status(folder.status_path)
    assert status.state is JobState.SUCCEEDED and status.error is None
    assert status.refinements == 2 and status.timings_s["infer"] == 1.0
    assert status.warnings == [
        "refinement 2 failed (internal-error: the job failed in the worker (FileNotFoundError); "
        "see the worker log); the job's results are unchanged"
    ]
    assert folder.output("seg").read_bytes() == b"the SEG from before"


def _run_as_message(task: Any, body: StageBody, message_id: str, *, once: bool = True) -> None:
    """``run_stage`` as a worker runs it: with the id of the message it came in."""
    from worker.celery.tasks import run_stage

    task.push_request(id=message_id)
    try:
        run_stage(task, JOB_ID, body, once=once)
    finally:
        task.pop_request()


def _must_not_run(folder: JobFolder, settings: WorkerSettings, reporter: StatusReporter) -> None:
    raise AssertionError("the stage ran")


def test_a_message_that_ran_already_is_ignored(folder: JobFolder) -> None:
    from worker.celery.tasks import infer_task

    write_status(JobStatus(state=JobState.RUNNING, stage="export"), folder.status_path)
    folder.mark_message_done("7c9e6679-7425-40de-944b-e07fc1f90ae7")
    with pytest.raises(Ignore):
        _run_as_message(infer_task, _must_not_run, "7c9e6679-7425-40de-944b-e07fc1f90ae7")
    status = read_status(folder.status_path)
    # A running job's status belongs to its stage: nothing is written for the copy.
    assert status.stage == "export" and status.history == []


def test_a_pipeline_message_for_a_finished_job_is_ignored_and_noted(folder: JobFolder) -> None:
    from worker.celery.tasks import prepare_task

    write_status(JobStatus(state=JobState.SUCCEEDED, progress=100), folder.status_path)
    with pytest.raises(Ignore):
        _run_as_message(prepare_task, _must_not_run, "e0f7c3a2-1b7d-4a55-9c1e-2f5a8f3b9d10")
    status = read_status(folder.status_path)
    assert status.state is JobState.SUCCEEDED
    assert [(e.event, e.stage) for e in status.history] == [("duplicate-ignored", "prepare")]


def test_a_delivery_runs_on_a_finished_job(folder: JobFolder) -> None:
    from worker.celery.tasks import deliver_task

    write_status(JobStatus(state=JobState.SUCCEEDED, progress=100), folder.status_path)
    ran: list[str] = []
    message_id = "3f1d2c4b-5a6e-4f70-8b9c-0d1e2f3a4b5c"
    _run_as_message(deliver_task, lambda *_: ran.append("deliver"), message_id, once=False)
    assert ran == ["deliver"]


def test_a_stage_that_ran_marks_its_message(folder: JobFolder) -> None:
    from worker.celery.tasks import export_task

    export_task.on_success(JOB_ID, "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9", (JOB_ID,), {})
    assert folder.message_done("0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9")
    assert not folder.message_done("../../status.json")


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("ITK ERROR: MetaImageIO: File cannot be written\nReason: No space left on device"),
    ],
    ids=["oserror", "itk"],
)
def test_a_full_disk_fails_the_job_as_storage_full_without_retry(folder: JobFolder, error: Exception) -> None:
    from worker.celery.tasks import TRANSIENT_ERRORS

    assert not isinstance(error, TRANSIENT_ERRORS)  # it does not pass by itself: no retry
    with pytest.raises(type(error)):
        _run(error)
    status = read_status(folder.status_path)
    assert status.state is JobState.FAILED and status.error is not None
    assert status.error.code == "storage-full" and "storage root is full" in status.error.message
    assert [e.event for e in status.history] == ["started", "failed"]


def test_the_result_backend_down_does_not_fail_the_stage(
    folder: JobFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.celery.tasks import prepare_task

    def backend_down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Redis is restarting")

    monkeypatch.setattr(prepare_task, "update_state", backend_down)  # failure injection

    def body(folder: JobFolder, settings: WorkerSettings, reporter: StatusReporter) -> None:
        reporter.stage("assemble")
        reporter.end_stage()

    _run_as_message(prepare_task, body, "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d")
    status = read_status(folder.status_path)
    assert status.state is JobState.RUNNING and "assemble" in status.timings_s
