"""An app on a temporary storage root with the real dispatcher (embedded: Celery's file-system
queue, no worker, so queued messages just wait), one API key, and real DICOM patients."""

from __future__ import annotations

import io
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from models.synth import write_synthetic_patients
from service.config import Settings
from service.main import create_app
from tests.patients import write_patient
from worker.dispatch import Dispatcher
from worker.settings import WorkerSettings

API_KEY = "test-key-0123456789abcdefghij"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def zip_folders(*folders: Path, extra: dict[str, bytes] | None = None) -> bytes:
    """A zip of the folders' files (each under its folder's name), plus ``extra`` entries."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder in folders:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    archive.write(path, f"{folder.name}/{path.relative_to(folder)}")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def _no_site_environment(no_site_environment: None) -> None:
    """The tests' settings are theirs alone: no RTINJURY_* of the machine (a broker URL …)."""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(storage_root=tmp_path / "storage", api_key=API_KEY)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="session")
def synthetic_patient(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic ORN patient (planning CT, RTPLAN, RTDOSE, follow-up CT, ground truth)."""
    return write_synthetic_patients(tmp_path_factory.mktemp("synth"), task="orn", cases=1, seed=9100)[0]


@pytest.fixture(scope="session")
def synthetic_zip(synthetic_patient: Path) -> bytes:
    return zip_folders(synthetic_patient)


@pytest.fixture(scope="session")
def small_patients(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small test patients (a few slices each): enough for the checks before queueing."""
    root = tmp_path_factory.mktemp("small")
    return {
        "first": write_patient(root / "first", patient_id="PAT001").root,
        "second": write_patient(root / "second", patient_id="PAT002").root,
    }


@pytest.fixture(scope="session")
def dose_elsewhere_zip(synthetic_patient: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The synthetic patient with its RTDOSE moved to another frame of reference."""
    copy = tmp_path_factory.mktemp("dose-elsewhere") / synthetic_patient.name
    shutil.copytree(synthetic_patient, copy)
    doses = [p for p in copy.rglob("*") if p.is_file() and _modality(p) == "RTDOSE"]
    assert doses, "the synthetic patient has an RTDOSE"
    for path in doses:
        dataset = pydicom.dcmread(path)
        dataset.FrameOfReferenceUID = pydicom.uid.generate_uid(entropy_srcs=["dose-elsewhere"])
        dataset.save_as(path, enforce_file_format=True)
    return zip_folders(copy)


def _modality(path: Path) -> str | None:
    if not pydicom.misc.is_dicom(path):  # case.json and the like
        return None
    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).Modality)


def upload(
    client: TestClient,
    body: bytes,
    *,
    name: str = "study.zip",
    headers: dict[str, str] | None = None,
    **fields: str,
) -> httpx.Response:
    """``POST /v1/jobs`` with one file part and form fields, as curl -F does."""
    return client.post(
        "/v1/jobs",
        files=[("files", (name, body, "application/octet-stream"))],
        data=fields,
        headers=AUTH if headers is None else headers,
    )


#: A Redis URL where nothing listens: the real dispatcher gives up on it in about a second.
CLOSED_BROKER = "redis://127.0.0.1:1/0"


def broker_down() -> Dispatcher:
    """The real dispatcher, its broker down (failure injected by configuration, not by a fake)."""
    return Dispatcher(WorkerSettings(broker_url=CLOSED_BROKER))


#: Keys configured by their hash lines, with scopes (``scoped_app``); API_KEY stays all-scopes.
TENANT_A_KEY = "tenant-a-key-0123456789abcdefgh"
TENANT_B_KEY = "tenant-b-key-0123456789abcdefgh"
SUBMIT_KEY = "submit-only-key-0123456789abcdef"
READ_KEY = "read-only-key-0123456789abcdefgh"
ADMIN_KEY = "admin-only-key-0123456789abcdefg"
KEY_SCOPES = {
    TENANT_A_KEY: "submit,read",
    TENANT_B_KEY: "submit,read",
    SUBMIT_KEY: "submit",
    READ_KEY: "read",
    ADMIN_KEY: "admin",
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def owner_of_key(key: str) -> str:
    from service.api.auth import hash_api_key, owner_of

    return owner_of(hash_api_key(key))


@pytest.fixture
def scoped_settings(tmp_path: Path) -> Settings:
    """Settings with one hash line per key of KEY_SCOPES (validated as the environment's are)."""
    from service.api.auth import hash_api_key

    lines = [f"{hash_api_key(key)};scopes={scopes}" for key, scopes in KEY_SCOPES.items()]
    return Settings(storage_root=tmp_path / "storage", api_key=API_KEY, api_key_hashes=lines)


@pytest.fixture
def scoped_client(scoped_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(scoped_settings)) as client:
        yield client
