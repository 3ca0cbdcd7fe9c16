"""The jobs service: what the routes do, over the job folder, the job record and the queue.

The job folder (``worker.jobs``) is the truth about a job's progress: the worker writes its
``status.json``. The record in SQL is what the API lists and filters; it is refreshed from the
folder whenever an unfinished job is looked at, and frozen once the job has finished.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from service.api.errors import ServiceProblem
from service.config import Settings
from service.db import JobRecord
from service.metrics import ServiceMetrics
from service.schemas import DeliveryPublic, JobCreateForm, JobErrorPublic, JobLinks, JobPublic
from service.uploads import FILES_FIELD, UploadLimits, check_declared_length, receive_upload, unpack_archives
from worker.jobs.folder import JobFolder
from worker.jobs.selection import select_case
from worker.jobs.spec import ClickSpec, ClinicalFields, JobOptions, JobSpec, Task, write_spec
from worker.jobs.status import JobState, JobStatus, read_status, write_status
from worker.jobs.storage import is_disk_full
from worker.stages.export.files import MEDIA_TYPES, OUTPUT_FILES

log = logging.getLogger(__name__)

JOBS_PATH = "/v1/jobs"
M = TypeVar("M", bound=BaseModel)


class JobQueue(Protocol):
    """The worker side's dispatcher as the API uses it (``worker.dispatch.Dispatcher``)."""

    def submit(self, job_id: str, *, deliver: bool = False) -> str: ...

    def submit_delivery(self, job_id: str) -> str: ...

    def submit_refine(self, job_id: str, clicks: list[ClickSpec]) -> str: ...

    def ping(self, timeout: float = 2.0) -> str | None: ...


# --- creating a job -------------------------------------------------------------------------


async def create_job(
    headers: Headers,
    stream: AsyncIterator[bytes],
    session: Session,
    settings: Settings,
    queue: JobQueue,
    owner: str,
) -> JobRecord:
    """Receive an upload, check that it makes one case, record the job and queue it.

    Nothing half-made is left behind: any failure removes the job folder (and the record).

    Raises
    ------
    ServiceProblem
        413/415/400 for the upload itself, 503 when the queue does not take the job, 507 when
        the storage root is full.
    RequestValidationError
        Form fields that do not make a ``JobSpec``.
    worker.errors.InputError
        The files do not make one case (a missing dose, a second patient …): a 422 problem.
    """
    limits = UploadLimits(max_bytes=settings.max_upload_bytes, max_files=settings.max_upload_files)
    check_declared_length(headers, limits)
    folder = JobFolder.under(settings.storage_root, uuid.uuid4().hex).create()
    try:
        upload = await receive_upload(headers, stream, folder.inputs, limits)
        if upload.unexpected_file_fields or not upload.files:
            raise _files_error(upload.unexpected_file_fields)
        spec = spec_from_form(upload.fields)
        return await run_in_threadpool(_admit, session, settings, queue, folder, spec, owner)
    except BaseException as error:
        folder.remove()
        if is_disk_full(error):
            log.warning("upload refused: the storage root is full")
            raise ServiceProblem(
                "storage-full",
                "the storage root is full: nothing of the upload was kept; send it again later",
            ) from None
        raise


def _files_error(unexpected: list[str]) -> RequestValidationError:
    if unexpected:
        errors = [_field_error(name, f"files go in the '{FILES_FIELD}' field") for name in unexpected]
    else:
        errors = [_field_error(FILES_FIELD, "at least one file (DICOM files or one zip) is required")]
    return RequestValidationError(errors)


def _field_error(name: str, message: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": ("body", name), "msg": message, "type": kind}


def spec_from_form(fields: dict[str, list[str]]) -> JobSpec:
    """The job's spec from the form fields (``clinical`` and ``options`` are JSON objects).

    Raises
    ------
    RequestValidationError
        With one entry per bad field, located as ``body.<field>…``.
    """
    repeated = [name for name, values in fields.items() if len(values) > 1]
    if repeated:
        raise RequestValidationError([_field_error(name, "given more than once") for name in repeated])
    values = {name: value[0] for name, value in fields.items()}
    form = _validated(JobCreateForm, {k: v for k, v in values.items() if v != ""}, ())
    clinical = _json_object(form.clinical, "clinical", ClinicalFields)
    options = _json_object(form.options, "options", JobOptions)
    spec_fields: dict[str, Any] = {
        "task": form.task,
        "clinical_text": form.clinical_text,
        "clinical": clinical or ClinicalFields(),
        "options": options or JobOptions(),
        "followup_series_uid": form.followup_series_uid,
    }
    if form.tau is not None:
        spec_fields["tau"] = form.tau
    return _validated(JobSpec, spec_fields, ())


def _json_object(text: str | None, name: str, model: type[M]) -> M | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise RequestValidationError([_field_error(name, "is not valid JSON", "json_invalid")]) from None
    return _validated(model, value, (name,))


def _validated(model: type[M], value: Any, where: tuple[str, ...]) -> M:
    try:
        return model.model_validate(value)
    except ValidationError as error:
        errors = [{**e, "loc": ("body", *where, *e["loc"])} for e in error.errors(include_input=False)]
        raise RequestValidationError(errors) from None


def _admit(
    session: Session, settings: Settings, queue: JobQueue, folder: JobFolder, spec: JobSpec, owner: str
) -> JobRecord:
    """Unpack, then admit (blocking work: runs in a worker thread)."""
    unpack_archives(sorted(folder.inputs.glob("upload-*.dcm")), settings.zip_limits)
    return admit_job(session, settings, queue, folder, spec, owner)


def admit_job(
    session: Session,
    settings: Settings,
    queue: JobQueue,
    folder: JobFolder,
    spec: JobSpec,
    owner: str,
    *,
    job_key: str | None = None,
    source: str = "api",
) -> JobRecord:
    """Check that the folder's inputs make the case ``spec`` names, record the job and queue it
    (with delivery when the spec has destinations). The API and the DICOM node both come here.

    Raises
    ------
    worker.errors.InputError
        The inputs do not make one case.
    ServiceProblem
        ``broker-unavailable``: the queue did not take the job (the record is removed).
    """
    write_spec(spec, folder.spec_path)
    selected = select_case(folder, spec, settings.role_rules)
    status = JobStatus(warnings=selected.notes)
    write_status(status, folder.status_path)
    record = JobRecord(
        id=folder.job_id,
        state=status.state.value,
        stage=None,
        progress=0,
        task=selected.case.task,
        patient_alias=selected.case.patient_alias,
        owner=owner,
        spec=spec.model_dump(mode="json"),
        status=status.model_dump(mode="json"),
        summary=selected.summary,
        job_key=job_key,
        source=source,
    )
    session.add(record)
    session.commit()
    try:
        queue.submit(record.id, deliver=bool(spec.destinations))
    except Exception as error:
        # The sender still holds its files: drop everything and let it send them again.
        log.error("job %s not queued: broker error %s", record.id, type(error).__name__)
        session.delete(record)
        session.commit()
        raise ServiceProblem(
            "broker-unavailable", "the job queue did not take the job; nothing was kept, send it again later"
        ) from None
    log.info("job %s queued (alias %s, task %s, by %s)", record.id, record.patient_alias, record.task, owner)
    return record


# --- reading jobs ----------------------------------------------------------------------------


def get_job(
    session: Session, settings: Settings, metrics: ServiceMetrics, job_id: str, *, tenant: str | None
) -> JobRecord:
    """The job's record, refreshed from its folder while it is unfinished.

    ``tenant`` is the owner whose jobs the caller sees (None: every job, for an admin key).

    Raises
    ------
    ServiceProblem
        ``job-not-found``: no such job, a deleted one, or another owner's: the answer is the same,
        so a key learns nothing about the jobs of others.
    """
    record = session.get(JobRecord, job_id)
    if record is None or record.deleted or (tenant is not None and record.owner != tenant):
        raise ServiceProblem("job-not-found", "no job with this id")
    # Finished jobs too: deliveries to DICOM destinations are recorded after the job succeeded.
    refresh(session, settings, metrics, record, even_finished=True)
    return record


@dataclass
class JobPage:
    records: list[JobRecord]
    count: int


def list_jobs(
    session: Session,
    settings: Settings,
    metrics: ServiceMetrics,
    *,
    owner: str | None = None,
    state: JobState | None = None,
    limit: int = 50,
    offset: int = 0,
) -> JobPage:
    """Jobs, newest first; unfinished ones are refreshed first so the state filter is current.

    ``owner`` limits the page to one owner's jobs (a tenant's own, or an admin's filter).
    """
    refresh_unfinished(session, settings, metrics)
    query = select(JobRecord).where(JobRecord.deleted.is_(False))
    if owner is not None:
        query = query.where(JobRecord.owner == owner)
    if state is not None:
        query = query.where(JobRecord.state == state.value)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    newest_first = query.order_by(JobRecord.created_at.desc(), JobRecord.id)
    page = session.scalars(newest_first.limit(limit).offset(offset))
    return JobPage(list(page), int(count))


def refresh_unfinished(session: Session, settings: Settings, metrics: ServiceMetrics) -> None:
    """Bring every unfinished record up to its ``status.json`` (few: those queued or running)."""
    query = select(JobRecord).where(JobRecord.deleted.is_(False), JobRecord.finished_at.is_(None))
    for record in session.scalars(query):
        refresh(session, settings, metrics, record)


def refresh(
    session: Session,
    settings: Settings,
    metrics: ServiceMetrics,
    record: JobRecord,
    *,
    even_finished: bool = False,
) -> None:
    """Copy the worker's status into the record; stage durations go to the histogram once each."""
    if record.deleted or (record.finished_at is not None and not even_finished):
        return
    path = JobFolder.under(settings.storage_root, record.id).status_path
    if not path.is_file():
        # A folder lost from storage must not turn the record back into a fresh queued job.
        return
    status = read_status(path)
    stored = status.model_dump(mode="json")
    if stored == record.status:
        return
    previous = JobStatus.model_validate(record.status)
    _apply_status(record, status)
    try:
        session.commit()
    except OperationalError as error:
        if not is_disk_full(error):
            raise
        # SQLite on a full storage root: the answer still says where the job stands, and the
        # record catches up on a read once there is room again.
        log.warning("job %s: record not updated, the database's disk is full", record.id)
        # Out of the failed transaction with the values just applied (the answer), and out of
        # the session: the next flush of this request (a count, another job's refresh) must not
        # try to write it again.
        session.expunge(record)
        session.rollback()
        return
    metrics.observe_stages(
        {stage: s for stage, s in status.timings_s.items() if previous.timings_s.get(stage) != s}
    )
    if record.finished_at is not None:
        log.info("job %s %s", record.id, record.state)


def _apply_status(record: JobRecord, status: JobStatus) -> None:
    record.state = status.state.value
    record.stage = status.stage
    record.progress = status.progress
    record.status = status.model_dump(mode="json")
    # A finished job keeps its finishing time when later news (a delivery) updates its status.
    record.finished_at = (record.finished_at or status.updated_at) if status.state.finished else None


# --- changing jobs ---------------------------------------------------------------------------


def delete_job(
    session: Session, settings: Settings, metrics: ServiceMetrics, job_id: str, *, tenant: str | None
) -> None:
    """Remove a finished job's files; the record stays, marked deleted (the job answers 404)."""
    record = get_job(session, settings, metrics, job_id, tenant=tenant)
    if not JobState(record.state).finished:
        raise ServiceProblem("job-busy", f"the job is {record.state}; delete it once it has finished")
    JobFolder.under(settings.storage_root, record.id).remove()
    record.deleted = True
    session.commit()
    log.info("job %s deleted", record.id)


def refine_job(
    session: Session,
    settings: Settings,
    metrics: ServiceMetrics,
    queue: JobQueue,
    job_id: str,
    clicks: list[ClickSpec],
    *,
    tenant: str | None,
) -> JobRecord:
    """Queue a refinement of a succeeded job: the decoder on its cached embedding, then export."""
    record = get_job(session, settings, metrics, job_id, tenant=tenant)
    if record.state != JobState.SUCCEEDED:
        raise ServiceProblem(
            "job-not-succeeded", f"the job is {record.state}; only a succeeded job is refined"
        )
    folder = JobFolder.under(settings.storage_root, record.id)
    previous = JobStatus.model_validate(record.status)
    queued = previous.model_copy(
        update={
            "state": JobState.QUEUED,
            "stage": "refine",
            "progress": 0,
            "error": None,
            "refinements": previous.refinements + 1,
        }
    )
    _record_status(session, folder, record, queued)
    try:
        queue.submit_refine(record.id, clicks)
    except Exception as error:
        log.error("refinement of job %s not queued: broker error %s", record.id, type(error).__name__)
        _record_status(session, folder, record, previous)
        raise ServiceProblem(
            "broker-unavailable", "the job queue did not take the refinement; the job is unchanged"
        ) from None
    log.info("job %s refinement %d queued (%d clicks)", record.id, queued.refinements, len(clicks))
    return record


def deliver_job(
    session: Session,
    settings: Settings,
    metrics: ServiceMetrics,
    queue: JobQueue,
    job_id: str,
    *,
    tenant: str | None,
) -> JobRecord:
    """Queue sending a succeeded job's DICOM results to its destinations again (a resend)."""
    record = get_job(session, settings, metrics, job_id, tenant=tenant)
    if record.state != JobState.SUCCEEDED:
        raise ServiceProblem("job-not-succeeded", f"the job is {record.state}; only results are sent")
    if not JobSpec.model_validate(record.spec).destinations:
        raise ServiceProblem("no-destinations", "the job has no DICOM destinations to send its results to")
    try:
        queue.submit_delivery(record.id)
    except Exception as error:
        log.error("delivery of job %s not queued: broker error %s", record.id, type(error).__name__)
        raise ServiceProblem("broker-unavailable", "the job queue did not take the delivery") from None
    log.info("job %s delivery queued", record.id)
    return record


def _record_status(session: Session, folder: JobFolder, record: JobRecord, status: JobStatus) -> None:
    write_status(status, folder.status_path)
    _apply_status(record, status)
    session.commit()


# --- results and the public view -------------------------------------------------------------


@dataclass(frozen=True)
class ResultFile:
    path: Path
    media_type: str
    download_name: str


def result_file(
    session: Session,
    settings: Settings,
    metrics: ServiceMetrics,
    job_id: str,
    name: str,
    *,
    tenant: str | None,
) -> ResultFile:
    """Where one result of a succeeded job is (404 for an unknown name, 409 before success)."""
    record = get_job(session, settings, metrics, job_id, tenant=tenant)
    if name not in OUTPUT_FILES:
        raise ServiceProblem("result-not-found", f"results are named {', '.join(OUTPUT_FILES)}")
    if record.state != JobState.SUCCEEDED:
        raise ServiceProblem(
            "job-not-succeeded", f"the job is {record.state}; results come once it has succeeded"
        )
    path = JobFolder.under(settings.storage_root, record.id).output(name)
    if not path.is_file():
        raise ServiceProblem("result-not-found", f"this job has no {name} result")
    return ResultFile(path, MEDIA_TYPES[name], f"{record.id}-{OUTPUT_FILES[name]}")


def job_location(job_id: str) -> str:
    return f"{JOBS_PATH}/{job_id}"


def job_public(record: JobRecord, settings: Settings) -> JobPublic:
    status = JobStatus.model_validate(record.status)
    return JobPublic(
        id=record.id,
        state=JobState(record.state),
        stage=record.stage,
        progress=record.progress,
        task=cast(Task | None, record.task),
        patient_alias=record.patient_alias,
        owner=record.owner,
        created_at=record.created_at,
        updated_at=record.updated_at,
        finished_at=record.finished_at,
        timings_s=status.timings_s,
        warnings=status.warnings,
        error=JobErrorPublic(**status.error.model_dump()) if status.error else None,
        refinements=status.refinements,
        source=record.source,
        deliveries=[DeliveryPublic(**d.model_dump()) for d in status.deliveries],
        summary=record.summary,
        links=JobLinks(job=job_location(record.id), results=_result_links(record, settings)),
    )


def _result_links(record: JobRecord, settings: Settings) -> dict[str, str]:
    if record.state != JobState.SUCCEEDED:
        return {}
    folder = JobFolder.under(settings.storage_root, record.id)
    present = [name for name in OUTPUT_FILES if folder.output(name).is_file()]
    return {name: f"{job_location(record.id)}/results/{name}" for name in present}
