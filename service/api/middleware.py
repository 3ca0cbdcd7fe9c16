"""Per-request context: a request id (echoed, logged), the request counter, and a last-resort 500.

Pure ASGI, so it sees every response (including problems and downloads) without buffering one.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import unexpected_error_response
from service.metrics import ServiceMetrics

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
#: An incoming id is kept only when it cannot smuggle anything into a log line or a header.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("rtinjury_request_id", default="-")


def request_id_of(scope: Scope) -> str:
    """The client's ``X-Request-ID`` when it is safe, else a new uuid4 hex."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _SAFE_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class RequestIdLogFilter(logging.Filter):
    """Adds ``request_id`` to every record (``-`` outside a request) for the log format."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        # Left set on purpose: each request runs in its own task (its own context), and the
        # server's access-log line comes after this call returns.
        REQUEST_ID.set(request_id)
        response_status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_status, started
            if message["type"] == "http.response.start":
                started = True
                response_status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as error:
            if started:
                log.error("unexpected %s after the response started", type(error).__name__, exc_info=error)
                raise
            response = unexpected_error_response(Request(scope), error)
            await response(scope, receive, send_with_id)
        finally:
            self.metrics.count_request(scope["method"], _route_template(scope), response_status)


def _route_template(scope: Scope) -> str:
    """``/v1/jobs/{job_id}``, not the path itself: ids would make one series per job."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
