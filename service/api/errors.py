"""Every error as an RFC 9457 problem (``application/problem+json``), mapped in this one place.

A problem's ``type`` is ``urn:rtinjury:problem:<code>``; ``code`` is the same stable string the
worker's errors carry (``worker.errors``), so a client can tell a missing dose from a second
patient without parsing English. Details never hold patient data: the domain errors' messages
are written without it, and an unexpected error says nothing but its request id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.errors import CodedError
from service.schemas import Problem
from worker.errors import InputError

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:rtinjury:problem:"

#: code → (HTTP status, title). Codes not listed here fall back by their error class (below).
PROBLEMS: dict[str, tuple[int, str]] = {
    # The request itself
    "unauthorized": (401, "Missing or invalid API key"),
    "forbidden": (403, "Not allowed for this API key"),
    "validation-error": (422, "Invalid request fields"),
    "malformed-upload": (400, "Malformed multipart upload"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "upload-too-large": (413, "Upload too large"),
    "too-many-files": (413, "Too many files"),
    "invalid-archive": (422, "Unusable zip archive"),
    # Jobs and results
    "job-not-found": (404, "No such job"),
    "result-not-found": (404, "No such result"),
    "job-busy": (409, "The job is queued or running"),
    "job-not-succeeded": (409, "The job has not succeeded"),
    "no-destinations": (409, "The job has no DICOM destinations"),
    "view-not-ready": (409, "The job has no images to view yet"),
    "slice-not-found": (404, "No such slice"),
    "layer-not-found": (404, "No such layer"),
    "window-not-found": (404, "No such window preset"),
    # The DICOM a client sent (worker.errors.InputError and its subclasses)
    "invalid-input": (422, "Unusable input"),
    "unreadable-dicom": (422, "Unreadable DICOM"),
    "truncated-file": (422, "Truncated or empty DICOM file"),
    "invalid-geometry": (422, "Invalid image geometry"),
    "invalid-dose": (422, "Unusable RTDOSE"),
    "broken-reference": (422, "Broken DICOM reference"),
    "invalid-study": (422, "The files do not make one case"),
    "no-high-dose-region": (422, "No high-dose region on the follow-up"),
    "invalid-spatial-registration": (422, "Unusable spatial registration"),
    "invalid-prompt": (422, "Invalid prompt"),
    # Our side
    "broker-unavailable": (503, "The job queue is unavailable"),
    "storage-full": (507, "Insufficient storage"),
    "internal-error": (500, "Internal error"),
}

#: Status of a coded error whose code is not in PROBLEMS: user input → 422, anything else → 500.
_INPUT_ERROR_STATUS = 422


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for problems of these statuses (``application/problem+json``)."""
    return {code: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}} for code in statuses}


#: The web viewer's login page, where a page request without a valid session is sent.
LOGIN_PATH = "/ui/login"


class LoginRequired(Exception):
    """A web page asked for without a valid session: answered by a redirect to the login page,
    which comes back to ``next_path`` (one of our pages) afterwards."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path

    @property
    def location(self) -> str:
        return f"{LOGIN_PATH}?next={quote(self.next_path, safe='/')}"


class ServiceProblem(Exception):
    """An error the API answers with a problem of the given ``code`` (status from PROBLEMS)."""

    def __init__(self, code: str, detail: str, *, headers: dict[str, str] | None = None) -> None:
        if code not in PROBLEMS:
            raise ValueError(f"unknown problem code {code!r}; add it to PROBLEMS")
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return PROBLEMS[self.code][0]


def problem_response(
    request: Request,
    code: str,
    detail: str,
    *,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The problem+json response for ``code`` (title and status from PROBLEMS unless given)."""
    known_status, title = PROBLEMS.get(code, (status or 500, _title_of(status or 500)))
    request_id = getattr(request.state, "request_id", "-")
    problem = Problem(
        type=PROBLEM_TYPE_PREFIX + code,
        title=title,
        status=status or known_status,
        detail=detail,
        instance=request.url.path,
        code=code,
        request_id=request_id,
        **extra,
    )
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=problem.status,
        headers={"X-Request-ID": request_id, **(headers or {})},
        media_type=PROBLEM_MEDIA_TYPE,
    )


def _title_of(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _code_of_status(status: int) -> str:
    """``not-found`` for 404, ``method-not-allowed`` for 405 …: a plain HTTP error's code."""
    return _title_of(status).lower().replace(" ", "-")


async def _on_service_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceProblem)
    return problem_response(request, exc.code, exc.detail, headers=exc.headers)


async def _on_coded_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CodedError)
    if exc.code in PROBLEMS:
        status = PROBLEMS[exc.code][0]
    else:
        status = _INPUT_ERROR_STATUS if isinstance(exc, InputError) else 500
    if status >= 500:
        log.error("coded error %s (%s) in a request", exc.code, type(exc).__name__)
    return problem_response(request, exc.code, exc.message, status=status)


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else _title_of(exc.status_code)
    return problem_response(
        request, _code_of_status(exc.status_code), detail, status=exc.status_code, headers=exc.headers
    )


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Only where and what: the offending value ("input") may be clinical text, so it stays out.
    errors = [
        {
            "loc": [str(part) if not isinstance(part, int) else part for part in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in exc.errors()
    ]
    fields = ", ".join(".".join(str(part) for part in error["loc"]) for error in errors) or "the request"
    return problem_response(request, "validation-error", f"invalid: {fields}", errors=errors)


def unexpected_error_response(request: Request, error: BaseException) -> JSONResponse:
    """A 500 problem that says nothing about ``error``; the log keeps the traceback and the id."""
    log.error("unexpected %s while serving a request", type(error).__name__, exc_info=error)
    request_id = getattr(request.state, "request_id", "-")
    return problem_response(
        request,
        "internal-error",
        f"an internal error occurred; quote request id {request_id}",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Render every kind of error as a problem (unexpected ones: see the request middleware)."""
    app.add_exception_handler(ServiceProblem, _on_service_problem)
    app.add_exception_handler(CodedError, _on_coded_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(LoginRequired, _on_login_required)


async def _on_login_required(request: Request, error: Exception) -> RedirectResponse:
    """A web page without a valid session: to the login page, which comes back afterwards."""
    assert isinstance(error, LoginRequired)
    return RedirectResponse(error.location, status_code=303, headers={"Cache-Control": "no-store"})
