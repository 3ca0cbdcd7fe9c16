"""How a stage task reports failures: injected faults, the real task wrapper and status file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded

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
