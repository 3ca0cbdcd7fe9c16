"""``/v1/jobs``: upload a patient's DICOM, follow the job, download its results, refine, delete.

Scopes: ``submit`` to create, refine, deliver and delete; ``read`` to list, read and download.
A key acts on its own jobs only (another owner's job answers as one that does not exist); an
``admin`` key acts on every job, the DICOM node's included.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import FileResponse

from service import jobs
from service.api.auth import Caller, forbidden
from service.api.deps import (
    DispatcherDep,
    MetricsDep,
    PageLimit,
    PageOffset,
    ReaderDep,
    SessionDep,
    SettingsDep,
    SubmitterDep,
)
from service.api.errors import problem_responses
from service.keys import Scope
from service.schemas import JobCreateForm, JobPublic, JobsPublic, RefineRequest
from worker.jobs.folder import JobFolder
from worker.jobs.status import JobState
from worker.stages.export.files import MEDIA_TYPES

_problems = problem_responses


router = APIRouter(prefix=jobs.JOBS_PATH, tags=["jobs"], responses=_problems(401, 403, 422))


def _upload_body() -> dict[str, Any]:
    """The multipart body of ``POST /v1/jobs`` (parsed by us as a stream, so declared by hand)."""
    fields = JobCreateForm.model_json_schema()["properties"]
    files = {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "format": "binary"},
        "description": "DICOM files, or one zip, of one patient: planning CT, RTDOSE, RTPLAN, follow-up",
    }
    schema = {"type": "object", "required": ["files"], "properties": {"files": files, **fields}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    openapi_extra=_upload_body(),
    responses=_problems(400, 413, 415, 503, 507),
)
async def create_job(
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    caller: SubmitterDep,
) -> JobPublic:
    """Upload one patient's DICOM and queue a job; the case is checked before it is queued."""
    record = await jobs.create_job(
        request.headers, request.stream(), session, settings, dispatcher, caller.owner
    )
    # The path names no job yet: the audit trail takes the new job's id from here.
    request.state.created_job_id = record.id
    response.headers["Location"] = jobs.job_location(record.id)
    return jobs.job_public(record, settings)


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    caller: ReaderDep,
    state: JobState | None = None,
    owner: Annotated[
        str | None, Query(pattern=r"^[0-9a-f]{12}$", description="owner id of a key (admin keys only)")
    ] = None,
    limit: PageLimit = 50,
    offset: PageOffset = 0,
) -> JobsPublic:
    """The caller's jobs (an admin's: every job), newest first, optionally of one state or owner."""
    listed = _listed_owner(caller, owner)
    page = jobs.list_jobs(session, settings, metrics, owner=listed, state=state, limit=limit, offset=offset)
    data = [jobs.job_public(record, settings) for record in page.records]
    return JobsPublic(data=data, count=page.count, limit=limit, offset=offset)


def _listed_owner(caller: Caller, owner: str | None) -> str | None:
    """Whose jobs a listing shows: the caller's own, or for an admin every owner's (or ``owner``'s)."""
    if caller.is_admin:
        return owner
    if owner is not None:
        raise forbidden(caller, Scope.ADMIN, "filter jobs by owner (scope admin)")
    return caller.owner


@router.get("/{job_id}", response_model=JobPublic, responses=_problems(404))
def read_job(
    job_id: str, session: SessionDep, settings: SettingsDep, metrics: MetricsDep, caller: ReaderDep
) -> JobPublic:
    """Where a job stands: state, stage, progress, timings, warnings, error, result links."""
    record = jobs.get_job(session, settings, metrics, job_id, tenant=caller.tenant)
    return jobs.job_public(record, settings)


@router.get(
    "/{job_id}/results/{name}",
    response_class=FileResponse,
    responses={
        200: {"content": {media: {} for media in sorted(set(MEDIA_TYPES.values()))}},
        **_problems(404, 409),
    },
)
def read_result(
    job_id: str, name: str, session: SessionDep, settings: SettingsDep, metrics: MetricsDep, caller: ReaderDep
) -> FileResponse:
    """One result of a succeeded job: seg, rtstruct, sr (DICOM), report (JSON) or preview (PNG)."""
    result = jobs.result_file(session, settings, metrics, job_id, name, tenant=caller.tenant)
    return FileResponse(result.path, media_type=result.media_type, filename=result.download_name)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=_problems(404, 409),
)
def delete_job(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    caller: SubmitterDep,
) -> Response:
    """Delete a finished job's files (its record stays for the audit trail; the job answers 404)."""
    jobs.delete_job(session, settings, metrics, job_id, tenant=caller.tenant)
    # The viewer's copy of its images goes too (memory the job no longer needs).
    request.app.state.view_cache.forget(JobFolder.under(settings.storage_root, job_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{job_id}/refine",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    # 400: a body that cannot be decoded at all (not UTF-8); JSON of the wrong shape is 422.
    responses=_problems(400, 404, 409, 503),
)
def refine_job(
    job_id: str,
    body: RefineRequest,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    dispatcher: DispatcherDep,
    caller: SubmitterDep,
) -> JobPublic:
    """Re-segment with reviewer clicks (patient coordinates, mm): the decoder on the cached embedding."""
    record = jobs.refine_job(
        session, settings, metrics, dispatcher, job_id, body.clicks, tenant=caller.tenant
    )
    response.headers["Location"] = jobs.job_location(record.id)
    return jobs.job_public(record, settings)


@router.post(
    "/{job_id}/deliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses=_problems(404, 409, 503),
)
def deliver_job(
    job_id: str,
    session: SessionDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    dispatcher: DispatcherDep,
    caller: SubmitterDep,
) -> JobPublic:
    """Send a succeeded job's SEG, RTSTRUCT and SR to its DICOM destinations again."""
    record = jobs.deliver_job(session, settings, metrics, dispatcher, job_id, tenant=caller.tenant)
    return jobs.job_public(record, settings)
