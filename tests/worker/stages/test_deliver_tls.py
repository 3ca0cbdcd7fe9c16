"""Sending results over DICOM TLS to dcmtk's storescp (``+tls``), the independent peer.

The peer asks for our client certificate (storescp's default, ``--require-peer-cert``); a peer
whose certificate our CA did not sign, or one without TLS, is not sent to, with the reason.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest

from tests.conftest import system_tool
from tests.patients import write_patient
from tests.pki import Identity, Pki, write_pki
from worker.jobs.spec import Destination, DestinationTLS, JobSpec, read_spec, write_spec
from worker.stages.deliver import SendOptions, send_files

pytestmark = [pytest.mark.tools, pytest.mark.timeout(120)]

#: One attempt, a short timeout: a refused peer must fail fast.
ONCE = SendOptions(attempts=1, timeout_s=10)
Peer = Callable[..., tuple[Destination, Path]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    patient = write_patient(tmp_path_factory.mktemp("deliver-tls"), with_plan=False)
    return sorted((patient.root / "followup0").glob("*.dcm"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Peer]:
    """``storescp(identity=None)``: a dcmtk storescp (with TLS when given its certificate and key,
    trusting our test CA for client certificates); every one started is stopped at teardown."""
    binary = system_tool("storescp")
    if binary is None:
        pytest.fail("dcmtk storescp is not installed (.ci/run installs it)", pytrace=False)
    processes: list[subprocess.Popen[bytes]] = []

    def start(identity: Identity | None = None, ca: Path | None = None) -> tuple[Destination, Path]:
        received = tmp_path / f"received-{len(processes)}"
        received.mkdir()
        port = _free_port()
        tls = ["+tls", str(identity.key), str(identity.cert), "+cf", str(ca)] if identity and ca else []
        command = [binary, *tls, "-od", str(received), "-aet", "PACS", str(port)]
        processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for_port(port)
        return Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port), received

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"storescp did not listen on {port} within 10 s")


def _with_tls(destination: Destination, tls: DestinationTLS) -> Destination:
    return destination.model_copy(update={"tls": tls})


def _our_tls(pki: Pki) -> DestinationTLS:
    return DestinationTLS(ca_file=pki.ca.cert, cert_file=pki.client.cert, key_file=pki.client.key)


def test_results_arrive_over_tls(storescp: Peer, pki: Pki, files: list[Path]) -> None:
    destination, received = storescp(pki.server, pki.ca.cert)
    result = send_files(files, _with_tls(destination, _our_tls(pki)), ONCE)
    assert result.ok, result.error
    assert (result.sent, result.failed) == (len(files), 0)
    sent = {pydicom.dcmread(p).SOPInstanceUID for p in files}
    assert {pydicom.dcmread(p).SOPInstanceUID for p in received.iterdir()} == sent


def test_a_peer_whose_certificate_is_not_trusted_is_not_sent_to(
    storescp: Peer, pki: Pki, files: list[Path]
) -> None:
    destination, received = storescp(pki.rogue_server, pki.ca.cert)
    result = send_files(files, _with_tls(destination, _our_tls(pki)), ONCE)
    assert (result.sent, result.failed) == (0, len(files))
    assert result.error is not None
    assert result.error.startswith(
        "the association with PACS could not be opened: the peer's certificate is not trusted ("
    )
    assert not list(received.iterdir())


def test_a_peer_without_tls_is_not_sent_to(storescp: Peer, pki: Pki, files: list[Path]) -> None:
    destination, received = storescp()
    result = send_files(files, _with_tls(destination, _our_tls(pki)), ONCE)
    assert result.failed == len(files)
    assert result.error is not None and "during the TLS handshake (is TLS on at its end?)" in result.error
    assert not list(received.iterdir())


def test_a_missing_tls_file_is_reported_without_an_attempt(
    pki: Pki, files: list[Path], tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ca.crt"
    destination = Destination(
        name="pacs", ae_title="PACS", host="127.0.0.1", port=1, tls=DestinationTLS(ca_file=missing)
    )
    result = send_files(files, destination, ONCE)
    assert (result.attempts, result.sent, result.failed) == (0, 0, len(files))
    assert result.error == f"TLS to PACS: tls.ca_file: cannot read {missing} (No such file or directory)"


def test_a_destination_keeps_its_tls_files_in_the_job_spec(pki: Pki, tmp_path: Path) -> None:
    destination = Destination(name="pacs", ae_title="PACS", host="localhost", port=2762, tls=_our_tls(pki))
    write_spec(JobSpec(destinations=[destination]), tmp_path / "spec.json")
    assert read_spec(tmp_path / "spec.json").destinations == [destination]
