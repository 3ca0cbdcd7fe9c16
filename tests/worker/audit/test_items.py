"""Rows of finished jobs, when the job failed and when its results cannot be kept."""

from __future__ import annotations

from pathlib import Path

from worker.audit.discovery import AuditItem
from worker.audit.items import collect_row
from worker.audit.ledger import AuditPaths
from worker.audit.rows import COLUMN_NAMES
from worker.jobs.folder import JobFolder
from worker.jobs.status import JobError, JobState, JobStatus, write_status

ITEM = AuditItem("P1", (), task="orn", followup_series_uid="1.2.3", followup_date="2020-01-02")


def _job(tmp_path: Path, status: JobStatus) -> tuple[JobFolder, AuditPaths]:
    paths = AuditPaths(tmp_path / "audit").create()
    folder = JobFolder(paths.work / ("a" * 32)).create()
    write_status(status, folder.status_path)
    return folder, paths


def test_a_failed_job_gives_its_stage_code_and_reason(tmp_path: Path) -> None:
    status = JobStatus(
        state=JobState.FAILED,
        stage="register",
        timings_s={"assemble": 0.2, "read": 0.5},
        error=JobError(code="registration-failed", message="the images do not overlap"),
    )
    folder, paths = _job(tmp_path, status)
    row = collect_row(ITEM, "b" * 64, folder, paths, "run-1")
    assert tuple(row) == COLUMN_NAMES
    assert (row["status"], row["failed_stage"], row["error_code"]) == (
        "failed",
        "register",
        "registration-failed",
    )
    assert row["error"] == "the images do not overlap" and row["seconds_read"] == 0.5
    assert row["key"] == "b" * 16 and row["patient_alias"] == ITEM.patient_alias and row["patient_id"] is None


def test_results_that_cannot_be_kept_are_a_failed_row_not_a_crash(tmp_path: Path) -> None:
    folder, paths = _job(tmp_path, JobStatus(state=JobState.SUCCEEDED))  # but no report was written
    row = collect_row(ITEM, "c" * 64, folder, paths, "run-1")
    assert (row["status"], row["failed_stage"], row["error_code"]) == ("failed", "collect", "internal-error")
    assert "FileNotFoundError" in row["error"] and row["lesion_volume_cc"] is None
