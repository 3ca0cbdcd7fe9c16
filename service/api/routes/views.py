"""``/v1/jobs/{id}/view``: a job's follow-up and its layers for the web viewer (scope ``read``).

The description of the display grid and its planes, then one PNG per slice and layer: the
follow-up through a window, the planning CT on it or a checkerboard of both (registration
review), the lesion, the isodose lines.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from service import views
from service.api.deps import MetricsDep, ReaderDep, SessionDep, SettingsDep
from service.api.errors import problem_responses
from service.jobs import JOBS_PATH
from service.schemas import ViewPublic
from service.viewer.jobview import ViewCache
from worker.viewer.volumes import Plane

router = APIRouter(prefix=JOBS_PATH, tags=["viewer"], responses=problem_responses(401, 403, 404, 409, 422))

#: A slice asked for with the lesion's current version may be kept: the URL changes with it.
_KEPT = "private, max-age=86400, immutable"


def _cache(request: Request) -> ViewCache:
    cache: ViewCache = request.app.state.view_cache
    return cache


@router.get("/{job_id}/view", response_model=ViewPublic)
def read_view(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    caller: ReaderDep,
) -> ViewPublic:
    """The display grid (LPS, mm), its three planes, window presets, layers and clicks so far."""
    view, status, folder = views.job_view(session, settings, metrics, _cache(request), job_id, caller.tenant)
    return views.view_public(view, status, folder, job_id)


@router.get(
    "/{job_id}/view/{plane}/{index}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def read_slice(
    job_id: str,
    plane: Plane,
    index: Annotated[int, Path(ge=0, le=100_000)],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    caller: ReaderDep,
    layer: views.Layer = views.Layer.IMAGE,
    window: Annotated[str | None, Query(pattern=r"^[a-z-]{1,16}$")] = None,
    v: Annotated[str | None, Query(max_length=64, description="the view's version (caching)")] = None,
) -> Response:
    """One slice of one layer as PNG, one pixel per display-grid pixel (see ``pixel_mm``)."""
    view, _, _ = views.job_view(session, settings, metrics, _cache(request), job_id, caller.tenant)
    body = views.slice_png(view, plane, index, layer, window)
    kept = v is not None and v == view.lesion_version
    return Response(body, media_type="image/png", headers={"Cache-Control": _KEPT if kept else "no-store"})
