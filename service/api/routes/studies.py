"""``/v1/studies``: what the DICOM node received, per patient, and whether it made jobs of it.

Admin keys only: the node's holdings and jobs belong to no client key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.api.deps import AdminDep, PageOffset, SessionDep
from service.api.errors import problem_responses
from service.db import NodeInstance, NodeStudy
from service.schemas import StudiesPublic, StudyPublic, StudySeriesPublic

router = APIRouter(prefix="/v1/studies", tags=["studies"], responses=problem_responses(401, 403, 422))


@router.get("", response_model=StudiesPublic)
def list_studies(
    session: SessionDep,
    _caller: AdminDep,
    state: Annotated[str | None, Query(pattern="^(receiving|complete|incomplete)$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: PageOffset = 0,
) -> StudiesPublic:
    """Patients whose studies the node received (newest first): series with their roles, the
    completion state, the jobs made."""
    query = select(NodeStudy)
    if state is not None:
        query = query.where(NodeStudy.state == state)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = session.scalars(query.order_by(NodeStudy.last_received_at.desc()).limit(limit).offset(offset))
    data = [_public(session, study) for study in page]
    return StudiesPublic(data=data, count=int(count), limit=limit, offset=offset)


def _public(session: Session, study: NodeStudy) -> StudyPublic:
    counts = session.execute(
        select(NodeInstance.state, func.count())
        .where(NodeInstance.patient_key == study.patient_key)
        .group_by(NodeInstance.state)
    ).all()
    return StudyPublic(
        patient_alias=study.patient_alias,
        state=study.state,
        detail=study.detail,
        pending=study.pending,
        first_received_at=study.first_received_at,
        last_received_at=study.last_received_at,
        last_released_at=study.last_released_at,
        calling_aes=list(study.calling_aes),
        instances={state: int(n) for state, n in counts},
        series=[StudySeriesPublic(**entry) for entry in study.series],
        job_ids=list(study.job_ids),
    )
