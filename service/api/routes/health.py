"""Liveness and readiness of the API process (used by container health checks; no key needed)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from fastapi import APIRouter, Response, status

from service import __version__
from service.api.deps import DatabaseDep, DispatcherDep, SettingsDep
from service.config import Settings
from service.schemas import HealthPublic, ReadinessCheck, ReadinessPublic

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthPublic)
def read_health() -> HealthPublic:
    """Report that the API process is up."""
    return HealthPublic(status="ok", version=__version__)


@router.get(
    "/readyz",
    response_model=ReadinessPublic,
    responses={503: {"model": ReadinessPublic, "description": "a dependency is not ready"}},
)
def read_readiness(
    response: Response, settings: SettingsDep, database: DatabaseDep, dispatcher: DispatcherDep
) -> ReadinessPublic:
    """Whether jobs can be taken: database, storage, broker and model, each with a reason if not."""
    checks = {
        "database": _check(database.problem),
        "storage": _check(lambda: _storage_problem(settings)),
        "broker": _check(dispatcher.ping),
        "model": _check(lambda: _model_problem(settings)),
    }
    ready = all(check.ok for check in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return ReadinessPublic(status="ready" if ready else "unavailable", checks=checks)


def _check(problem: Callable[[], str | None]) -> ReadinessCheck:
    try:
        detail = problem()
    except Exception as error:
        log.warning("readiness check failed with %s", type(error).__name__)
        detail = f"check failed ({type(error).__name__})"
    return ReadinessCheck(ok=detail is None, detail=detail)


def _storage_problem(settings: Settings) -> str | None:
    probe = settings.jobs_root / f".ready-{uuid.uuid4().hex}"
    try:
        settings.jobs_root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        return f"storage root not writable ({type(error).__name__})"
    return None


def _model_problem(settings: Settings) -> str | None:
    from worker.runtime import model_problem  # looks at files only; never imports torch

    return model_problem(settings)
