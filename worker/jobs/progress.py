"""Progress of a running job: which stage, how far, how long each stage took.

A :class:`StatusReporter` keeps ``status.json`` current as the stages run; the Celery tasks add
an ``on_change`` hook that mirrors it into Celery's task state (for Flower and the like).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from worker.jobs.folder import JobFolder
from worker.jobs.status import (
    STAGE_PROGRESS,
    Delivery,
    JobError,
    JobState,
    JobStatus,
    read_status,
    write_status,
)


class StatusReporter:
    def __init__(self, folder: JobFolder, on_change: Callable[[JobStatus], None] | None = None) -> None:
        self.folder = folder
        self.status = read_status(folder.status_path)
        self._on_change = on_change
        self._stage_started: float | None = None

    def stage(self, name: str) -> None:
        """``name`` starts now (the previous stage, if any, has finished)."""
        self.end_stage()
        self.status.state = JobState.RUNNING
        self.status.stage = name
        self.status.progress = max(self.status.progress, STAGE_PROGRESS.get(name, self.status.progress))
        self.status.error = None
        self.status.record("started", name)
        self._stage_started = time.perf_counter()
        self._save()

    def end_stage(self) -> None:
        """The current stage has finished: its time is recorded (and saved: the next stage may
        run in another process)."""
        if self._stage_started is not None and self.status.stage:
            elapsed = time.perf_counter() - self._stage_started
            self.status.timings_s[self.status.stage] = round(elapsed, 3)
            self._stage_started = None
            self._save()

    def warn(self, warnings: list[str]) -> None:
        self.status.warnings = list(dict.fromkeys([*self.status.warnings, *warnings]))
        self._save()

    def record_delivery(self, delivery: Delivery) -> None:
        """The latest attempt at one destination replaces the earlier one; a failure is a warning
        too (the job's results are fine, they just did not arrive)."""
        others = [d for d in self.status.deliveries if d.destination != delivery.destination]
        self.status.deliveries = [*others, delivery]
        if delivery.state == "failed":
            self.status.warnings.append(f"results not delivered to {delivery.destination}: {delivery.error}")
        self._save()

    def succeeded(self) -> None:
        self.end_stage()
        self.status.state = JobState.SUCCEEDED
        self.status.stage = None
        self.status.progress = 100
        self.status.record("succeeded")
        self._save()

    def failed(self, code: str, message: str) -> None:
        self.end_stage()
        self.status.state = JobState.FAILED
        self.status.error = JobError(code=code, message=message)
        self.status.record("failed", self.status.stage)
        self._save()

    def duplicate_ignored(self, stage: str) -> None:
        """A message of ``stage`` came for this job after it had finished: noted, not run."""
        self.status.record("duplicate-ignored", stage)
        self._save()

    def _save(self) -> None:
        write_status(self.status, self.folder.status_path)
        if self._on_change:
            self._on_change(self.status)
