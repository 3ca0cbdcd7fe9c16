"""Dependencies of the routes, as ``Annotated`` aliases (settings, database, queue, caller)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.api.auth import authenticate
from service.config import Settings
from service.db import Database
from service.jobs import JobQueue
from service.metrics import ServiceMetrics

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


def require_api_key(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The caller's owner id; a 401 problem without a valid bearer key."""
    return authenticate(credentials, settings)


SessionDep = Annotated[Session, Depends(get_session)]
DispatcherDep = Annotated[JobQueue, Depends(get_dispatcher)]
OwnerDep = Annotated[str, Depends(require_api_key)]
