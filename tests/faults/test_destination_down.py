"""A destination PACS that is down when the results are ready.

The job is made as the DICOM node makes one (``admit_job`` with a route's destination), its
destination a loopback port where nothing listens. The job succeeds; the deliver stage tries
every attempt with its back-off (short here, by settings), then records the failure in the job
(which destination, how many sent and failed, why) without failing the job. Then a real peer
(dcmtk's storescp) listens on that port, a client asks for the delivery again, and every
object arrives.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from service.config import Settings
from service.db.engine import Database
from service.jobs import admit_job
from service.node.studies import NODE_OWNER
from tests.conftest import system_tool
from tests.faults.stack import ServiceProcess, Stack, free_port, redis_url, running_stack
from worker.dispatch import Dispatcher
from worker.jobs.folder import JobFolder
from worker.jobs.spec import Destination, JobOptions, JobSpec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

ATTEMPTS = 3
PACS_AE = "PACS"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("destination")
    settings = {"RTINJURY_SEND_ATTEMPTS": str(ATTEMPTS), "RTINJURY_SEND_BACKOFF_S": "0.2"}
    with running_stack(root, settings=settings) as stack:
        yield stack


def _node_job(stack: Stack, patient: Path, port: int) -> str:
    """A job with one destination, made the way the DICOM node makes its jobs."""
    settings = Settings(storage_root=stack.storage, broker_url=redis_url(stack.redis))
    spec = JobSpec(
        options=JobOptions(deformable=False),
        destinations=[Destination(name="pacs", ae_title=PACS_AE, host="127.0.0.1", port=port)],
    )
    folder = JobFolder.under(stack.storage, uuid.uuid4().hex).create()
    shutil.copytree(patient, folder.inputs, dirs_exist_ok=True)
    database = Database(settings.sqlalchemy_url)
    try:
        with database.session() as session:
            queue = Dispatcher(settings)
            return admit_job(session, settings, queue, folder, spec, NODE_OWNER, source="node").id
    finally:
        database.dispose()


def _delivery(stack: Stack, job_id: str, state: str) -> dict[str, Any]:
    def delivered() -> dict[str, Any] | None:
        deliveries = stack.job(job_id)["deliveries"]
        return deliveries[0] if deliveries and deliveries[0]["state"] == state else None

    return stack.wait_for(f"a delivery {state}", delivered, 240, every_s=0.25)


def test_sends_to_a_destination_that_is_down_are_retried_then_reported(
    stack: Stack, orn_patient: Path, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens here
    job_id = _node_job(stack, orn_patient, port)
    job = stack.wait_until_finished(job_id)
    assert job["state"] == "succeeded", job["error"]

    failed = _delivery(stack, job_id, "failed")
    assert (failed["destination"], failed["attempts"]) == ("pacs", ATTEMPTS)
    assert (failed["sent"], failed["failed"]) == (0, 3)
    assert failed["error"] == f"the association with {PACS_AE} could not be opened"
    job = stack.job(job_id)
    assert job["state"] == "succeeded" and job["links"]["results"], "a failed send fails no job"
    assert any("results not delivered to pacs" in warning for warning in job["warnings"])
    assert stack.worker.log_text().count("send to pacs: association could not be opened") == ATTEMPTS

    # The PACS is back: a resend stores every object.
    received = tmp_path / "received"
    received.mkdir()
    peer = _start_storescp(stack, port, received)
    try:
        with stack.client() as client:
            answer = client.post(f"/v1/jobs/{job_id}/deliver")
        assert answer.status_code == 202, answer.text
        sent = _delivery(stack, job_id, "sent")
    finally:
        peer.stop()
    assert (sent["sent"], sent["failed"], sent["error"]) == (3, 0, None)
    modalities = sorted(str(pydicom.dcmread(path).Modality) for path in received.iterdir())
    assert modalities == ["RTSTRUCT", "SEG", "SR"]


def _start_storescp(stack: Stack, port: int, folder: Path) -> ServiceProcess:
    """dcmtk's storescp on ``port``, storing into ``folder`` (stopped with the stack, if not before)."""
    tool = system_tool("storescp")
    if tool is None:
        pytest.fail("storescp (dcmtk) is not installed (.ci/run installs it)", pytrace=False)
    argv = [tool, "-aet", PACS_AE, "-od", str(folder), str(port)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    peer = ServiceProcess("storescp", argv, env, stack.root / "storescp.log").start()
    stack.extra.append(peer)

    def listening() -> bool | None:
        with socket.socket() as probe:
            return True if probe.connect_ex(("127.0.0.1", port)) == 0 else None

    stack.wait_for("storescp to listen", listening, 20, every_s=0.1)
    return peer
