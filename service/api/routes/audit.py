"""``/v1/audit-events``: the audit trail of the job routes (admin keys only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.api import audit as trail
from service.api.deps import AdminDep, PageOffset, SessionDep
from service.api.errors import problem_responses
from service.schemas import AuditEventPublic, AuditEventsPublic

router = APIRouter(prefix="/v1/audit-events", tags=["audit"], responses=problem_responses(401, 403, 422))


@router.get("", response_model=AuditEventsPublic)
def list_audit_events(
    session: SessionDep,
    _caller: AdminDep,
    job_id: Annotated[str | None, Query(pattern=r"^[0-9a-f]{32}$", description="one job's events")] = None,
    owner: Annotated[str | None, Query(pattern=r"^[0-9a-f]{12}$", description="one key's events")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: PageOffset = 0,
) -> AuditEventsPublic:
    """Calls of the job routes, allowed and refused, newest first: who, what, which job, status."""
    page = trail.list_audit_events(session, job_id=job_id, owner=owner, limit=limit, offset=offset)
    data = [AuditEventPublic.model_validate(event, from_attributes=True) for event in page.events]
    return AuditEventsPublic(data=data, count=page.count, limit=limit, offset=offset)
