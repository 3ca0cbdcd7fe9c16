"""``/metrics``: Prometheus text (jobs by state, stage durations, HTTP requests); needs a key."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from service import jobs
from service.api.deps import MetricsDep, SessionDep, SettingsDep, require_api_key

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_api_key)])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def read_metrics(session: SessionDep, settings: SettingsDep, metrics: MetricsDep) -> Response:
    """Prometheus exposition of this API process."""
    # Finished jobs nobody has looked at yet still move out of "running" before the count.
    jobs.refresh_unfinished(session, settings, metrics)
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
