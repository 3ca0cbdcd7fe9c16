"""The product as a hospital runs it: ``rtinjury serve`` and workers as real processes.

Two topologies, same client code: production (API without a worker, a ``cpu`` and a ``gpu``
worker on the real Redis) and embedded (``rtinjury serve`` alone: no Redis). A synthetic
patient is uploaded as a zip, followed stage by stage, downloaded, validated with dciodvfy,
refined with a click and deleted.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pydicom
import pytest
import redis

from tests.conftest import SHARED_DATA
from tests.service.api.conftest import zip_folders

pytestmark = [pytest.mark.slow, pytest.mark.tools]

API_KEY = "e2e-key-0123456789abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
REDIS_URL = "redis://127.0.0.1:6379/12"
VALIDATE = SHARED_DATA.parent / "tools" / "dicom-validate.sh"
STAGE_ORDER = ["assemble", "read", "register", "dose", "prompts", "infer", "export"]


@dataclass
class Service:
    url: str
    storage: Path
    processes: list[subprocess.Popen[bytes]]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli.main", *args], env=env, stdout=out, stderr=out
        )


@pytest.fixture(scope="module", params=["redis", "embedded"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp(f"service-{request.param}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTINJURY_")}
    env |= {"RTINJURY_STORAGE_ROOT": str(root / "storage"), "RTINJURY_API_KEY": API_KEY}
    processes = []
    if request.param == "redis":
        try:
            redis.Redis.from_url(REDIS_URL).flushdb()
        except redis.ConnectionError:
            pytest.fail("Redis does not answer on 127.0.0.1:6379 (.ci/run starts one)", pytrace=False)
        env["RTINJURY_BROKER_URL"] = REDIS_URL
        processes.append(
            _start(["worker", "--queues", "cpu", "--pool", "solo"], env, root / "worker-cpu.log")
        )
        processes.append(
            _start(["worker", "--queues", "gpu", "--pool", "solo"], env, root / "worker-gpu.log")
        )
    port = _free_port()
    processes.append(_start(["serve", "--port", str(port)], env, root / "serve.log"))
    url = f"http://127.0.0.1:{port}"
    _wait_for_health(url, processes, root)
    yield Service(url, root / "storage", processes)
    for process in reversed(processes):
        process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail("a service process did not stop on SIGTERM within 30 s")


def _wait_for_health(url: str, processes: list[subprocess.Popen[bytes]], root: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            logs = "".join(p.read_text()[-2000:] for p in root.glob("*.log"))
            pytest.fail(f"a service process exited early:\n{logs}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail("the API did not answer /healthz within 90 s")


def _follow(client: httpx.Client, job_id: str, timeout_s: float = 300) -> tuple[dict, list[str], list[int]]:
    """Poll the job as a client does; the last answer, the stages seen and the progress seen."""
    stages: list[str] = []
    progress: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = client.get(f"/v1/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        job = answer.json()
        progress.append(job["progress"])
        if job["stage"] and (not stages or stages[-1] != job["stage"]):
            stages.append(job["stage"])
        if job["state"] in ("succeeded", "failed"):
            return job, stages, progress
        time.sleep(0.1)
    pytest.fail(f"job {job_id} did not finish in {timeout_s} s")


def test_a_zip_goes_through_every_stage_and_comes_back_as_valid_dicom(
    service: Service, orn_patient: Path, tmp_path: Path
) -> None:
    with httpx.Client(base_url=service.url, headers=AUTH, timeout=60) as client:
        created = client.post(
            "/v1/jobs",
            files=[("files", ("patient.zip", zip_folders(orn_patient), "application/zip"))],
            data={"task": "orn", "clinical_text": "mandibular pain", "clinical": '{"months_since_rt": 14}'},
        )
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        assert created.headers["location"] == f"/v1/jobs/{job_id}"

        job, stages, progress = _follow(client, job_id)
        assert job["state"] == "succeeded", job["error"]
        assert stages == [s for s in STAGE_ORDER if s in stages] and {"register", "infer"} <= set(stages)
        assert progress == sorted(progress) and progress[-1] == 100
        assert set(STAGE_ORDER) <= set(job["timings_s"])

        files = {}
        for name in ("seg", "rtstruct", "sr", "report", "preview"):
            download = client.get(f"/v1/jobs/{job_id}/results/{name}")
            assert download.status_code == 200, download.text
            files[name] = tmp_path / f"{name}.bin"
            files[name].write_bytes(download.content)
        assert download.headers["content-type"] == "image/png"
        assert pydicom.dcmread(files["seg"]).Modality == "SEG"
        assert pydicom.dcmread(files["rtstruct"]).Modality == "RTSTRUCT"
        validated = subprocess.run(
            ["bash", str(VALIDATE), str(files["seg"]), str(files["rtstruct"])], capture_output=True, text=True
        )
        assert validated.returncode == 0, validated.stdout + validated.stderr
        lesion = client.get(f"/v1/jobs/{job_id}/results/report").json()["lesion"]
        assert not lesion["empty"]

        refined = client.post(
            f"/v1/jobs/{job_id}/refine",
            json={"clicks": [{"point_mm": lesion["centroid_mm"], "positive": False}]},
        )
        assert refined.status_code == 202, refined.text
        job, stages, _ = _follow(client, job_id)
        assert job["state"] == "succeeded" and job["refinements"] == 1
        assert "register" not in stages
        after = client.get(f"/v1/jobs/{job_id}/results/report").json()["lesion"]
        assert after["volume_cc"] < lesion["volume_cc"]

        assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404
        assert not (service.storage / "jobs" / job_id).exists()


def test_readiness_names_each_dependency(service: Service) -> None:
    ready = httpx.get(f"{service.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert "broker" in ready.text and "database" in ready.text
