"""Found by benchmarks/load.py: at 50 clients polling and downloading, the API stalled for 30 s
and then answered 500 (SQLAlchemy's QueuePool timeout). Every worker thread was waiting for a
database connection, and every connection was held by a request that needed a worker thread to
finish (to validate its response, or to stream its download).

Reproduced in one process, small: the real engine and app, two worker threads (failure
injection: a busy server), many more requests at once than the pool keeps connections. Every
answer must be 200.
"""

from __future__ import annotations

import asyncio
import io
import zipfile
from pathlib import Path

import anyio.to_thread
import httpx2 as httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from tests.patients import write_patient
from worker.jobs.folder import JobFolder
from worker.jobs.status import JobState, read_status, write_status
from worker.stages.export.files import OUTPUT_FILES

API_KEY = "pool-test-key-0123456789abcdefghij"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: Requests in flight together: several times the connections the pool keeps open.
CONCURRENT_REQUESTS = 48


def _zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*.dcm")):
            archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def _succeeded_job(app: FastAPI, settings: Settings, patient: Path) -> str:
    """A job uploaded for real, then finished as the worker finishes one (status and outputs)."""
    with TestClient(app) as client:
        files = [("files", ("patient.zip", _zip(patient), "application/zip"))]
        created = client.post("/v1/jobs", headers=AUTH, files=files)
        assert created.status_code == 202, created.text
    job_id: str = created.json()["id"]
    folder = JobFolder.under(settings.storage_root, job_id)
    status = read_status(folder.status_path)
    status.state, status.stage, status.progress = JobState.SUCCEEDED, None, 100
    write_status(status, folder.status_path)
    for file_name in OUTPUT_FILES.values():
        (folder.outputs / file_name).write_bytes(b"\0" * 300_000)
    return job_id


async def _at_once(app: FastAPI, job_id: str) -> list[int]:
    # Failure injection: two worker threads for the whole process.
    anyio.to_thread.current_default_thread_limiter().total_tokens = 2
    paths = [f"/v1/jobs/{job_id}/results/seg", f"/v1/jobs/{job_id}"] * (CONCURRENT_REQUESTS // 2)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=AUTH) as client:
        answers = await asyncio.gather(*(client.get(path) for path in paths))
    return [answer.status_code for answer in answers]


@pytest.mark.timeout(150)
def test_many_reads_and_downloads_at_once_on_few_threads_all_succeed(tmp_path: Path) -> None:
    settings = Settings(storage_root=tmp_path / "storage", api_key=API_KEY)
    app = create_app(settings)
    job_id = _succeeded_job(app, settings, write_patient(tmp_path / "patient").root)

    statuses = asyncio.run(_at_once(app, job_id))

    assert statuses == [200] * CONCURRENT_REQUESTS
