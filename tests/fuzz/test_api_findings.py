"""What schemathesis found in the API, as fixed cases (in-process app, no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app

API_KEY = "findings-key-0123456789abcdefghij"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/studies", "/v1/audit-events"])
def test_an_offset_beyond_any_database_integer_is_a_validation_error(tmp_path: Path, path: str) -> None:
    # schemathesis: GET /v1/audit-events?offset=760927367370485922992750592 answered 500 (the
    # database driver cannot bind an integer that large).
    settings = Settings(storage_root=tmp_path / "storage", api_key=API_KEY)
    with TestClient(create_app(settings)) as client:
        answer = client.get(path, params={"offset": str(2**89)}, headers=AUTH)

    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["loc"] == ["query", "offset"]


def test_a_refine_body_that_is_not_text_is_a_documented_400(tmp_path: Path) -> None:
    # schemathesis: POST /v1/jobs/{id}/refine with bytes that are not UTF-8 answered 400, which the
    # contract did not list for the route.
    settings = Settings(storage_root=tmp_path / "storage", api_key=API_KEY)
    headers = AUTH | {"Content-Type": "application/json"}
    with TestClient(create_app(settings)) as client:
        answer = client.post(f"/v1/jobs/{'0' * 32}/refine", content=b"\xff{V?\x18th", headers=headers)
        documented = client.app.openapi()["paths"]["/v1/jobs/{job_id}/refine"]["post"]["responses"]

    assert answer.status_code == 400, answer.text
    assert "400" in documented
    assert answer.headers["content-type"] in documented["400"]["content"]
