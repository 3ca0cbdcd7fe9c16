"""The audit trail: one row per job route call, allowed or refused, readable by admin keys only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from service.config import Settings
from tests.service.api.conftest import (
    ADMIN_KEY,
    API_KEY,
    READ_KEY,
    TENANT_A_KEY,
    TENANT_B_KEY,
    bearer,
    owner_of_key,
    upload,
    zip_folders,
)
from tests.service.api.test_jobs import finish


def events(client: TestClient, **params: str | int) -> list[dict[str, Any]]:
    response = client.get("/v1/audit-events", params=params, headers=bearer(ADMIN_KEY))
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def call(client: TestClient, method: str, path: str, key: str, request_id: str, **kwargs: Any) -> int:
    response = client.request(method, path, headers={**bearer(key), "X-Request-ID": request_id}, **kwargs)
    return response.status_code


def test_allowed_and_refused_calls_leave_one_row_each_newest_first(
    scoped_client: TestClient, scoped_settings: Settings, small_patients: dict[str, Path]
) -> None:
    submitted = upload(
        scoped_client,
        zip_folders(small_patients["first"]),
        headers={**bearer(TENANT_A_KEY), "X-Request-ID": "r-submit"},
    )
    job_id = submitted.json()["id"]
    finish(scoped_settings, job_id)
    a, b = owner_of_key(TENANT_A_KEY), owner_of_key(TENANT_B_KEY)
    statuses = [
        call(scoped_client, "GET", f"/v1/jobs/{job_id}", TENANT_A_KEY, "r-read"),
        call(scoped_client, "GET", f"/v1/jobs/{job_id}/results/seg", TENANT_A_KEY, "r-download"),
        call(scoped_client, "GET", f"/v1/jobs/{job_id}", TENANT_B_KEY, "r-foreign"),
        call(scoped_client, "DELETE", f"/v1/jobs/{job_id}", READ_KEY, "r-no-scope"),
        call(scoped_client, "GET", "/v1/jobs", TENANT_B_KEY, "r-list"),
        call(scoped_client, "GET", f"/v1/jobs/{job_id}", "not-a-key-at-all-0123", "r-no-key"),
    ]
    assert [submitted.status_code, *statuses] == [202, 200, 200, 404, 403, 200, 401]

    rows = [
        (e["owner"], e["action"], e["job_id"], e["result"], e["status"], e["request_id"])
        for e in events(scoped_client)
    ]
    # A request without a valid key has no owner to record: it is counted by /metrics only.
    assert rows == [
        (b, "list", None, None, 200, "r-list"),
        (owner_of_key(READ_KEY), "delete", job_id, None, 403, "r-no-scope"),
        (b, "read", job_id, None, 404, "r-foreign"),
        (a, "download", job_id, "seg", 200, "r-download"),
        (a, "read", job_id, None, 200, "r-read"),
        (a, "submit", job_id, None, 202, "r-submit"),
    ]


def test_events_filter_by_job_and_owner_and_page(scoped_client: TestClient) -> None:
    job_ids = ["a" * 32, "b" * 32]
    for job_id in job_ids:
        for key in (TENANT_A_KEY, TENANT_B_KEY):
            scoped_client.get(f"/v1/jobs/{job_id}", headers=bearer(key))
    scoped_client.get("/v1/jobs/not-a-job-id", headers=bearer(TENANT_A_KEY))

    assert {e["owner"] for e in events(scoped_client, job_id=job_ids[0])} == {
        owner_of_key(TENANT_A_KEY),
        owner_of_key(TENANT_B_KEY),
    }
    by_a = events(scoped_client, owner=owner_of_key(TENANT_A_KEY))
    # A path id that is not a job id is kept out of the row (it is the client's text).
    assert [e["job_id"] for e in by_a] == [None, job_ids[1], job_ids[0]]
    page = scoped_client.get("/v1/audit-events", params={"limit": 2, "offset": 1}, headers=bearer(ADMIN_KEY))
    assert page.json()["count"] == 5 and len(page.json()["data"]) == 2
    assert [e["id"] for e in page.json()["data"]] == [e["id"] for e in events(scoped_client)][1:3]
    assert events(scoped_client)[0]["at"].endswith("Z") or "+00:00" in events(scoped_client)[0]["at"]


def test_the_audit_trail_is_for_admin_keys_and_holds_no_patient_data(
    scoped_client: TestClient, small_patients: dict[str, Path]
) -> None:
    submitted = upload(scoped_client, zip_folders(small_patients["first"]), headers=bearer(API_KEY))
    alias = submitted.json()["patient_alias"]
    for key in (TENANT_A_KEY, READ_KEY):
        refused = scoped_client.get("/v1/audit-events", headers=bearer(key))
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert (
        scoped_client.get("/v1/audit-events", params={"owner": "x"}, headers=bearer(ADMIN_KEY)).status_code
        == 422
    )
    trail = scoped_client.get("/v1/audit-events", headers=bearer(ADMIN_KEY))
    assert trail.json()["count"] == 1  # the submit; reading the trail is not a job route call
    assert "PAT001" not in trail.text and alias not in trail.text
