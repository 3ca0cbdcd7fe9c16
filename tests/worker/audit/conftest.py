"""Fixtures for the audit: a real PACS (Orthanc) on loopback.

Fixtures: ``orthanc``. Helpers: :func:`free_port`, :class:`OrthancPacs`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED_DATA
from worker.audit.pacs import PacsPeer, RetrieveOptions

ORTHANC_UP = SHARED_DATA.parent / "tools" / "orthanc-up.sh"
#: The AE title Orthanc knows as its C-MOVE destination (our default calling AE title).
MOVE_AE = RetrieveOptions().calling_ae
#: Seconds Orthanc may take to start or stop, and a REST call to answer.
TIMEOUT_S = 120


def free_port(*taken: int) -> int:
    """A TCP port free on 127.0.0.1 now, other than ``taken`` (the OS may hand one out twice)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in taken:
            return port


@dataclass(frozen=True)
class OrthancPacs:
    """A running Orthanc on 127.0.0.1 (AE title ``ORTHANC``).

    ``peer`` is its DICOM side; it knows one modality, ``move_ae`` at 127.0.0.1:``move_port``,
    which is both the C-MOVE destination and the calling AE title it answers C-FIND, C-MOVE
    and C-GET from (Orthanc refuses queries from AE titles it does not know). ``http_port`` is
    its REST API (no login), ``workdir`` holds its config, log (``orthanc.log``) and storage.
    """

    peer: PacsPeer
    move_ae: str
    move_port: int
    http_port: int
    workdir: Path

    def options(self, **changes: Any) -> RetrieveOptions:
        """Retrieve options that match this Orthanc (our AE title and C-MOVE port), changed by
        ``changes`` (e.g. ``method="get"``)."""
        options = RetrieveOptions(calling_ae=self.move_ae, move_port=self.move_port, timeout_s=30)
        return replace(options, **changes)

    def store(self, paths: Iterable[Path]) -> list[str]:
        """Upload DICOM files through ``POST /instances``; Orthanc's instance IDs, in order.

        Fails the test on any answer but Success or AlreadyStored.
        """
        return [self._store_one(Path(path)) for path in paths]

    def rest(self, path: str) -> Any:
        """``GET`` a REST resource (e.g. ``"/statistics"``) as parsed JSON."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=TIMEOUT_S) as answer:
            return json.load(answer)

    def _store_one(self, path: Path) -> str:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/instances",
            data=path.read_bytes(),
            headers={"Content-Type": "application/dicom"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as exc:
            pytest.fail(f"Orthanc refused {path.name}: HTTP {exc.code} {exc.read()[:500]!r}", pytrace=False)
        if body.get("Status") not in ("Success", "AlreadyStored"):
            pytest.fail(f"Orthanc did not store {path.name}: {body}", pytrace=False)
        return str(body["ID"])


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPacs]:
    """A fresh, empty Orthanc per test module (start ~1 s), stopped afterwards.

    Started with ``orthanc-up.sh`` (loopback only) on free ports; what the module's tests
    upload with :meth:`OrthancPacs.store` stays for the module's other tests. The test fails
    (does not skip) when Orthanc is missing: ``.ci/run`` installs it.
    """
    workdir = tmp_path_factory.mktemp("orthanc")
    dicom_port = free_port()
    http_port = free_port(dicom_port)
    move_port = free_port(dicom_port, http_port)
    # Orthanc's DICOM layer is dcmtk, which leaves Nagle's algorithm on unless TCP_NODELAY is
    # set: with delayed ACKs every instance of a C-MOVE would wait ~40 ms on loopback.
    env = {**os.environ, "TCP_NODELAY": "1", "ORTHANC_AET": "ORTHANC"}
    command = [
        "bash",
        str(ORTHANC_UP),
        str(workdir),
        str(dicom_port),
        str(http_port),
        MOVE_AE,
        str(move_port),
    ]
    started = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    if started.returncode != 0:
        pytest.fail(f"Orthanc did not start (.ci/run installs it): {started.stderr[-2000:]}", pytrace=False)
    try:
        yield OrthancPacs(
            PacsPeer("ORTHANC", "127.0.0.1", dicom_port), MOVE_AE, move_port, http_port, workdir
        )
    finally:
        subprocess.run(
            ["bash", str(ORTHANC_UP), "--stop", str(workdir)], capture_output=True, timeout=TIMEOUT_S
        )
