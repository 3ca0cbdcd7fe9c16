"""``/v1/jobs``: upload a patient's DICOM, follow the job, download its results, refine, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import FileResponse

from service import jobs
from service.api.deps import DispatcherDep, MetricsDep, OwnerDep, SessionDep, SettingsDep
from service.api.errors import PROBLEM_MEDIA_TYPE
from service.schemas import JobCreateForm, JobPublic, JobsPublic, Problem, RefineRequest
from worker.jobs.status import JobState
from worker.stages.export.files import MEDIA_TYPES


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}} for code in statuses}


router = APIRouter(prefix=jobs.JOBS_PATH, tags=["jobs"], responses=_problems(401, 422))


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
    responses=_problems(400, 413, 415, 503),
)
async def create_job(
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    owner: OwnerDep,
) -> JobPublic:
    """Upload one patient's DICOM and queue a job; the case is checked before it is queued."""
    record = await jobs.create_job(request.headers, request.stream(), session, settings, dispatcher, owner)
    response.headers["Location"] = jobs.job_location(record.id)
    return jobs.job_public(record, settings)


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    _owner: OwnerDep,
    state: JobState | None = None,
    owner: Annotated[str | None, Query(pattern=r"^[0-9a-f]{12}$", description="owner id of a key")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobsPublic:
    """Jobs, newest first, optionally of one state or one key's owner id."""
    page = jobs.list_jobs(session, settings, metrics, owner=owner, state=state, limit=limit, offset=offset)
    data = [jobs.job_public(record, settings) for record in page.records]
    return JobsPublic(data=data, count=page.count, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobPublic, responses=_problems(404))
def read_job(
    job_id: str, session: SessionDep, settings: SettingsDep, metrics: MetricsDep, _owner: OwnerDep
) -> JobPublic:
    """Where a job stands: state, stage, progress, timings, warnings, error, result links."""
    return jobs.job_public(jobs.get_job(session, settings, metrics, job_id), settings)


@router.get(
    "/{job_id}/results/{name}",
    response_class=FileResponse,
    responses={
        200: {"content": {media: {} for media in sorted(set(MEDIA_TYPES.values()))}},
        **_problems(404, 409),
    },
)
def read_result(
    job_id: str, name: str, session: SessionDep, settings: SettingsDep, metrics: MetricsDep, _owner: OwnerDep
) -> FileResponse:
    """One result of a succeeded job: seg, rtstruct, sr (DICOM), report (JSON) or preview (PNG)."""
    result = jobs.result_file(session, settings, metrics, job_id, name)
    return FileResponse(result.path, media_type=result.media_type, filename=result.download_name)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=_problems(404, 409),
)
def delete_job(
    job_id: str, session: SessionDep, settings: SettingsDep, metrics: MetricsDep, _owner: OwnerDep
) -> Response:
    """Delete a finished job's files (its record stays for the audit trail; the job answers 404)."""
    jobs.delete_job(session, settings, metrics, job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{job_id}/refine",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses=_problems(404, 409, 503),
)
def refine_job(
    job_id: str,
    body: RefineRequest,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    dispatcher: DispatcherDep,
    _owner: OwnerDep,
) -> JobPublic:
    """Re-segment with reviewer clicks (patient coordinates, mm): the decoder on the cached embedding."""
    record = jobs.refine_job(session, settings, metrics, dispatcher, job_id, body.clicks)
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
    _owner: OwnerDep,
) -> JobPublic:
    """Send a succeeded job's SEG, RTSTRUCT and SR to its DICOM destinations again."""
    record = jobs.deliver_job(session, settings, metrics, dispatcher, job_id)
    return jobs.job_public(record, settings)
