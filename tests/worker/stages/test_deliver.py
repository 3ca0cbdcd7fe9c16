"""Sending a job's results to a real DICOM peer (dcmtk storescp), and to one that is down."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from tests.conftest import system_tool
from tests.worker.jobs.conftest import new_job
from worker.jobs import pipeline
from worker.jobs.folder import JobFolder
from worker.jobs.progress import StatusReporter
from worker.jobs.spec import Destination, JobSpec
from worker.jobs.status import JobState, read_status
from worker.runtime import get_runtime
from worker.settings import WorkerSettings
from worker.stages.deliver import SendOptions, send_files

pytestmark = [pytest.mark.slow, pytest.mark.tools]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[Destination, Path]]:
    """A dcmtk storescp that writes what it receives into a folder."""
    binary = system_tool("storescp")
    if binary is None:
        pytest.fail("dcmtk storescp is not installed (.ci/run installs it)", pytrace=False)
    received = tmp_path / "received"
    received.mkdir()
    port = _free_port()
    process = subprocess.Popen(
        [binary, "-od", str(received), "-aet", "PACS", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port), received
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def succeeded_job(tmp_path_factory: pytest.TempPathFactory, orn_patient: Path) -> JobFolder:
    root = tmp_path_factory.mktemp("deliver")
    folder = new_job(root, orn_patient)
    settings = WorkerSettings(storage_root=root)
    pipeline.run_job(folder, settings, get_runtime(settings), StatusReporter(folder))
    return folder


def _with_destinations(folder: JobFolder, tmp_path: Path, *destinations: Destination) -> JobFolder:
    from worker.jobs.spec import write_spec

    copy = JobFolder(tmp_path / "job")
    shutil.copytree(folder.root, copy.root)
    write_spec(JobSpec(destinations=list(destinations)), copy.spec_path)
    return copy


def test_results_arrive_at_the_destination(
    succeeded_job: JobFolder, storescp: tuple[Destination, Path], tmp_path: Path
) -> None:
    destination, received = storescp
    folder = _with_destinations(succeeded_job, tmp_path, destination)
    pipeline.deliver(folder, WorkerSettings(storage_root=tmp_path), StatusReporter(folder))
    status = read_status(folder.status_path)
    assert status.state is JobState.SUCCEEDED
    [delivery] = status.deliveries
    assert (delivery.destination, delivery.state, delivery.sent, delivery.failed) == ("pacs", "sent", 3, 0)
    sent = {pydicom.dcmread(folder.output(n)).SOPInstanceUID for n in pipeline.DELIVERED_OUTPUTS}
    arrived = {pydicom.dcmread(p).SOPInstanceUID for p in received.iterdir()}
    assert arrived == sent
    modalities = sorted(pydicom.dcmread(p).Modality for p in received.iterdir())
    assert modalities == ["RTSTRUCT", "SEG", "SR"]


def test_a_destination_that_is_down_is_retried_then_reported(
    succeeded_job: JobFolder, tmp_path: Path
) -> None:
    down = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=_free_port())
    folder = _with_destinations(succeeded_job, tmp_path, down)
    waits: list[float] = []
    files = [folder.output(n) for n in pipeline.DELIVERED_OUTPUTS]
    result = send_files(files, down, SendOptions(attempts=3, backoff_s=0.5, timeout_s=2), sleep=waits.append)
    assert (result.attempts, result.sent, result.failed) == (3, 0, 3)
    assert waits == [0.5, 1.0]  # exponential back-off between the attempts
    assert result.error is not None and "could not be opened" in result.error

    settings = WorkerSettings(storage_root=tmp_path, send_attempts=2, send_backoff_s=0)
    pipeline.deliver(folder, settings, StatusReporter(folder))
    status = read_status(folder.status_path)
    assert status.state is JobState.SUCCEEDED  # the results are fine; they did not arrive
    [delivery] = status.deliveries
    assert (delivery.state, delivery.attempts, delivery.failed) == ("failed", 2, 3)
    assert any(w.startswith("results not delivered to pacs:") for w in status.warnings)
