"""The FastAPI application: routers and stable operation ids."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI
from fastapi.routing import APIRoute

from service import __version__
from service.api.routes import health

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def _operation_id(route: APIRoute) -> str:
    # Stable ids (tag-name) keep generated clients and the committed OpenAPI file unchanged.
    tag = route.tags[0] if route.tags else "default"
    return f"{tag}-{route.name}"


def create_app() -> FastAPI:
    """Build the application with every router."""
    app = FastAPI(
        title="rtinjury",
        version=__version__,
        description="Segmentation and measurement of radiotherapy-induced normal-tissue injuries.",
        generate_unique_id_function=_operation_id,
    )
    app.include_router(health.router)
    return app


def openapi_document() -> str:
    """The OpenAPI document as committed in ``openapi/openapi.json``."""
    return json.dumps(create_app().openapi(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OPENAPI_PATH.write_text(openapi_document(), encoding="utf-8")
