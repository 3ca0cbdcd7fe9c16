"""status.json: what a reader sees before, during and after the stages."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from worker.jobs.folder import JobFolder
from worker.jobs.progress import StatusReporter
from worker.jobs.status import HISTORY_LENGTH, JobError, JobState, JobStatus, read_status, write_status


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


def test_the_history_shows_every_start_and_the_end(tmp_path: Path) -> None:
    folder = JobFolder(tmp_path / "job").create()
    reporter = StatusReporter(folder)
    reporter.stage("infer")
    reporter.stage("infer")  # the same stage again: a worker was lost and it ran once more
    reporter.stage("export")
    reporter.succeeded()
    history = read_status(folder.status_path).history
    assert [(e.event, e.stage) for e in history] == [
        ("started", "infer"),
        ("started", "infer"),
        ("started", "export"),
        ("succeeded", None),
    ]


def test_the_history_keeps_the_latest_events(tmp_path: Path) -> None:
    status = JobStatus()
    for number in range(HISTORY_LENGTH + 5):
        status.record("started", f"stage-{number}")
    assert len(status.history) == HISTORY_LENGTH and status.history[-1].stage == f"stage-{HISTORY_LENGTH + 4}"


def test_on_a_full_disk_the_status_is_rewritten_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "status.json"
    write_status(JobStatus(state=JobState.RUNNING, stage="register"), path)

    def disk_full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("worker.jobs.status.write_atomically", disk_full)  # failure injection
    write_status(JobStatus(state=JobState.FAILED, error=JobError(code="storage-full", message="full")), path)
    status = read_status(path)
    assert status.state is JobState.FAILED
    assert status.error is not None and status.error.code == "storage-full"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_on_a_full_disk_a_status_larger_than_the_old_file_drops_its_oldest_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writing past the old file's blocks would need new ones: a torn status, not a failed job.
    path = tmp_path / "status.json"
    write_status(JobStatus(state=JobState.RUNNING, stage="register"), path)
    room = path.stat().st_blocks * 512
    grown = JobStatus(state=JobState.FAILED, error=JobError(code="storage-full", message="full"))
    for number in range(HISTORY_LENGTH):
        grown.record("started", f"stage-{number}-" + "x" * (room // 8))
    assert len(grown.model_dump_json(indent=2)) > room
    monkeypatch.setattr("worker.jobs.status.write_atomically", _disk_full)  # failure injection
    write_status(grown, path)
    status = read_status(path)
    assert status.state is JobState.FAILED and path.stat().st_size <= room
    assert 0 < len(status.history) < len(grown.history)
    assert status.history == grown.history[-len(status.history) :]  # the latest kept


def _disk_full(*args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_other_write_errors_are_not_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "status.json"
    write_status(JobStatus(), path)

    def read_only(*args: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("worker.jobs.status.write_atomically", read_only)  # failure injection
    with pytest.raises(OSError):
        write_status(JobStatus(state=JobState.RUNNING), path)
