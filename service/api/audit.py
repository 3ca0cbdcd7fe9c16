"""The audit trail: one ``audit_events`` row per call of a job route, allowed or refused.

Written by a pure ASGI middleware once the answer is out, so the row holds the status the
client got (a 403 from a scope check, a 404 for another owner's job, a 409, a 500) without a
try/except in any route. The caller comes from the request's state, where authentication put it;
a request without a valid key (401) has no owner and is counted by the request metrics only.
Rows hold owner ids, action names, job ids, result names and request ids: never patient data.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.auth import Caller
from service.db import AuditEvent, Database
from service.jobs import JOBS_PATH

log = logging.getLogger(__name__)

#: (method, route template) → action. Routes not listed (health, metrics, studies, the audit
#: trail itself) are not job routes and leave no row.
ACTIONS: dict[tuple[str, str], str] = {
    ("POST", JOBS_PATH): "submit",
    ("GET", JOBS_PATH): "list",
    ("GET", f"{JOBS_PATH}/{{job_id}}"): "read",
    ("GET", f"{JOBS_PATH}/{{job_id}}/results/{{name}}"): "download",
    # Opening a job's images in the viewer; its slices (dozens a second while scrolling) are not
    # rows of their own.
    ("GET", f"{JOBS_PATH}/{{job_id}}/view"): "view",
    ("POST", f"{JOBS_PATH}/{{job_id}}/refine"): "refine",
    ("POST", f"{JOBS_PATH}/{{job_id}}/deliver"): "deliver",
    ("DELETE", f"{JOBS_PATH}/{{job_id}}"): "delete",
}
#: Path values are the client's: only a well-formed job id or result name is kept.
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_RESULT_NAME = re.compile(r"^[a-z]{1,16}$")


@dataclass(frozen=True)
class AuditEntry:
    owner: str
    action: str
    job_id: str | None
    result: str | None
    status: int
    request_id: str


def audit_entry(scope: Scope, status: int) -> AuditEntry | None:
    """The row a finished request leaves, or None: not a job route, or no authenticated caller."""
    route = getattr(scope.get("route"), "path", None)
    action = ACTIONS.get((scope["method"], route)) if isinstance(route, str) else None
    state = scope.get("state", {})
    caller = state.get("caller")
    if action is None or not isinstance(caller, Caller):
        return None
    params = scope.get("path_params", {})
    return AuditEntry(
        owner=caller.owner,
        action=action,
        job_id=_kept(params.get("job_id", state.get("created_job_id")), _JOB_ID),
        result=_kept(params.get("name"), _RESULT_NAME),
        status=status,
        request_id=str(state.get("request_id", "-")),
    )


def _kept(value: object, pattern: re.Pattern[str]) -> str | None:
    return value if isinstance(value, str) and pattern.match(value) else None


def record_event(database: Database, entry: AuditEntry) -> None:
    """Insert one audit row (blocking: run it in a worker thread)."""
    with database.session() as session:
        session.add(AuditEvent(**entry.__dict__))
        session.commit()


class AuditMiddleware:
    """Writes the audit row of each job route call after its answer has been sent."""

    def __init__(self, app: ASGIApp, database: Database) -> None:
        self.app = app
        self.database = database

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # An exception escaping the app becomes a 500 in the request middleware around this one.
        response_status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal response_status
            if message["type"] == "http.response.start":
                response_status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            entry = audit_entry(scope, response_status)
            if entry is not None:
                await self._write(entry)

    async def _write(self, entry: AuditEntry) -> None:
        try:
            await run_in_threadpool(record_event, self.database, entry)
        except Exception as error:
            # The answer is already out; a lost row must show in the log (without the request).
            log.error(
                "audit event %s of owner %s (status %d) not written: %s",
                entry.action,
                entry.owner,
                entry.status,
                type(error).__name__,
            )


@dataclass
class AuditPage:
    events: list[AuditEvent]
    count: int


def list_audit_events(
    session: Session, *, job_id: str | None, owner: str | None, limit: int, offset: int
) -> AuditPage:
    """Audit events, newest first, optionally of one job or one owner."""
    query = select(AuditEvent)
    if job_id is not None:
        query = query.where(AuditEvent.job_id == job_id)
    if owner is not None:
        query = query.where(AuditEvent.owner == owner)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    newest_first = query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
    return AuditPage(list(session.scalars(newest_first.limit(limit).offset(offset))), int(count))
