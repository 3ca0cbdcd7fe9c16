"""Tenancy: a key acts on its own jobs only; another owner's job answers as one that does not
exist, on every job route; an admin key sees and acts on every job, the DICOM node's included."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.db import Database
from service.jobs import admit_job
from service.node.studies import NODE_OWNER
from tests.service.api.conftest import (
    ADMIN_KEY,
    TENANT_A_KEY,
    TENANT_B_KEY,
    bearer,
    owner_of_key,
    upload,
    zip_folders,
)
from tests.service.api.test_jobs import finish
from worker.dispatch import get_dispatcher
from worker.jobs.folder import JobFolder
from worker.jobs.spec import JobSpec

CLICKS = {"clicks": [{"point_mm": [1.0, -2.5, 30.0], "positive": True}]}


@dataclass(frozen=True)
class Jobs:
    a: str
    b: str
    node: str


def node_job(settings: Settings, patient: Path) -> str:
    """A job made as the DICOM node makes one (``admit_job`` with the node's owner)."""
    folder = JobFolder.under(settings.storage_root, uuid.uuid4().hex).create()
    for number, path in enumerate(sorted(patient.rglob("*.dcm"))):
        shutil.copyfile(path, folder.inputs / f"{number:06d}.dcm")
    database = Database(settings.sqlalchemy_url)
    with database.session() as session:
        record = admit_job(
            session, settings, get_dispatcher(settings), folder, JobSpec(), NODE_OWNER, source="node"
        )
    database.dispose()
    return record.id


@pytest.fixture
def jobs(scoped_client: TestClient, scoped_settings: Settings, small_patients: dict[str, Path]) -> Jobs:
    """One succeeded job of tenant A, one queued job of tenant B, one succeeded job of the node."""
    body = zip_folders(small_patients["first"])
    made = [upload(scoped_client, body, headers=bearer(key)) for key in (TENANT_A_KEY, TENANT_B_KEY)]
    assert all(response.status_code == 202 for response in made), [r.text for r in made]
    a, b = (response.json()["id"] for response in made)
    node = node_job(scoped_settings, small_patients["second"])
    finish(scoped_settings, a)
    finish(scoped_settings, node)
    return Jobs(a=a, b=b, node=node)


def job_routes(job_id: str) -> list[tuple[str, str, dict[str, object] | None]]:
    """Every route that names a job: (method, path, JSON body)."""
    return [
        ("GET", f"/v1/jobs/{job_id}", None),
        ("GET", f"/v1/jobs/{job_id}/results/seg", None),
        ("POST", f"/v1/jobs/{job_id}/refine", CLICKS),
        ("POST", f"/v1/jobs/{job_id}/deliver", None),
        ("DELETE", f"/v1/jobs/{job_id}", None),
    ]


def listed(client: TestClient, key: str, **params: str) -> set[str]:
    response = client.get("/v1/jobs", params=params, headers=bearer(key))
    assert response.status_code == 200, response.text
    return {job["id"] for job in response.json()["data"]}


def test_another_owners_job_answers_as_a_job_that_does_not_exist(
    scoped_client: TestClient, jobs: Jobs
) -> None:
    for key, foreign in ((TENANT_B_KEY, jobs.a), (TENANT_A_KEY, jobs.b), (TENANT_A_KEY, jobs.node)):
        for (method, path, body), (_, unknown_path, _) in zip(
            job_routes(foreign), job_routes(uuid.uuid4().hex), strict=True
        ):
            answer = scoped_client.request(method, path, json=body, headers=bearer(key))
            unknown = scoped_client.request(method, unknown_path, json=body, headers=bearer(key))
            assert answer.status_code == unknown.status_code == 404, (method, path, answer.text)
            for field in ("type", "title", "status", "detail", "code"):
                assert answer.json()[field] == unknown.json()[field], (method, path, field)
    # Nothing was changed on the way: tenant A's job is still there and still succeeded.
    own = scoped_client.get(f"/v1/jobs/{jobs.a}", headers=bearer(TENANT_A_KEY))
    assert own.status_code == 200 and own.json()["state"] == "succeeded" and own.json()["refinements"] == 0


def test_a_listing_shows_the_callers_own_jobs_and_an_admin_every_job(
    scoped_client: TestClient, jobs: Jobs
) -> None:
    assert listed(scoped_client, TENANT_A_KEY) == {jobs.a}
    assert listed(scoped_client, TENANT_B_KEY) == {jobs.b}
    assert listed(scoped_client, ADMIN_KEY) == {jobs.a, jobs.b, jobs.node}
    assert listed(scoped_client, ADMIN_KEY, owner=owner_of_key(TENANT_B_KEY)) == {jobs.b}
    assert listed(scoped_client, TENANT_A_KEY, state="succeeded") == {jobs.a}
    refused = scoped_client.get(
        "/v1/jobs", params={"owner": owner_of_key(TENANT_A_KEY)}, headers=bearer(TENANT_A_KEY)
    )
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"


def test_an_owner_acts_on_its_own_job(scoped_client: TestClient, jobs: Jobs) -> None:
    auth = bearer(TENANT_A_KEY)
    assert scoped_client.get(f"/v1/jobs/{jobs.a}/results/seg", headers=auth).content == b"seg bytes"
    no_destinations = scoped_client.post(f"/v1/jobs/{jobs.a}/deliver", headers=auth)
    assert no_destinations.status_code == 409 and no_destinations.json()["code"] == "no-destinations"
    assert scoped_client.post(f"/v1/jobs/{jobs.a}/refine", json=CLICKS, headers=auth).status_code == 202


def test_an_admin_acts_on_every_job_the_nodes_included(
    scoped_client: TestClient, scoped_settings: Settings, jobs: Jobs
) -> None:
    auth = bearer(ADMIN_KEY)
    node = scoped_client.get(f"/v1/jobs/{jobs.node}", headers=auth).json()
    assert (node["owner"], node["source"], node["state"]) == (NODE_OWNER, "node", "succeeded")
    assert scoped_client.get(f"/v1/jobs/{jobs.b}", headers=auth).json()["owner"] == owner_of_key(TENANT_B_KEY)
    assert scoped_client.get(f"/v1/jobs/{jobs.a}/results/seg", headers=auth).content == b"seg bytes"
    assert scoped_client.post(f"/v1/jobs/{jobs.a}/refine", json=CLICKS, headers=auth).status_code == 202
    assert (
        scoped_client.post(f"/v1/jobs/{jobs.node}/deliver", headers=auth).json()["code"] == "no-destinations"
    )
    busy = scoped_client.delete(f"/v1/jobs/{jobs.b}", headers=auth)
    assert busy.status_code == 409 and busy.json()["code"] == "job-busy"
    assert scoped_client.delete(f"/v1/jobs/{jobs.node}", headers=auth).status_code == 204
    assert not JobFolder.under(scoped_settings.storage_root, jobs.node).exists()
    assert listed(scoped_client, ADMIN_KEY) == {jobs.a, jobs.b}


def test_studies_are_for_admin_keys(scoped_client: TestClient) -> None:
    for key in (TENANT_A_KEY, TENANT_B_KEY):
        refused = scoped_client.get("/v1/studies", headers=bearer(key))
        assert refused.status_code == 403 and "scope admin" in refused.json()["detail"]
    assert scoped_client.get("/v1/studies", headers=bearer(ADMIN_KEY)).status_code == 200
