"""Where a job stands (``status.json``): state, stage, progress, timings, warnings, error.

The worker that runs a stage writes it (whole-file replace, so a reader never sees half of
one); the API reads it into the job record. Stages run in a fixed order and each owns a fixed
share of the progress bar, roughly its share of the time on a CPU worker.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from models.files import write_atomically
from worker.jobs.storage import DISK_FULL_ERRNOS


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


#: The history keeps this many events (a job refined many times drops its oldest ones).
HISTORY_LENGTH = 100


#: What a history line records: a stage started, the job ended, or a stage message arrived again
#: for a job that had already finished and was ignored (a broker's late duplicate).
EventKind = Literal["started", "succeeded", "failed", "duplicate-ignored"]


class StatusEvent(BaseModel):
    """One line of a job's history."""

    event: EventKind
    stage: str | None = None
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
    #: What happened, in order: shows a stage that ran again after a worker was lost.
    history: list[StatusEvent] = Field(default_factory=list)
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def record(self, event: EventKind, stage: str | None = None) -> None:
        self.history = [*self.history, StatusEvent(event=event, stage=stage)][-HISTORY_LENGTH:]


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
    document = status.model_dump_json(indent=2).encode("utf-8")
    try:
        write_atomically(path, document)
    except OSError as error:
        if error.errno not in DISK_FULL_ERRNOS or not path.is_file():
            raise
        # A full disk has no room for the new copy an atomic write needs, but the old file's
        # blocks can take the new status: without it a job stopped by the full disk would read
        # as running for ever. A reader may see half a file meanwhile (read as unreadable).
        fitted = _fitted(status, room=path.stat().st_blocks * 512)
        if fitted is None:
            raise
        _overwrite(path, fitted)


def _fitted(status: JobStatus, room: int) -> bytes | None:
    """``status`` as a document of at most ``room`` bytes (writing past the old file's blocks
    would need new ones, and fail half-way), its oldest history dropped if it must; ``None`` when
    even without history it does not fit."""
    history = list(status.history)
    while True:
        document = status.model_copy(update={"history": history}).model_dump_json(indent=2).encode("utf-8")
        if len(document) <= room:
            return document
        if not history:
            return None
        history = history[1:]


def _overwrite(path: Path, document: bytes) -> None:
    handle = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(handle, document, 0)
        os.ftruncate(handle, len(document))
        os.fsync(handle)
    finally:
        os.close(handle)
