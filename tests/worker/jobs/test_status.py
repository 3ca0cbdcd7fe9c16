"""status.json: what a reader sees before, during and after the stages."""

from __future__ import annotations

from pathlib import Path

from worker.jobs.folder import JobFolder
from worker.jobs.progress import StatusReporter
from worker.jobs.status import JobState, JobStatus, read_status, write_status


def test_a_job_without_status_reads_as_queued(tmp_path: Path) -> None:
    status = read_status(tmp_path / "status.json")
    assert status.state is JobState.QUEUED and status.progress == 0


def test_an_unreadable_status_reads_as_an_internal_failure(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text('{"state": "runn')
    status = read_status(path)
    assert status.state is JobState.FAILED
    assert status.error is not None and status.error.code == "internal-error"


def test_the_reporter_times_stages_across_processes(tmp_path: Path) -> None:
    folder = JobFolder(tmp_path / "job").create()
    write_status(JobStatus(), folder.status_path)
    first = StatusReporter(folder)
    first.stage("assemble")
    first.stage("read")
    first.warn(["a warning", "a warning"])
    first.end_stage()
    # The next stage runs in another process: it starts from the file.
    second = StatusReporter(folder)
    assert set(second.status.timings_s) == {"assemble", "read"}
    second.stage("infer")
    second.failed("model-error", "no weights")
    status = read_status(folder.status_path)
    assert status.state is JobState.FAILED and status.stage == "infer"
    assert status.error is not None and status.error.message == "no weights"
    assert status.warnings == ["a warning"]
    assert status.progress == 62
