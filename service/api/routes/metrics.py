"""``/metrics``: Prometheus text (jobs by state, stage durations, HTTP requests); needs scope ``read``.

Counts only, never a job's id or owner, so a scraper's read-only key is enough.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from service import jobs
from service.api.deps import MetricsDep, SessionDep, SettingsDep, require_read
from service.api.errors import problem_responses

router = APIRouter(
    tags=["metrics"], dependencies=[Depends(require_read)], responses=problem_responses(401, 403)
)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def read_metrics(session: SessionDep, settings: SettingsDep, metrics: MetricsDep) -> Response:
    """Prometheus exposition of this API process."""
    # Finished jobs nobody has looked at yet still move out of "running" before the count.
    jobs.refresh_unfinished(session, settings, metrics)
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
