"""The viewer service: what ``/v1/jobs/{id}/view`` routes do, over the job record and its folder."""

from __future__ import annotations

from enum import StrEnum
from typing import cast

from sqlalchemy.orm import Session

from service import jobs
from service.api.errors import ServiceProblem
from service.config import Settings
from service.metrics import ServiceMetrics
from service.schemas import (
    ViewGridPublic,
    ViewIsodosePublic,
    ViewPlanePublic,
    ViewPublic,
    ViewWindowPublic,
)
from service.viewer import render
from service.viewer.jobview import JobView, ViewCache
from worker.jobs import handoff
from worker.jobs.folder import JobFolder
from worker.jobs.spec import Task
from worker.jobs.status import JobStatus
from worker.stages.export.files import OUTPUT_FILES
from worker.viewer.volumes import Plane, plane_slice


class Layer(StrEnum):
    IMAGE = "image"
    PLANNING = "planning"
    CHECKERBOARD = "checkerboard"
    LESION = "lesion"
    ISODOSE = "isodose"


def job_view(
    session: Session,
    settings: Settings,
    metrics: ServiceMetrics,
    cache: ViewCache,
    job_id: str,
    tenant: str | None,
) -> tuple[JobView, JobStatus, JobFolder]:
    """The job's layers (404 for a job the caller cannot see, 409 before it has been prepared)."""
    record = jobs.get_job(session, settings, metrics, job_id, tenant=tenant)
    folder = JobFolder.under(settings.storage_root, record.id)
    try:
        facts = handoff.prepared_facts(folder.work)
        view = cache.view(folder, str(facts["task"]), str(facts.get("modality") or "CT"))
    except FileNotFoundError:
        raise ServiceProblem(
            "view-not-ready", f"the job is {record.state}; its images can be viewed once it is prepared"
        ) from None
    return view, JobStatus.model_validate(record.status), folder


def view_public(view: JobView, status: JobStatus, folder: JobFolder, job_id: str) -> ViewPublic:
    starts = view.start_slices(_lesion_centroid(folder))
    planes = {
        plane.value: ViewPlanePublic(**view.grid.plane(plane).__dict__, start=starts[plane.value])
        for plane in Plane
    }
    base = view.base
    return ViewPublic(
        job_id=job_id,
        state=status.state,
        task=cast(Task, view.task),
        modality=view.modality,
        grid=ViewGridPublic(size=view.grid.size, spacing_mm=view.grid.spacing, origin_mm=view.grid.origin),
        planes=planes,
        windows=[ViewWindowPublic(**w.__dict__) for w in view.windows],
        default_window=view.default_window,
        layers={
            Layer.LESION.value: view.lesion is not None,
            Layer.ISODOSE.value: base.dose_levels is not None,
            Layer.PLANNING.value: base.planning is not None,
        },
        isodose=[ViewIsodosePublic(**level.__dict__) for level in base.isodose],
        lesion_colour=view.lesion_colour,
        version=view.lesion_version,
        refinements=status.refinements,
        clicks=handoff.load_clicks(folder.work),
    )


def slice_png(view: JobView, plane: Plane, index: int, layer: Layer, window_id: str | None) -> bytes:
    """One slice of one layer as PNG.

    Raises
    ------
    ServiceProblem
        ``slice-not-found`` for an index outside the plane; ``layer-not-found`` for a layer the
        job does not have (no lesion yet, no planning CT on the follow-up).
    """
    count = view.grid.plane(plane).count
    if not 0 <= index < count:
        raise ServiceProblem("slice-not-found", f"the {plane.value} plane has slices 0 to {count - 1}")
    base = view.base
    window = view.window(window_id)
    if window is None:
        presets = ", ".join(w.id for w in view.windows)
        raise ServiceProblem("window-not-found", f"window presets are {presets}")
    if layer is Layer.IMAGE:
        return render.grey_slice(plane_slice(base.image, plane, index), window)
    if layer is Layer.LESION and view.lesion is not None:
        return render.lesion_slice(plane_slice(view.lesion, plane, index), view.lesion_colour)
    if layer is Layer.ISODOSE and base.dose_levels is not None:
        colours = [level.colour for level in base.isodose]
        return render.isodose_slice(plane_slice(base.dose_levels, plane, index), colours)
    if layer is Layer.PLANNING and base.planning is not None:
        return render.grey_slice(plane_slice(base.planning, plane, index), window)
    if layer is Layer.CHECKERBOARD and base.planning is not None:
        followup, planning = plane_slice(base.image, plane, index), plane_slice(base.planning, plane, index)
        return render.checkerboard_slice(followup, planning, window)
    raise ServiceProblem("layer-not-found", f"this job has no {layer.value} layer")


def _lesion_centroid(folder: JobFolder) -> list[float] | None:
    """The lesion centroid the report gives (LPS mm), if the job has a report with a lesion."""
    path = folder.outputs / OUTPUT_FILES["report"]
    try:
        lesion = handoff.read_json(path)["lesion"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    centroid = lesion.get("centroid_mm") if isinstance(lesion, dict) and not lesion.get("empty") else None
    return [float(v) for v in centroid] if isinstance(centroid, list) and len(centroid) == 3 else None
