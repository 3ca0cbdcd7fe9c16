"""What every route promises: a key with its scope (but health), problem+json errors, request ids,
no torch."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api.deps import get_dispatcher
from service.api.middleware import REQUEST_ID, RequestIdLogFilter
from service.config import Settings
from service.main import create_app
from tests.service.api.conftest import (
    ADMIN_KEY,
    AUTH,
    KEY_SCOPES,
    READ_KEY,
    SUBMIT_KEY,
    bearer,
    broker_down,
)

OPEN_ROUTES = {"/healthz", "/readyz"}
#: The scope each protected route needs; a route missing here fails the walk below.
ROUTE_SCOPES = {
    ("POST", "/v1/jobs"): "submit",
    ("GET", "/v1/jobs"): "read",
    ("GET", "/v1/jobs/{job_id}"): "read",
    ("DELETE", "/v1/jobs/{job_id}"): "submit",
    ("GET", "/v1/jobs/{job_id}/results/{name}"): "read",
    ("POST", "/v1/jobs/{job_id}/refine"): "submit",
    ("POST", "/v1/jobs/{job_id}/deliver"): "submit",
    ("GET", "/v1/jobs/{job_id}/view"): "read",
    ("GET", "/v1/jobs/{job_id}/view/{plane}/{index}"): "read",
    ("GET", "/v1/studies"): "admin",
    ("GET", "/v1/audit-events"): "admin",
    ("GET", "/metrics"): "read",
}


def _protected_templates(app: FastAPI) -> list[tuple[str, str]]:
    """Every API route but health as (method, template), from the app's own OpenAPI document
    (FastAPI ≥ 0.16x keeps included routers as opaque entries in ``app.routes``; the document
    lists each operation)."""
    return [
        (method.upper(), template)
        for template, operations in app.openapi()["paths"].items()
        if template not in OPEN_ROUTES
        for method in sorted(operations)
    ]


def _path_of(template: str) -> str:
    return (
        template.replace("{job_id}", "0" * 32)
        .replace("{name}", "seg")
        .replace("{plane}", "axial")
        .replace("{index}", "0")
    )


def _protected_routes(app: FastAPI) -> list[tuple[str, str]]:
    return [(method, _path_of(template)) for method, template in _protected_templates(app)]


def test_every_route_but_health_needs_a_key(client: TestClient, app: FastAPI) -> None:
    routes = _protected_routes(app)
    assert {path for _, path in routes} >= {"/v1/jobs", "/metrics", f"/v1/jobs/{'0' * 32}/refine"}
    # Every route has its scope in the table: the next test walks them with keys lacking it.
    assert set(_protected_templates(app)) == set(ROUTE_SCOPES)
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong-key-wrong-key"}):
            response = client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["code"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_every_route_needs_its_scope_and_says_so_when_a_key_lacks_it(scoped_client: TestClient) -> None:
    app = scoped_client.app
    assert isinstance(app, FastAPI)
    assert set(_protected_templates(app)) == set(ROUTE_SCOPES), "give every new route a scope here"
    single_scope_keys = {scopes: key for key, scopes in KEY_SCOPES.items() if "," not in scopes}
    for (method, template), needed in ROUTE_SCOPES.items():
        path = _path_of(template)
        for scopes, key in single_scope_keys.items():
            response = scoped_client.request(method, path, headers=bearer(key))
            if scopes in (needed, "admin"):  # admin may everything
                # Past the scope check: whatever the route answers next (404 job, 415 body …).
                assert response.status_code not in (401, 403), (method, template, scopes, response.text)
                continue
            assert response.status_code == 403, (method, template, scopes, response.text)
            problem = response.json()
            assert response.headers["content-type"] == "application/problem+json"
            assert (problem["code"], problem["type"]) == ("forbidden", "urn:rtinjury:problem:forbidden")
            detail = problem["detail"]
            assert detail.startswith("this key may not ") and f"(scope {needed})" in detail
            assert detail.endswith(f"it has scopes {scopes}")


def test_the_owner_filter_is_for_admin_keys_only(scoped_client: TestClient) -> None:
    owner = {"owner": "0" * 12}
    for key in (READ_KEY, SUBMIT_KEY):
        refused = scoped_client.get("/v1/jobs", params=owner, headers=bearer(key))
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert scoped_client.get("/v1/jobs", params=owner, headers=bearer(ADMIN_KEY)).status_code == 200


def test_without_configured_keys_every_protected_route_says_how_to_add_one(settings: Settings) -> None:
    no_keys = settings.model_copy(update={"api_key": None, "api_key_hashes": []})
    app = create_app(no_keys)
    with TestClient(app) as client:
        for method, path in _protected_routes(app):
            response = client.request(method, path, headers=AUTH)
            assert response.status_code == 401
            assert "RTINJURY_API_KEY_HASHES" in response.json()["detail"]


def test_keys_are_accepted_by_their_hash(settings: Settings) -> None:
    from service.api.auth import hash_api_key

    key = "a-key-from-rtinjury-keys-new-0001"
    hashed = settings.model_copy(update={"api_key": None, "api_key_hashes": [hash_api_key(key)]})
    with TestClient(create_app(hashed)) as client:
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert client.get("/v1/jobs", headers=AUTH).status_code == 401


def test_problems_have_the_rfc_9457_shape(client: TestClient) -> None:
    response = client.get(f"/v1/jobs/{'a' * 32}", headers={**AUTH, "X-Request-ID": "trace-42"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "urn:rtinjury:problem:job-not-found",
        "title": "No such job",
        "status": 404,
        "detail": "no job with this id",
        "instance": f"/v1/jobs/{'a' * 32}",
        "code": "job-not-found",
        "request_id": "trace-42",
    }


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v2/nothing", 404, "not-found"),
        ("PUT", "/v1/jobs", 405, "method-not-allowed"),
    ],
)
def test_framework_errors_are_problems_too(
    client: TestClient, method: str, path: str, status: int, code: str
) -> None:
    response = client.request(method, path, headers=AUTH)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code and response.json()["instance"] == path


def test_request_ids_are_echoed_when_safe_and_made_otherwise(client: TestClient) -> None:
    kept = client.get("/healthz", headers={"X-Request-ID": "ois-1234.abc_X"})
    assert kept.headers["x-request-id"] == "ois-1234.abc_X"
    for unsafe in ("has space", "a" * 65, "semi;colon", ""):
        replaced = client.get("/healthz", headers={"X-Request-ID": unsafe})
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"]), unsafe
    first, second = client.get("/healthz"), client.get("/healthz")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_an_unexpected_error_is_a_bare_500_logged_with_its_request_id(
    client: TestClient, app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise RuntimeError("Doe^Jane in a message that must not reach a client")

    app.dependency_overrides[get_dispatcher] = broken
    with caplog.at_level(logging.ERROR):
        response = client.get("/readyz", headers={"X-Request-ID": "boom-1"})
    app.dependency_overrides.clear()

    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "boom-1"
    problem = response.json()
    assert problem["code"] == "internal-error" and "boom-1" in problem["detail"]
    assert "Doe^Jane" not in response.text and "Traceback" not in response.text
    assert any(record.exc_info and "RuntimeError" in record.getMessage() for record in caplog.records)
    assert client.get("/healthz").status_code == 200


def test_the_log_filter_stamps_the_request_id() -> None:
    record = logging.LogRecord("service", logging.INFO, __file__, 1, "job queued", None, None)
    token = REQUEST_ID.set("req-7")
    try:
        assert RequestIdLogFilter().filter(record) and record.request_id == "req-7"
    finally:
        REQUEST_ID.reset(token)


def test_readiness_reports_each_check(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {name: {"ok": True, "detail": None} for name in ("database", "storage", "broker", "model")},
    }


def test_readiness_is_503_with_reasons(settings: Settings) -> None:
    settings.storage_root.parent.mkdir(parents=True, exist_ok=True)
    settings.storage_root.write_text("a file where the storage folder should be")
    # The default database lives under the storage root, which is now a file: neither works.
    app = create_app(settings)
    app.dependency_overrides[get_dispatcher] = broker_down
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert response.json()["status"] == "unavailable"
    assert not checks["database"]["ok"] and not checks["storage"]["ok"] and not checks["broker"]["ok"]
    assert "broker" in checks["broker"]["detail"]


def test_metrics_count_requests_by_route_template(client: TestClient) -> None:
    for _ in range(2):
        client.get(f"/v1/jobs/{'b' * 32}", headers=AUTH)
    text = client.get("/metrics", headers=AUTH).text
    assert 'rtinjury_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"} 2.0' in text
    assert 'rtinjury_jobs{state="queued"} 0.0' in text
    assert "# TYPE rtinjury_stage_duration_seconds histogram" in text


def test_apps_do_not_share_metrics(settings: Settings) -> None:
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        first.get("/healthz")
        assert 'route="/healthz"' not in second.get("/metrics", headers=AUTH).text


def test_the_api_process_never_imports_torch() -> None:
    script = textwrap.dedent(
        """
        import sys, tempfile
        from fastapi.testclient import TestClient
        from service.config import Settings
        from service.main import create_app
        settings = Settings(storage_root=tempfile.mkdtemp(), api_key="k" * 20)
        with TestClient(create_app(settings)) as client:
            assert client.get("/readyz").status_code == 200
            assert client.get("/v1/jobs", headers={"Authorization": "Bearer " + "k" * 20}).status_code == 200
        print("torch" in sys.modules)
        """
    )
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
