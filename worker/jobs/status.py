"""Where a job stands (``status.json``): state, stage, progress, timings, warnings, error.

The worker that runs a stage writes it (whole-file replace, so a reader never sees half of
one); the API reads it into the job record. Stages run in a fixed order and each owns a fixed
share of the progress bar, roughly its share of the time on a CPU worker.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from models.files import write_atomically


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED)


#: Stages in the order they run, with the progress (%) reached when each one starts.
STAGE_PROGRESS = {
    "assemble": 2,
    "read": 5,
    "register": 10,
    "dose": 55,
    "prompts": 60,
    "infer": 62,
    "export": 85,
}
#: The refine path: the decoder on the cached embedding, then export again.
REFINE_STAGES = ("refine", "export")
STAGES = tuple(STAGE_PROGRESS)


class JobError(BaseModel):
    """Why a job failed: a stable code (as in problem types) and a message without patient data."""

    code: str
    message: str


class Delivery(BaseModel):
    """How sending the results to one destination went."""

    destination: str
    #: "sent" (every object stored), "failed" (after every attempt), or "sending".
    state: str
    attempts: int = 0
    sent: int = 0
    failed: int = 0
    error: str | None = None
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class JobStatus(BaseModel):
    state: JobState = JobState.QUEUED
    stage: str | None = None
    progress: int = Field(default=0, ge=0, le=100)
    #: Seconds per finished stage.
    timings_s: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    error: JobError | None = None
    #: Set while a refinement runs or after it finished.
    refinements: int = 0
    #: Results sent to DICOM destinations, latest attempt per destination.
    deliveries: list[Delivery] = Field(default_factory=list)
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def read_status(path: Path) -> JobStatus:
    """The status in ``path``; a queued status when the worker has not written one yet."""
    try:
        return JobStatus.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return JobStatus()
    except (OSError, ValueError, ValidationError):
        # A status we cannot parse is a fault of ours, not of the user's input.
        return JobStatus(
            state=JobState.FAILED, error=JobError(code="internal-error", message="unreadable job status")
        )


def write_status(status: JobStatus, path: Path) -> None:
    status.updated_at = datetime.now(UTC)
    write_atomically(path, status.model_dump_json(indent=2).encode("utf-8"))
