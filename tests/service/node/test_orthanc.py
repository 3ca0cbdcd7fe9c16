"""The node with a real PACS on loopback: Orthanc pushes a study in, our results go back.

Orthanc (../shared/tools/orthanc-up.sh) holds a synthetic patient and sends it to ``rtinjury
node`` through its REST ``/modalities/{id}/store``; the node completes the study after its
quiet period, the embedded worker runs the job, and the deliver stage stores SEG, RTSTRUCT and
SR back in Orthanc, where they are read through Orthanc's REST API and checked with dciodvfy.
Sending the study again runs nothing new.
"""

from __future__ import annotations

import json
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
from sqlalchemy import select

from service.db import Database, JobRecord, NodeStudy
from tests.conftest import SHARED_DATA

pytestmark = [pytest.mark.slow, pytest.mark.tools]

TOOLS = SHARED_DATA.parent / "tools"
QUIET_PERIOD_S = 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Setup:
    orthanc: httpx.Client
    storage: Path
    database: Database
    node_log: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("orthanc-node")
    dicom_port, http_port, node_port = _free_port(), _free_port(), _free_port()
    started = subprocess.run(
        [
            "bash",
            str(TOOLS / "orthanc-up.sh"),
            str(root / "orthanc"),
            str(dicom_port),
            str(http_port),
            "RTINJURY",
            str(node_port),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if started.returncode != 0:
        pytest.fail(f"Orthanc did not start (.ci/run installs it): {started.stderr[-2000:]}", pytrace=False)
    routes = root / "routes.yaml"
    routes.write_text(
        "version: 1\n"
        f"destinations:\n  orthanc: {{ae_title: ORTHANC, host: 127.0.0.1, port: {dicom_port}}}\n"
        "routes:\n  - name: every-follow-up\n    destinations: [orthanc]\n"
    )
    storage = root / "storage"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTINJURY_")}
    env |= {
        "RTINJURY_STORAGE_ROOT": str(storage),
        "RTINJURY_NODE_PORT": str(node_port),
        "RTINJURY_NODE_PEERS": json.dumps([{"ae_title": "ORTHANC", "host": "127.0.0.1"}]),
        "RTINJURY_NODE_QUIET_PERIOD_S": str(QUIET_PERIOD_S),
        "RTINJURY_NODE_ROUTES": str(routes),
        "RTINJURY_SEND_BACKOFF_S": "0.5",
    }
    node_log = root / "node.log"
    with node_log.open("wb") as out:
        node = subprocess.Popen(
            [sys.executable, "-m", "service.cli.main", "node"], env=env, stdout=out, stderr=out
        )
    try:
        _wait_listening(node_port, node, node_log)
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=120) as orthanc:
            yield Setup(orthanc, storage, Database(f"sqlite:///{storage / 'rtinjury.db'}"), node_log)
    finally:
        node.terminate()
        try:
            node.wait(60)
        except subprocess.TimeoutExpired:
            node.kill()
        subprocess.run(["bash", str(TOOLS / "orthanc-up.sh"), "--stop", str(root / "orthanc")], timeout=60)


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"rtinjury node exited:\n{log.read_text()[-3000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail("rtinjury node did not listen within 60 s")


def _upload_to_orthanc(orthanc: httpx.Client, patient: Path) -> str:
    """Store the patient's files in Orthanc; returns its Orthanc patient id."""
    ids = set()
    for path in sorted(patient.rglob("*.dcm")):
        if "ground_truth" in path.parts:
            continue
        answer = orthanc.post("/instances", content=path.read_bytes())
        assert answer.status_code == 200, answer.text
        ids.add(answer.json()["ParentPatient"])
    [patient_id] = ids
    return str(patient_id)


def _push_to_node(orthanc: httpx.Client, patient_id: str) -> None:
    answer = orthanc.post("/modalities/RTINJURY/store", json={"Resources": [patient_id], "Synchronous": True})
    assert answer.status_code == 200, answer.text


def _wait_for(what: str, check, timeout_s: float, log: Path):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"{what} did not happen within {timeout_s} s; node log:\n{log.read_text()[-3000:]}")


def _our_series(orthanc: httpx.Client) -> dict[str, list[str]]:
    """Modality → Orthanc instance ids of what we sent back (SEG, RTSTRUCT, SR)."""
    found: dict[str, list[str]] = {}
    for modality in ("SEG", "RTSTRUCT", "SR"):
        query = {"Level": "Instance", "Query": {"Modality": modality}, "Expand": False}
        answer = orthanc.post("/tools/find", json=query)
        assert answer.status_code == 200, answer.text
        if answer.json():
            found[modality] = answer.json()
    return found


def test_a_study_pushed_by_orthanc_comes_back_as_valid_results(
    setup: Setup, orn_patient: Path, tmp_path: Path
) -> None:
    orthanc = setup.orthanc
    patient_id = _upload_to_orthanc(orthanc, orn_patient)
    _push_to_node(orthanc, patient_id)

    results = _wait_for(
        "SEG, RTSTRUCT and SR in Orthanc",
        lambda: len(_our_series(orthanc)) == 3 and _our_series(orthanc),
        300,
        setup.node_log,
    )
    files = []
    for modality, [instance] in results.items():
        path = tmp_path / f"{modality}.dcm"
        path.write_bytes(orthanc.get(f"/instances/{instance}/file").content)
        assert pydicom.dcmread(path).Modality == modality
        files.append(path)
    validated = subprocess.run(
        ["bash", str(TOOLS / "dicom-validate.sh"), *map(str, files)], capture_output=True, text=True
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr

    with setup.database.session() as session:
        [job] = session.scalars(select(JobRecord).where(JobRecord.source == "node"))
        [study] = session.scalars(select(NodeStudy))
        assert study.state == "complete" and study.job_ids == [job.id]
    # The record follows the job folder's status when the API reads it; the folder is the truth.
    status = json.loads((setup.storage / "jobs" / job.id / "status.json").read_text())
    assert status["state"] == "succeeded"
    [delivery] = status["deliveries"]
    assert (delivery["destination"], delivery["state"], delivery["sent"]) == ("orthanc", "sent", 3)

    # The same study again: stored once, same input set, no second job.
    _push_to_node(orthanc, patient_id)
    time.sleep(QUIET_PERIOD_S + 3)
    with setup.database.session() as session:
        assert len(list(session.scalars(select(JobRecord)))) == 1
        [study] = session.scalars(select(NodeStudy))
        assert not study.pending and study.job_ids == [job.id]
    assert {m: len(ids) for m, ids in _our_series(orthanc).items()} == {"SEG": 1, "RTSTRUCT": 1, "SR": 1}
