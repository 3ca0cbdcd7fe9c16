"""Dependencies of the routes, as ``Annotated`` aliases (settings, database, queue, caller).

A route states the scope it needs by its caller alias: ``SubmitterDep``, ``ReaderDep`` or
``AdminDep`` (401 without a valid key, 403 ``forbidden`` without the scope).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.api.auth import Caller, accepted_keys, authenticate, caller_of_hash, check_scope
from service.api.errors import ServiceProblem
from service.api.sessions import COOKIE_NAME, CSRF_HEADER, SAFE_METHODS, decode_cookie, session_secret
from service.config import Settings
from service.db import Database
from service.jobs import JobQueue
from service.keys import Scope
from service.metrics import ServiceMetrics

log = logging.getLogger(__name__)

#: Declares the scheme in OpenAPI; the check itself (and its problem+json 401) is ours.
_bearer = HTTPBearer(auto_error=False, description="An API key made with `rtinjury keys new`.")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]


def get_session(database: DatabaseDep) -> Iterator[Session]:
    with database.session() as session:
        yield session


def get_dispatcher(settings: SettingsDep) -> JobQueue:
    """The worker side's dispatcher (Celery client) for these settings."""
    # Imported here: Celery loads only when a route first needs the queue.
    from worker.dispatch import get_dispatcher as worker_dispatcher

    dispatcher: JobQueue = worker_dispatcher(settings)
    return dispatcher


def get_session_secret(request: Request) -> bytes:
    """The session signing secret, read once per app (it may be made on first use)."""
    secret: bytes | None = getattr(request.app.state, "session_secret", None)
    if secret is None:
        secret = request.app.state.session_secret = session_secret(request.app.state.settings)
    return secret


def require_api_key(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller (owner id and scopes) of a bearer key, or of the web viewer's session cookie;
    a 401 problem without either."""
    caller = None
    if credentials is None and COOKIE_NAME in request.cookies:
        caller = session_caller(request, settings)
    if caller is None:
        caller = authenticate(credentials, settings)
    # The audit trail (service.api.audit) reads it from the request's state once the answer is out.
    request.state.caller = caller
    return caller


def session_caller(request: Request, settings: Settings) -> Caller | None:
    """The caller of a valid session cookie (None without one), its CSRF token checked when the
    request changes something.

    Raises
    ------
    ServiceProblem
        ``forbidden``: a POST or DELETE with the cookie but without the session's CSRF token.
    """
    secret = get_session_secret(request)
    session = decode_cookie(request.cookies.get(COOKIE_NAME), secret)
    if session is None:
        return None
    caller = caller_of_hash(session.key_hash, accepted_keys(settings))
    if caller is None:
        log.info("session of a key no longer configured refused")
        return None
    token = request.headers.get(CSRF_HEADER)
    if request.method not in SAFE_METHODS and not session.csrf_matches(secret, token):
        raise ServiceProblem(
            "forbidden", f"a web viewer request that changes something needs the {CSRF_HEADER} header"
        )
    request.state.session = session
    return caller


def require_scope(scope: Scope) -> Callable[[Caller], Caller]:
    """A dependency: the caller if its key has ``scope`` (or admin), else a 403 ``forbidden``."""

    def caller_with_scope(caller: Annotated[Caller, Depends(require_api_key)]) -> Caller:
        return check_scope(caller, scope)

    caller_with_scope.__name__ = f"require_{scope.value}_scope"
    return caller_with_scope


#: One dependency per scope, made once: FastAPI caches a dependency per request by identity.
require_submit = require_scope(Scope.SUBMIT)
require_read = require_scope(Scope.READ)
require_admin = require_scope(Scope.ADMIN)

#: Closed when the route returns, before the response is sent: a download would otherwise hold its
#: connection while the file streams, which needs a worker thread, while every worker thread
#: waits for a connection (found by benchmarks/load.py: 30 s stalls, then 500s, at 50 clients).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
DispatcherDep = Annotated[JobQueue, Depends(get_dispatcher)]
SubmitterDep = Annotated[Caller, Depends(require_submit)]
ReaderDep = Annotated[Caller, Depends(require_read)]
AdminDep = Annotated[Caller, Depends(require_admin)]

#: The largest integer the job database stores (SQLite and PostgreSQL: signed 64 bits); a larger
#: offset made the database driver fail (a 500, found by schemathesis).
MAX_OFFSET = 2**63 - 1
#: ``limit`` of the listings: at most this many rows.
PageLimit = Annotated[int, Query(ge=1, le=500)]
#: ``offset`` of the listings: how many rows to skip.
PageOffset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
