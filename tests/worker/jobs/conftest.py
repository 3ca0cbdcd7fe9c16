"""Job folders as the API leaves them, for the job and Celery tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from worker.jobs.folder import JobFolder
from worker.jobs.spec import JobSpec, write_spec
from worker.jobs.status import JobStatus, write_status


def new_job(
    storage_root: Path, patient: Path, spec: JobSpec | None = None, job_id: str = "0" * 32
) -> JobFolder:
    """A job folder as the API leaves it: inputs copied in, spec written, status queued."""
    folder = JobFolder.under(storage_root, job_id).create()
    shutil.copytree(patient, folder.inputs, dirs_exist_ok=True)
    write_spec(spec or JobSpec(), folder.spec_path)
    write_status(JobStatus(), folder.status_path)
    return folder
