"""Sending jobs to the workers: the one place that knows how a job becomes Celery messages.

The API and the DICOM node call :class:`Dispatcher`; it sends by task name, so the sending
process never imports the stages (nor torch).
"""

from __future__ import annotations

import threading

from celery import Celery, chain

from worker.celery.app import DELIVER, EXPORT, INFER, PREPARE, REFINE, create_celery_app, ensure_queue_folders
from worker.jobs.spec import ClickSpec
from worker.settings import WorkerSettings


class Dispatcher:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        ensure_queue_folders(settings)
        self.app: Celery = create_celery_app(settings)

    def submit(self, job_id: str, *, deliver: bool = False) -> str:
        """Queue the whole pipeline of ``job_id`` (then sending its results to the job's
        destinations when ``deliver``); returns the Celery id of the last task."""
        stages = [
            self.app.signature(PREPARE, args=(job_id,)),
            self.app.signature(INFER),
            self.app.signature(EXPORT),
        ]
        if deliver:
            stages.append(self.app.signature(DELIVER))
        return str(chain(*stages).apply_async().id)

    def submit_delivery(self, job_id: str) -> str:
        """Queue sending a succeeded job's results again (a resend)."""
        return str(self.app.signature(DELIVER, args=(job_id,)).apply_async().id)

    def submit_refine(self, job_id: str, clicks: list[ClickSpec]) -> str:
        """Queue a refinement of a finished job: the decoder with ``clicks``, then export."""
        payload = [click.model_dump(mode="json") for click in clicks]
        refinement = chain(self.app.signature(REFINE, args=(job_id, payload)), self.app.signature(EXPORT))
        # Refined results are not sent on their own: a reviewer resends them when satisfied.
        return str(refinement.apply_async().id)

    def ping(self, timeout: float = 2.0) -> str | None:
        """None when the broker takes connections; otherwise why not (for /readyz)."""
        try:
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=timeout)
        except Exception as error:  # any failure to connect means "not ready"
            return f"the broker does not answer ({type(error).__name__})"
        return None


_lock = threading.Lock()
_dispatchers: dict[tuple[str | None, str | None, str], Dispatcher] = {}


def get_dispatcher(settings: WorkerSettings) -> Dispatcher:
    """One dispatcher (and Celery app, with its connection pool) per broker configuration."""
    key = (settings.broker_url, settings.result_backend, str(settings.storage_root))
    with _lock:
        if key not in _dispatchers:
            _dispatchers[key] = Dispatcher(settings)
        return _dispatchers[key]
