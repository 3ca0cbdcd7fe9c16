"""The FastAPI application: routers, error handlers, middleware and stable operation ids.

``create_app(settings)`` builds a self-contained app (its own database engine and metrics
registry), so tests and several processes never share hidden state. The API process never
imports torch: the heavy work happens in the workers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.routing import APIRoute

from service import __version__
from service.api.audit import AuditMiddleware
from service.api.errors import install_error_handlers
from service.api.middleware import RequestContextMiddleware
from service.api.routes import audit, health, jobs, metrics, studies, views
from service.config import Settings, get_settings
from service.db import Database
from service.metrics import ServiceMetrics
from service.viewer.jobview import ViewCache
from service.web import audit_pages, pages

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"

log = logging.getLogger(__name__)


def _operation_id(route: APIRoute) -> str:
    # Stable ids (tag-name) keep generated clients and the committed OpenAPI file unchanged.
    tag = route.tags[0] if route.tags else "default"
    return f"{tag}-{route.name}"


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    database: Database = app.state.database
    try:
        database.prepare()
    except Exception as error:
        # Keep serving: /readyz says what is wrong, and the first request that needs the
        # database tries again (a database container may come up after the API).
        log.error("job database not ready at start-up: %s", type(error).__name__)
    yield
    database.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application with every router, for ``settings`` (default: the environment)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="rtinjury",
        version=__version__,
        description=(
            "Segmentation and measurement of radiotherapy-induced normal-tissue injuries "
            "(osteoradionecrosis, cerebral edema, cerebral radiation necrosis) from DICOM-RT. "
            "Every route but /healthz and /readyz needs `Authorization: Bearer <key>` of a key with "
            "the route's scope (submit, read or admin); a key sees its own jobs only, an admin key "
            "every job. Errors are RFC 9457 problems (`application/problem+json`)."
        ),
        generate_unique_id_function=_operation_id,
        # Swagger UI and ReDoc load their scripts from a CDN, which a hospital network does not
        # reach; the contract stays at /openapi.json, and the web viewer is at /ui/.
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan,
    )
    database = Database(settings.sqlalchemy_url)
    service_metrics = ServiceMetrics(database)
    app.state.settings = settings
    app.state.database = database
    app.state.metrics = service_metrics
    app.state.view_cache = ViewCache(settings.viewer_cache_mb * 1024**2)
    install_error_handlers(app)
    # Added first, so it runs inside the request middleware: the request id is set, and an
    # unexpected error is still a 500 row.
    app.add_middleware(AuditMiddleware, database=database)
    app.add_middleware(RequestContextMiddleware, metrics=service_metrics)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(views.router)
    app.include_router(studies.router)
    app.include_router(metrics.router)
    app.include_router(audit.router)
    app.include_router(pages.router)
    app.include_router(audit_pages.router)
    return app


def openapi_document() -> str:
    """The OpenAPI document as committed in ``openapi/openapi.json``."""
    return json.dumps(create_app(Settings()).openapi(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OPENAPI_PATH.write_text(openapi_document(), encoding="utf-8")
