"""A full storage root, really full (a small tmpfs, filled), met by each way data comes in.

The REST upload that does not fit is refused with 507 and leaves nothing behind; the DICOM
node answers C-STORE with 0xA700 (out of resources) for the instance that does not fit, files
no half of it and keeps what the association stored before; a stage that runs out of space
fails its job as ``storage-full`` (once, no retry, no traceback in the record). Each time the
service works again as soon as space is freed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from service.config import NodePeer, Settings
from service.db.engine import Database
from service.db.models import NodeInstance
from service.node.server import NodeServer
from tests.conftest import system_tool
from tests.factories import SeriesSpec, axial_positions, write_series
from tests.faults.stack import RIGID, Stack, fill, running_stack, tmpfs

pytestmark = pytest.mark.slow

PEER_AE = "PACS"
T = TypeVar("T")
MIB = 1024 * 1024


# -- the REST API and a stage: one stack whose storage root is a 32 MiB tmpfs -------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("disk-full")
    with tmpfs(root / "storage", "32m") as storage, running_stack(root, storage=storage) as stack:
        yield stack


@pytest.mark.timeout(120)
def test_an_upload_that_does_not_fit_is_refused_and_leaves_nothing(stack: Stack, patient_zip: bytes) -> None:
    filler = fill(stack.storage, leave_bytes=1 * MIB)  # the zip is 3 MiB: it starts, then cannot go on
    free_before = shutil.disk_usage(stack.storage).free
    with stack.client() as client:
        jobs_before = client.get("/v1/jobs").json()["count"]
        refused = client.post(
            "/v1/jobs", files=[("files", ("patient.zip", patient_zip, "application/zip"))], data=RIGID
        )
        assert refused.status_code == 507, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        problem = refused.json()
        assert problem["code"] == "storage-full" and "storage root is full" in problem["detail"]
        assert client.get("/v1/jobs").json()["count"] == jobs_before
    assert not any((stack.storage / "jobs").iterdir()), "a job folder of the refused upload was kept"
    assert not list(stack.storage.rglob("upload-*")), "a part of the refused upload was kept"
    # What the upload had written is free again (the database grew by the audit trail's row).
    assert shutil.disk_usage(stack.storage).free >= free_before - 128 * 1024

    filler.unlink()
    with stack.client() as client:
        ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text


@pytest.mark.timeout(300)
def test_a_stage_that_runs_out_of_space_fails_its_job_as_storage_full(
    stack: Stack, patient_zip: bytes
) -> None:
    job_id = stack.submit(patient_zip, **RIGID)  # space freed: taken again
    stack.wait_for_stage(job_id, "register")
    filler = fill(stack.storage)
    try:
        job = stack.wait_until_finished(job_id, timeout_s=180)
    finally:
        filler.unlink()
    assert job["state"] == "failed"
    assert job["error"]["code"] == "storage-full", job["error"]
    assert "storage root is full" in job["error"]["message"]
    assert "Traceback" not in str(job)
    assert not list(stack.job_folder(job_id).rglob("*partial*")), "half-written files were left"
    log = stack.worker.log_text()
    assert "Retry in" not in log, "a full disk is not a transient fault"
    with stack.client() as client:
        assert client.get("/readyz").status_code == 200


# -- the DICOM node: in this process, its storage root (and database) on an 8 MiB tmpfs ----------


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeServer]:
    with tmpfs(tmp_path / "storage", "8m") as storage:
        settings = Settings(
            storage_root=storage,
            node_peers=[NodePeer(ae_title=PEER_AE, host="127.0.0.1")],
            node_network_timeout_s=10,
            node_min_free_bytes=0,  # no floor: the disk itself runs out
        ).model_copy(update={"node_port": 0})
        database = Database(settings.sqlalchemy_url)
        server = NodeServer(settings, database)
        server.start()
        try:
            yield server
        finally:
            server.stop()
            database.dispose()


@pytest.mark.timeout(120)
def test_the_node_answers_out_of_resources_and_keeps_the_instances_before(
    node: NodeServer, tmp_path: Path
) -> None:
    small = write_series(SeriesSpec(axial_positions(3), name="small"), tmp_path / "small")
    large_spec = SeriesSpec(axial_positions(1), rows=512, cols=512, name="large")
    large = write_series(large_spec, tmp_path / "large")  # 512 KiB of pixels
    storage = node.settings.storage_root
    filler = fill(storage, leave_bytes=256 * 1024)

    result = _storescu(node, [small[0], small[1], large[0], small[2]])
    printed = result.stdout + result.stderr
    statuses = [int(code, 16) for code in re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", printed)]
    assert statuses == [0x0000, 0x0000, 0xA700, 0x0000], printed[-3000:]
    assert "Releasing Association" in printed

    # The node records the release on its own thread, after storescu has gone.
    rows = _wait_for(lambda: _accepted(node), "the association's instances to be accepted")
    assert len(rows) == 3
    kept = {storage / row.path for row in rows}
    assert all(path.is_file() for path in kept)
    files = {path for path in (storage / "node").rglob("*") if path.is_file()}
    assert files == kept, f"a half-written instance was left: {sorted(files - kept)}"

    filler.unlink()
    again = _storescu(node, [large[0]])
    assert re.search(r"DIMSE Status\s*:\s*0x0000", again.stdout + again.stderr), again.stderr[-3000:]


def _storescu(node: NodeServer, files: list[Path]) -> subprocess.CompletedProcess[str]:
    tool = system_tool("storescu")
    if tool is None:
        pytest.fail("storescu (dcmtk) is not installed (.ci/run installs it)", pytrace=False)
    host, port = node.address
    command = [
        tool,
        "-d",
        "-R",
        "--no-halt",
        "-aet",
        PEER_AE,
        "-aec",
        node.settings.node_ae_title,
        host,
        str(port),
    ]
    return subprocess.run(
        [*command, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


def _accepted(node: NodeServer) -> list[Any] | None:
    """Every instance row, once all are accepted."""
    with node.inbox.database.session() as session:
        rows = list(session.scalars(select(NodeInstance)).all())
    return rows if rows and all(row.state == "accepted" for row in rows) else None


def _wait_for(check: Callable[[], T | None], what: str, timeout_s: float = 20) -> T:
    deadline = time.monotonic() + timeout_s
    while (value := check()) is None:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value
