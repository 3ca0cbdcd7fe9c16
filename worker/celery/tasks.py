"""The Celery tasks: one per stage, each a thin wrapper around :mod:`worker.jobs.pipeline`.

Payloads are job ids (and, for a refinement, click coordinates): everything else is in the job
folder under the shared storage root. A task reports progress into the job's ``status.json``
and into Celery's own task state. Input and model errors fail the job with their code and
message and are never retried; only transient faults (a storage or connection hiccup) are.

Start a worker with ``rtinjury worker --queues cpu`` or ``--queues gpu`` (see worker_cmd).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from worker.celery.app import DELIVER, EXPORT, INFER, PREPARE, REFINE, create_celery_app
from worker.jobs.folder import JobFolder
from worker.jobs.progress import StatusReporter
from worker.jobs.spec import ClickSpec
from worker.jobs.status import JobState, JobStatus, read_status, write_status
from worker.settings import WorkerSettings, get_worker_settings

logger = logging.getLogger(__name__)

#: Faults that may pass if the stage runs again a little later.
TRANSIENT_ERRORS = (ConnectionError, TimeoutError, BlockingIOError, InterruptedError)

app = create_celery_app(get_worker_settings())
# highdicom logs every attribute it copies, with UIDs, at INFO: not for a worker's log.
logging.getLogger("highdicom").setLevel(logging.WARNING)


class JobStageTask(Task):
    """Retries transient faults only, with exponential back-off; remembers the messages it ran."""

    autoretry_for = TRANSIENT_ERRORS
    retry_backoff = 2
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = 3

    def on_success(self, retval: Any, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # Celery calls this once the next stage's message is sent: a copy of this message that
        # the broker hands out again (its acknowledgement was lost) can be dropped from now on.
        _folder(str(retval)).mark_message_done(task_id)


StageBody = Callable[[JobFolder, WorkerSettings, StatusReporter], None]


def run_stage(task: Task, job_id: str, body: StageBody, *, once: bool = True) -> str:
    """Run one stage of ``job_id``; on failure the job's status says why, then the task fails
    (which stops the chain: later stages never run on a failed job).

    Acknowledgements are late (a worker lost mid-stage leaves its message to run again), so
    the broker may hand out a message again that did run: after a Redis restart, or when a stage
    outlasts the visibility timeout. Such a copy is ignored, and so is, with ``once`` (every
    stage but delivery, which runs on finished jobs), any stage message of a finished job: the
    job's results stay those it finished with, and nothing chained after the copy runs.
    """
    from worker.jobs.pipeline import describe_failure

    settings = get_worker_settings()
    folder = JobFolder.under(settings.storage_root, job_id)
    reporter = StatusReporter(folder, on_change=_celery_progress(task, job_id))
    _ignore_if_duplicate(task, folder, reporter, once)
    try:
        body(folder, settings, reporter)
    except TRANSIENT_ERRORS:
        if task.request.retries >= task.max_retries:
            reporter.failed("transient-fault", "a storage or connection fault persisted after retries")
        raise
    except SoftTimeLimitExceeded:
        limit = settings.task_soft_time_limit_s
        reporter.failed("time-limit", f"the {reporter.status.stage} stage ran longer than {limit} s")
        raise
    except Exception as error:
        code, message = describe_failure(error)
        # The job id only: a stage's own messages carry no patient data, but we log none anyway.
        logger.warning("job %s failed in %s: %s", job_id, reporter.status.stage, code)
        reporter.failed(code, message)
        raise
    return job_id


def _ignore_if_duplicate(task: Task, folder: JobFolder, reporter: StatusReporter, once: bool) -> None:
    """Raise ``Ignore`` (acknowledged, no result, the chain goes no further) for a message the
    job has no use for: a copy of one that ran already, or a pipeline stage's after the job
    finished. Only a finished job's history notes it: a running job's status is its stage's."""
    again = bool(task.request.id) and folder.message_done(task.request.id)
    finished = reporter.status.state.finished
    if not (again or (once and finished)):
        return
    stage = task.name.removeprefix("rtinjury.")
    logger.warning("job %s: a %s message that came again was ignored", folder.job_id, stage)
    if finished:
        reporter.duplicate_ignored(stage)
    raise Ignore()


def _celery_progress(task: Task, job_id: str) -> Callable[[JobStatus], None]:
    def report(status: JobStatus) -> None:
        if not task.request.id:  # called directly (not through a worker) there is no task state
            return
        meta = {"job_id": job_id, "stage": status.stage, "progress": status.progress}
        try:
            task.update_state(state="PROGRESS", meta=meta)
        except Exception as error:
            # A mirror for Flower and the like (status.json is the job's truth): a result
            # backend that is down (Redis restarting) must not fail the stage.
            kind = type(error).__name__
            logger.warning("job %s: progress not mirrored to the result backend (%s)", job_id, kind)

    return report


@app.task(name=PREPARE, bind=True, base=JobStageTask)
def prepare_task(self: Task, job_id: str) -> str:
    from worker.jobs import pipeline

    return run_stage(self, job_id, pipeline.prepare)


@app.task(name=INFER, bind=True, base=JobStageTask)
def infer_task(self: Task, job_id: str) -> str:
    from worker.jobs import pipeline
    from worker.runtime import get_runtime

    def body(folder: JobFolder, settings: WorkerSettings, reporter: StatusReporter) -> None:
        pipeline.infer(folder, get_runtime(settings), reporter)

    return run_stage(self, job_id, body)


@app.task(name=REFINE, bind=True, base=JobStageTask)
def refine_task(self: Task, job_id: str, clicks: list[dict[str, Any]]) -> str:
    from worker.jobs import pipeline
    from worker.runtime import get_runtime

    parsed = [ClickSpec.model_validate(c) for c in clicks]

    def body(folder: JobFolder, settings: WorkerSettings, reporter: StatusReporter) -> None:
        pipeline.refine(folder, get_runtime(settings), parsed, reporter)

    try:
        return run_stage(self, job_id, body)
    except Ignore:  # a duplicate message: this run changed nothing, and nothing is to be kept
        raise
    except Exception:
        status = read_status(_folder(job_id).status_path)
        _keep_succeeded(job_id, f"refinement {status.refinements}")
        raise


def _keep_succeeded(job_id: str, what: str) -> None:
    """A refinement or a delivery that fails leaves a succeeded job succeeded, with the outputs
    it had (nothing was replaced) and a warning that says what failed and why."""
    folder = _folder(job_id)
    status = read_status(folder.status_path)
    if status.state is not JobState.FAILED or status.error is None:
        return  # a transient fault that will be retried
    status.warnings.append(
        f"{what} failed ({status.error.code}: {status.error.message}); the job's results are unchanged"
    )
    status.state, status.stage, status.progress, status.error = JobState.SUCCEEDED, None, 100, None
    write_status(status, folder.status_path)


def _folder(job_id: str) -> JobFolder:
    return JobFolder.under(get_worker_settings().storage_root, job_id)


@app.task(name=EXPORT, bind=True, base=JobStageTask)
def export_task(self: Task, job_id: str) -> str:
    from worker.jobs import pipeline

    def body(folder: JobFolder, settings: WorkerSettings, reporter: StatusReporter) -> None:
        pipeline.export(folder, settings, reporter)
        reporter.succeeded()

    return run_stage(self, job_id, body)


@app.task(name=DELIVER, bind=True, base=JobStageTask)
def deliver_task(self: Task, job_id: str) -> str:
    """Send a succeeded job's DICOM results to its destinations (after export, or on request)."""
    from worker.jobs import pipeline

    try:
        return run_stage(self, job_id, pipeline.deliver, once=False)
    except Ignore:  # a duplicate message: this run changed nothing, and nothing is to be kept
        raise
    except Exception:
        _keep_succeeded(job_id, "delivery")
        raise
