"""Bad requests end as specific problems, leave nothing behind, and the server keeps serving.

Each case runs beside a job that was already accepted: it must stay intact.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api.deps import get_dispatcher
from service.config import Settings
from tests.service.api.conftest import API_KEY, AUTH, broker_down, upload, zip_folders
from worker.jobs.folder import JobFolder


@pytest.fixture
def earlier_job(client: TestClient, small_patients: dict[str, Path]) -> str:
    response = upload(client, zip_folders(small_patients["first"]))
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


@pytest.fixture(autouse=True)
def _server_still_serves(
    request: pytest.FixtureRequest, client: TestClient, settings: Settings, earlier_job: str
) -> Iterator[None]:
    """After every bad request: /healthz answers, the earlier job is intact, nothing new is kept."""
    yield
    assert client.get("/healthz").status_code == 200
    assert client.get(f"/v1/jobs/{earlier_job}", headers=AUTH).json()["state"] == "queued"
    assert JobFolder.under(settings.storage_root, earlier_job).inputs.is_dir()
    assert [p.name for p in settings.jobs_root.iterdir()] == [earlier_job]
    assert client.get("/v1/jobs", headers=AUTH).json()["count"] == 1


def assert_problem(response: object, status: int, code: str, *words: str) -> dict[str, object]:
    from httpx2 import Response

    assert isinstance(response, Response)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, object] = response.json()
    assert problem["code"] == code and problem["type"] == f"urn:rtinjury:problem:{code}"
    for word in words:
        assert word in str(problem["detail"]), problem["detail"]
    return problem


def test_no_key_is_401_with_a_bearer_challenge(client: TestClient, small_patients: dict[str, Path]) -> None:
    response = upload(client, zip_folders(small_patients["first"]), headers={})
    assert_problem(response, 401, "unauthorized", "Authorization: Bearer")
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_wrong_key_is_401(client: TestClient, small_patients: dict[str, Path]) -> None:
    response = upload(client, zip_folders(small_patients["first"]), headers={"Authorization": "Bearer nope"})
    assert_problem(response, 401, "unauthorized", "not valid")
    assert "invalid_token" in response.headers["www-authenticate"]
    basic = client.get("/v1/jobs", headers={"Authorization": f"Basic {API_KEY}"})
    assert_problem(basic, 401, "unauthorized")


def test_a_wrong_task_is_422_naming_the_field(client: TestClient, small_patients: dict[str, Path]) -> None:
    problem = assert_problem(
        upload(client, zip_folders(small_patients["first"]), task="lung"),
        422,
        "validation-error",
        "body.task",
    )
    assert problem["errors"] == [
        {"loc": ["body", "task"], "msg": "Input should be 'orn', 'ce' or 'crn'", "type": "literal_error"}
    ]


def test_a_task_the_followup_does_not_suit_is_422(
    client: TestClient, small_patients: dict[str, Path]
) -> None:
    response = upload(client, zip_folders(small_patients["first"]), task="orn")
    assert_problem(response, 422, "invalid-study", "no follow-up series suits task 'orn'")


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"clinical": "{not json"}, "body.clinical"),
        ({"clinical": '{"prescription_gy": -5}'}, "body.clinical.prescription_gy"),
        ({"clinical": '{"name": "Doe^Jane"}'}, "body.clinical.name"),
        ({"options": '{"gate_margin_mm": 500}'}, "body.options.gate_margin_mm"),
        ({"tau": "1.5"}, "body.tau"),
        ({"followup_series_uid": "1.2.x"}, "body.followup_series_uid"),
        ({"colour": "red"}, "body.colour"),
    ],
)
def test_bad_form_fields_are_422(
    client: TestClient, small_patients: dict[str, Path], fields: dict[str, str], where: str
) -> None:
    problem = assert_problem(
        upload(client, zip_folders(small_patients["first"]), **fields), 422, "validation-error", where
    )
    # The offending values are not echoed (clinical text may hold anything).
    assert "Doe^Jane" not in str(problem)


def test_a_zip_with_parent_entries_is_refused(client: TestClient, small_patients: dict[str, Path]) -> None:
    body = zip_folders(small_patients["first"], extra={"../../escape.dcm": b"DICM"})
    assert_problem(upload(client, body), 422, "invalid-archive", "unsafe path")


def test_a_zip_bomb_is_refused(client: TestClient) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.dcm", b"\0" * (32 * 1024 * 1024))
    assert_problem(upload(client, buffer.getvalue()), 422, "invalid-archive", "zip bomb")


def test_a_non_dicom_file_is_422(client: TestClient) -> None:
    response = upload(client, b"patient list\nDoe, Jane\n", name="notes.txt")
    problem = assert_problem(response, 422, "invalid-study", "no DICOM instances found")
    assert "notes.txt" not in str(problem)


def test_a_dose_in_another_frame_of_reference_is_422(client: TestClient, dose_elsewhere_zip: bytes) -> None:
    assert_problem(upload(client, dose_elsewhere_zip), 422, "invalid-study", "frame of reference")


def test_two_patients_are_422(client: TestClient, small_patients: dict[str, Path]) -> None:
    body = zip_folders(small_patients["first"], small_patients["second"])
    assert_problem(upload(client, body), 422, "invalid-study", "2 different patients")


def test_an_upload_over_the_limit_is_413(client: TestClient, app: object, settings: Settings) -> None:
    settings.max_upload_bytes = 64 * 1024
    response = upload(client, b"\0" * (settings.max_upload_bytes + 1))
    assert_problem(response, 413, "upload-too-large", "RTINJURY_MAX_UPLOAD_BYTES")


def test_an_upload_over_the_limit_without_a_length_is_cut_off(client: TestClient, settings: Settings) -> None:
    settings.max_upload_bytes = 64 * 1024
    boundary = "rtinjury-test-boundary"

    def chunked_body() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.dcm"\r\n\r\n'
        ).encode()
        for _ in range(100):
            yield b"\0" * 4096
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/v1/jobs",
        content=chunked_body(),
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_problem(response, 413, "upload-too-large")


def test_too_many_files_is_413(client: TestClient, settings: Settings) -> None:
    settings.max_upload_files = 2
    files = [("files", (f"{n}.dcm", b"x", "application/dicom")) for n in range(3)]
    assert_problem(client.post("/v1/jobs", files=files, headers=AUTH), 413, "too-many-files")


def test_no_files_is_422(client: TestClient) -> None:
    response = client.post("/v1/jobs", files=[("task", (None, "orn"))], headers=AUTH)
    assert_problem(response, 422, "validation-error", "body.files")


def test_files_in_another_field_are_422(client: TestClient, small_patients: dict[str, Path]) -> None:
    body = zip_folders(small_patients["first"])
    response = client.post("/v1/jobs", files=[("file", ("study.zip", body, "application/zip"))], headers=AUTH)
    assert_problem(response, 422, "validation-error", "body.file")


def test_a_body_that_is_not_multipart_is_415(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={"task": "orn"}, headers=AUTH)
    assert_problem(response, 415, "unsupported-media-type", "multipart/form-data")


def test_a_truncated_multipart_body_is_400(client: TestClient) -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.dcm"\r\n\r\nDICM'
    response = client.post(
        "/v1/jobs", content=body, headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"}
    )
    assert_problem(response, 400, "malformed-upload")


def test_a_broker_that_is_down_is_503_and_keeps_nothing(
    client: TestClient, app: FastAPI, small_patients: dict[str, Path]
) -> None:
    app.dependency_overrides[get_dispatcher] = broker_down
    try:
        response = upload(client, zip_folders(small_patients["first"]))
    finally:
        app.dependency_overrides.clear()
    assert_problem(response, 503, "broker-unavailable", "send it again")


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/audit-events", "/v1/studies"])
def test_an_offset_past_what_a_database_takes_is_422(client: TestClient, path: str) -> None:
    # SQLite's OFFSET is a 64-bit integer: a larger one used to reach it and answer 500.
    response = client.get(path, params={"offset": 2**80}, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation-error"
    assert client.get(path, params={"offset": 2**31 - 1}, headers=AUTH).status_code == 200
