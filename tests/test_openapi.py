"""The committed OpenAPI document matches the application."""

from service.main import OPENAPI_PATH, openapi_document


def test_committed_openapi_matches_app() -> None:
    assert OPENAPI_PATH.read_text(encoding="utf-8") == openapi_document(), (
        "openapi/openapi.json is stale: run `python -m service.main` and commit the result"
    )
