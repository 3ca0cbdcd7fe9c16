"""The Celery application, configured in one class from the worker settings.

Production: Redis as broker and result backend; queues ``cpu`` (prepare, export, deliver) and ``gpu``
(infer, refine). Embedded (no broker configured): kombu's file-system transport under the
storage root and a SQLite result backend, so ``rtinjury serve`` needs no Redis and behaves the
same (one message per stage, same task names, same payloads).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Celery, signals

from worker.logs import install_phi_filter
from worker.settings import WorkerSettings

CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"
#: Stable task names: they are the wire contract between API, node and workers.
PREPARE = "rtinjury.prepare"
INFER = "rtinjury.infer"
EXPORT = "rtinjury.export"
REFINE = "rtinjury.refine"
DELIVER = "rtinjury.deliver"
TASK_QUEUES = {PREPARE: CPU_QUEUE, EXPORT: CPU_QUEUE, DELIVER: CPU_QUEUE, INFER: GPU_QUEUE, REFINE: GPU_QUEUE}
#: Retries of a send (and of a result-store write) before it fails: about 2 s in all.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


class CeleryConfig:
    """Every Celery setting of the service, in one place (read with ``config_from_object``)."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.broker_url, self.result_backend = _transport(settings)
        self.broker_transport_options = _transport_options(settings)
        # JSON only: payloads are job ids and click coordinates, never pickles.
        self.task_serializer = "json"
        self.result_serializer = "json"
        self.accept_content = ["json"]
        # A task is acknowledged after it ran: a worker killed mid-stage leaves the message to be
        # delivered again (stages are idempotent: they rewrite their files in the job folder).
        self.task_acks_late = True
        self.task_reject_on_worker_lost = True
        self.worker_prefetch_multiplier = 1
        self.task_soft_time_limit = settings.task_soft_time_limit_s
        self.task_time_limit = settings.task_soft_time_limit_s + 60
        self.task_default_queue = CPU_QUEUE
        self.task_routes = {name: {"queue": queue} for name, queue in TASK_QUEUES.items()}
        self.task_track_started = True
        self.result_extended = True
        self.result_expires = 7 * 24 * 3600
        self.broker_connection_retry_on_startup = True
        # A sender (the API) must fail fast when Redis is down: a client waits for its 503.
        self.task_publish_retry_policy = PUBLISH_RETRY_POLICY
        self.redis_socket_connect_timeout = 2
        self.result_backend_transport_options = {"retry_policy": PUBLISH_RETRY_POLICY}
        # Celery keeps the handlers an entry point set up and adds its own where there are none;
        # either way the PHI filter goes on every one of them (``_scrub_worker_logs``).
        self.worker_hijack_root_logger = False
        self.worker_send_task_events = True
        self.timezone = "UTC"


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _scrub_worker_logs(logger: logging.Logger | None = None, **_kwargs: Any) -> None:
    """Celery has configured a logger (root, then the task logger): put the PHI filter on its
    handlers and on every other handler there is (the multiprocessing logger's among them)."""
    install_phi_filter(*([logger] if logger is not None else []))


def create_celery_app(settings: WorkerSettings) -> Celery:
    app = Celery("rtinjury")
    app.config_from_object(CeleryConfig(settings))
    return app


def queue_folders(settings: WorkerSettings) -> dict[str, Path]:
    """The embedded transport's folders under the storage root."""
    root = settings.storage_root / "queue"
    return {"messages": root / "messages", "control": root / "control", "results": root / "results.db"}


def ensure_queue_folders(settings: WorkerSettings) -> None:
    """Create the embedded transport's folders (senders and workers call this before they start;
    merely importing the app creates nothing)."""
    if settings.embedded:
        folders = queue_folders(settings)
        folders["messages"].mkdir(parents=True, exist_ok=True)
        folders["control"].mkdir(parents=True, exist_ok=True)


def _transport(settings: WorkerSettings) -> tuple[str, str]:
    if settings.broker_url:
        return settings.broker_url, settings.result_backend or settings.broker_url
    folders = queue_folders(settings)
    backend = settings.result_backend or f"db+sqlite:///{folders['results'].resolve()}"
    return "filesystem://", backend


def _redelivery_options(visibility_timeout_s: int) -> dict[str, Any]:
    """Redis: a message not acknowledged within the visibility timeout is delivered again (a
    worker killed mid-stage; see ``broker_visibility_timeout_s``). Workers look for such messages
    when they start and then every interval × throttle seconds, 100 s by kombu's defaults: far
    too rare for a short timeout, so the look is made every quarter of the timeout (at most
    every 100 s), one cheap Redis query each time."""
    return {
        "visibility_timeout": visibility_timeout_s,
        "unacked_restore_interval": min(100, max(1, visibility_timeout_s // 4)),
        "unacked_restore_throttle": 1,
    }


def _transport_options(settings: WorkerSettings) -> dict[str, Any]:
    if settings.broker_url:
        return {**_redelivery_options(settings.visibility_timeout_s), "socket_connect_timeout": 2}
    folders = queue_folders(settings)
    messages = str(folders["messages"].resolve())
    return {
        "data_folder_in": messages,
        "data_folder_out": messages,
        "control_folder": str(folders["control"].resolve()),
        "store_processed": False,
        "polling_interval": 0.2,
    }
