"""The web viewer's pages: login, the job list, a job's viewer, and their static files.

Server-rendered HTML (Jinja2, autoescaped) plus one small script for the viewer; everything is
served from this package, nothing from a CDN, so the pages work in a closed hospital network.
Without a valid session every page but the login page redirects to it. The data the viewer
script loads comes from the REST API (``/v1/jobs/...``) with the same session cookie.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from service import jobs
from service.api.auth import Caller
from service.api.deps import SessionDep, SettingsDep, get_session_secret
from service.api.errors import LOGIN_PATH, ServiceProblem
from service.api.sessions import Session
from service.db import JobRecord
from service.web.session import (
    HOME_PATH,
    LoginRefused,
    current_session,
    log_in,
    log_out,
    page_session,
    safe_next,
)
from worker.jobs import handoff
from worker.jobs.folder import JobFolder
from worker.jobs.status import JobState, JobStatus
from worker.stages.export.files import OUTPUT_FILES

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=PACKAGE / "templates")
router = APIRouter(include_in_schema=False)

#: What the browser may load and where: our own origin only; images also as blobs (downloads).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Pages show patient results: not kept by the browser or a proxy.
    "Cache-Control": "no-store",
}
#: The static files, by name: nothing else under the package can be asked for.
STATIC_FILES = {"app.css": "text/css", "audit.css": "text/css", "viewer.js": "text/javascript"}
#: Served without a session: the login page's look.
PUBLIC_STATIC = frozenset({"app.css"})
JOBS_PER_PAGE = 50
#: What browsers say (``Sec-Fetch-Site``) of a request sent by another site's page.
FOREIGN_SITES = frozenset({"cross-site", "same-site"})
#: Keys are 43 characters (``rtinjury keys new``); anything this long is not one.
MAX_KEY_LENGTH = 512


def page(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    response = templates.TemplateResponse(request, template, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse(HOME_PATH, status_code=303)


@router.get("/favicon.ico")
def favicon() -> Response:
    """No icon: an empty answer instead of a 404 in every browser console."""
    return Response(status_code=204)


@router.get(LOGIN_PATH)
def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    return page(request, "login.html", {"next": safe_next(next), "error": None})


@router.post(LOGIN_PATH)
def login(
    request: Request, api_key: Annotated[str, Form()] = "", next: Annotated[str, Form()] = HOME_PATH
) -> Response:
    target = safe_next(next)
    if request.headers.get("sec-fetch-site") in FOREIGN_SITES:
        # Another site's form would log this browser in with a key of that site's choosing.
        error = "Log in from this server's own login page."
        return page(request, "login.html", {"next": target, "error": error}, status_code=403)
    response = RedirectResponse(target, status_code=303)
    try:
        # An empty or absurdly long key is refused like a wrong one: on the page, not as a 422.
        if not api_key.strip() or len(api_key) > MAX_KEY_LENGTH:
            raise LoginRefused
        log_in(request, response, api_key)
    except LoginRefused:
        error = "This key is not valid here, or it may not read jobs."
        return page(request, "login.html", {"next": target, "error": error}, status_code=401)
    response.headers.update(SECURITY_HEADERS)
    return response


@router.post("/ui/logout")
def logout(request: Request, csrf_token: Annotated[str, Form()] = "") -> Response:
    session = current_session(request)
    if session is not None and not session.csrf_matches(get_session_secret(request), csrf_token):
        # Another site's form: the session stays.
        return RedirectResponse(HOME_PATH, status_code=303)
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    log_out(response)
    return response


@dataclass(frozen=True)
class JobRow:
    """One line of the job list."""

    id: str
    state: str
    stage: str | None
    task: str | None
    patient_alias: str | None
    owner: str
    created_at: str
    lesion_volume_cc: float | None
    warnings: list[str]
    refinements: int


@router.get("/ui/jobs")
def job_list(
    request: Request, session: SessionDep, settings: SettingsDep, state: str = "", offset: str = "0"
) -> HTMLResponse:
    """The caller's jobs (an admin's: everyone's), newest first, 50 a page."""
    caller, web_session = page_session(request)
    # A hand-edited address shows the whole list rather than an error.
    wanted = JobState(state) if state in {s.value for s in JobState} else None
    skipped = int(offset) if offset.isdecimal() and len(offset) < 10 else 0
    metrics = request.app.state.metrics
    listed = jobs.list_jobs(
        session, settings, metrics, owner=caller.tenant, state=wanted, limit=JOBS_PER_PAGE, offset=skipped
    )
    rows = [_job_row(record, settings.storage_root) for record in listed.records]
    context = {
        **page_context(request, caller, web_session),
        "rows": rows,
        "count": listed.count,
        "offset": skipped,
        "per_page": JOBS_PER_PAGE,
        "state": wanted.value if wanted else "",
        "states": [s.value for s in JobState],
    }
    return page(request, "jobs.html", context)


@router.get("/ui/jobs/{job_id}")
def job_page(request: Request, job_id: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    caller, web_session = page_session(request)
    metrics = request.app.state.metrics
    try:
        record = jobs.get_job(session, settings, metrics, job_id, tenant=caller.tenant)
    except ServiceProblem as problem:
        context = {
            **page_context(request, caller, web_session),
            "title": "No such job",
            "detail": str(problem),
        }
        return page(request, "error.html", context, status_code=404)
    context = {
        **page_context(request, caller, web_session),
        "job": jobs.job_public(record, settings),
        "row": _job_row(record, settings.storage_root),
        "results": list(OUTPUT_FILES),
    }
    return page(request, "job.html", context)


@router.get("/ui/static/{name}")
def static_file(request: Request, name: str) -> Response:
    if name not in STATIC_FILES:
        return Response(status_code=404)
    if name not in PUBLIC_STATIC:
        page_session(request)
    response = FileResponse(PACKAGE / "static" / name, media_type=STATIC_FILES[name])
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def page_context(request: Request, caller: Caller, web_session: Session) -> dict[str, Any]:
    """What every page of a signed-in caller shows: who, and the token of its forms."""
    return {
        "caller": caller,
        "csrf_token": web_session.csrf_token(get_session_secret(request)),
    }


def _job_row(record: JobRecord, storage_root: Path) -> JobRow:
    status = JobStatus.model_validate(record.status)
    return JobRow(
        id=record.id,
        state=record.state,
        stage=record.stage,
        task=record.task,
        patient_alias=record.patient_alias,
        owner=record.owner,
        created_at=record.created_at.strftime("%Y-%m-%d %H:%M"),
        lesion_volume_cc=_lesion_volume(record, storage_root),
        warnings=status.warnings,
        refinements=status.refinements,
    )


def _lesion_volume(record: JobRecord, storage_root: Path) -> float | None:
    """The lesion volume of a succeeded job's report (None before, or without a report)."""
    if record.state != JobState.SUCCEEDED:
        return None
    try:
        report = handoff.read_json(JobFolder.under(storage_root, record.id).output("report"))
        return float(report["lesion"]["volume_cc"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
