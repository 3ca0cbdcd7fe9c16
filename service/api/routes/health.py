"""Liveness of the API process (used by container health checks)."""

from __future__ import annotations

from fastapi import APIRouter

from service import __version__
from service.schemas import HealthPublic

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthPublic)
def read_health() -> HealthPublic:
    """Report that the API process is up."""
    return HealthPublic(status="ok", version=__version__)
