"""Running an audit's items: which ones still need to run, and running them in parallel.

Local mode runs the pipeline in this process (one worker) or in worker processes (several;
each loads the network once). Celery mode turns each item into a job for the Celery workers and
watches its status. Either way a finished item is recorded at once, a failing one is recorded
with its reason, and nothing stops the batch but the user.

Ctrl-C: no new item starts; the running ones finish and are recorded (a second Ctrl-C abandons
them, and they run again next time). Celery jobs left running carry on in the workers and are
picked up, not queued again, by the next run.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import active_children, get_context
from typing import Any

from worker.audit.discovery import AuditItem, Discovery
from worker.audit.items import ItemSettings, collect_row, known_failure_row, prepare_job, run_local
from worker.audit.ledger import AuditPaths, FileDigests, Ledger, item_key
from worker.audit.rows import FAILED
from worker.errors import InputError
from worker.jobs.folder import JobFolder
from worker.jobs.status import read_status
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

RowCallback = Callable[[dict[str, Any]], None]
#: A Celery job whose status has not changed for this long is taken as lost and queued again.
STALE_JOB_S = 1800.0


@dataclass
class Plan:
    """Every item with its key, and which of them this run processes."""

    keyed: list[tuple[str, AuditItem]]
    to_run: list[tuple[str, AuditItem]] = field(default_factory=list)
    finished: int = 0
    failed_kept: int = 0

    @property
    def keys(self) -> list[str]:
        return [key for key, _ in self.keyed]


def make_plan(
    discovery: Discovery, ledger: Ledger, digests: FileDigests, fingerprint: str, *, retry_failed: bool
) -> Plan:
    """Key every item; skip those finished before (failed ones too, unless ``retry_failed``)."""
    plan = Plan(keyed=[(item_key(item, digests, fingerprint), item) for item in discovery.items])
    digests.save()
    for key, item in plan.keyed:
        record = ledger.record(key)
        if record is None or (record["row"].get("status") == FAILED and retry_failed):
            plan.to_run.append((key, item))
        elif record["row"].get("status") == FAILED:
            plan.failed_kept += 1
        else:
            plan.finished += 1
    return plan


@dataclass(frozen=True)
class RunContext:
    paths: AuditPaths
    item_settings: ItemSettings
    worker_settings: WorkerSettings
    run_id: str


class Interrupts:
    """Ctrl-C during a batch: the first lets what runs finish and starts nothing new (then the
    batch ends as interrupted); a second stops at once. Only the main thread can take signals;
    elsewhere (a test's thread, say) Ctrl-C keeps Python's default."""

    def __init__(self, on_first: Callable[[], None] | None = None) -> None:
        self.requested = False
        self._on_first = on_first
        self._previous: Any = None

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("interrupted: finishing what runs, starting nothing new; Ctrl-C again to stop at once")
        if self._on_first:
            self._on_first()

    def check(self) -> None:
        """End the batch as interrupted once the first Ctrl-C came."""
        if self.requested:
            raise KeyboardInterrupt


def run_local_items(
    items: list[tuple[str, AuditItem]], context: RunContext, workers: int, on_row: RowCallback
) -> None:
    """Run ``items`` here (``workers`` == 1) or in ``workers`` processes.

    Raises
    ------
    KeyboardInterrupt
        The user stopped the batch (what had finished is recorded).
    """
    needs_network = any(item.problem is None for _, item in items)
    if workers <= 1:
        if needs_network:
            _load_network(context.worker_settings)
        with Interrupts() as interrupts:
            for key, item in items:
                interrupts.check()
                on_row(_run_one(key, item, context))
            interrupts.check()
        return
    pool = ProcessPoolExecutor(
        max_workers=workers,
        # spawn: a fresh interpreter per worker, never a fork of a process holding threads.
        mp_context=get_context("spawn"),
        initializer=_start_worker,
        initargs=(context.worker_settings if needs_network else None,),
    )
    futures: list[Future[dict[str, Any]]] = [pool.submit(_run_one, key, item, context) for key, item in items]
    try:
        with Interrupts(on_first=lambda: _cancel(futures)) as interrupts:
            for future in as_completed(futures):
                if not future.cancelled():
                    on_row(future.result())
            interrupts.check()
    except KeyboardInterrupt:
        for child in active_children():  # a second Ctrl-C: abandon the running ones
            child.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _cancel(futures: list[Future[dict[str, Any]]]) -> None:
    for future in futures:
        future.cancel()  # only those not started yet: the running ones finish


def _run_one(key: str, item: AuditItem, context: RunContext) -> dict[str, Any]:
    return run_local(item, key, context.paths, context.item_settings, context.run_id, context.worker_settings)


def _start_worker(settings: WorkerSettings | None) -> None:
    # Ctrl-C reaches the whole process group; only the coordinator decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if settings is not None:
        _load_network(settings)


def _load_network(settings: WorkerSettings) -> None:
    """Load the network before the first follow-up, so that its time is not the first one's."""
    from worker.runtime import get_runtime

    get_runtime(settings)


def run_celery_items(
    items: list[tuple[str, AuditItem]],
    context: RunContext,
    window: int,
    on_row: RowCallback,
    *,
    poll_s: float = 1.0,
) -> None:
    """Queue ``items`` as jobs for the Celery workers, at most ``window`` at a time, and record
    each as it finishes.

    Raises
    ------
    worker.errors.InputError
        No broker is configured, or it does not answer.
    """
    dispatcher = celery_dispatcher(context.worker_settings)
    ledger = Ledger(context.paths)
    pending = deque(items)
    running: dict[str, tuple[AuditItem, JobFolder]] = {}
    with Interrupts(on_first=pending.clear) as interrupts:
        _watch_jobs(pending, running, context, window, ledger, dispatcher, on_row, poll_s)
        interrupts.check()


def celery_dispatcher(settings: WorkerSettings) -> Any:
    """The dispatcher to the configured broker, once it answers.

    Raises
    ------
    worker.errors.InputError
        No broker is configured, or it does not answer.
    """
    from worker.dispatch import get_dispatcher

    if not settings.broker_url:
        raise InputError("--celery needs RTINJURY_BROKER_URL: the broker (Redis) the workers listen on")
    dispatcher = get_dispatcher(settings)
    problem = dispatcher.ping()
    if problem:
        raise InputError(f"--celery: {problem}")
    return dispatcher


def _watch_jobs(
    pending: deque[tuple[str, AuditItem]],
    running: dict[str, tuple[AuditItem, JobFolder]],
    context: RunContext,
    window: int,
    ledger: Ledger,
    dispatcher: Any,
    on_row: RowCallback,
    poll_s: float,
) -> None:
    settings = context.worker_settings
    while pending or running:
        while pending and len(running) < window:
            key, item = pending.popleft()
            if item.problem is not None:
                _record(ledger, key, known_failure_row(item, key, context.run_id), on_row)
                continue
            folder = JobFolder.under(settings.storage_root, key[:32])
            if not _adopt(folder):
                prepare_job(item, folder, context.item_settings)
                dispatcher.submit(folder.job_id)
            running[key] = (item, folder)
        time.sleep(poll_s)
        for key, (item, folder) in list(running.items()):
            if read_status(folder.status_path).state.finished:
                _record(ledger, key, collect_row(item, key, folder, context.paths, context.run_id), on_row)
                folder.remove()
                del running[key]


def _adopt(folder: JobFolder) -> bool:
    """A job of this item queued by an interrupted run is still alive: watch it, do not queue it
    again (which would process the follow-up twice)."""
    if not folder.exists() or not folder.spec_path.is_file():
        return False
    if not folder.status_path.is_file():
        return False
    status = read_status(folder.status_path)
    if status.state.finished:
        return True
    return time.time() - status.updated_at.timestamp() < STALE_JOB_S


def _record(ledger: Ledger, key: str, row: dict[str, Any], on_row: RowCallback) -> None:
    ledger.write(key, row)
    on_row(row)
