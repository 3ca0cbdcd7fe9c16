"""``rtinjury serve --ssl-certfile/--ssl-keyfile``: HTTPS on loopback, a real process.

The API runs alone (a broker URL nobody listens on: no embedded worker to start); ``/healthz``
needs neither the broker nor a key.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.pki import Pki, write_pki

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve(tmp_path: Path, *options: str) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RTINJURY_")}
    environment |= {
        "RTINJURY_STORAGE_ROOT": str(tmp_path / "storage"),
        "RTINJURY_BROKER_URL": f"redis://127.0.0.1:{_free_port()}/0",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli.main", "serve", *options],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _get(url: str, context: ssl.SSLContext | None) -> int:
    with urllib.request.urlopen(url, timeout=5, context=context) as response:
        return int(response.status)


def test_serve_answers_over_https_only(tmp_path: Path) -> None:
    pki: Pki = write_pki(tmp_path / "pki")
    port = _free_port()
    process = _serve(
        tmp_path,
        "--port",
        str(port),
        "--ssl-certfile",
        str(pki.server.cert),
        "--ssl-keyfile",
        str(pki.server.key),
    )
    trusting = ssl.create_default_context(cafile=str(pki.ca.cert))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                assert _get(f"https://127.0.0.1:{port}/healthz", trusting) == 200
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "serve did not answer over HTTPS within 60 s"
                time.sleep(0.2)
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            _get(f"http://127.0.0.1:{port}/healthz", None)  # plain HTTP on the HTTPS port
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _get(f"https://127.0.0.1:{port}/healthz", ssl.create_default_context())  # system CAs only
    finally:
        process.send_signal(signal.SIGINT)
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, err
    assert f"rtinjury on https://127.0.0.1:{port}" in out


def test_serve_refuses_a_key_of_another_certificate_with_one_line(tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki")
    process = _serve(tmp_path, "--ssl-certfile", str(pki.server.cert), "--ssl-keyfile", str(pki.client.key))
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert err.strip() == "rtinjury: error: --ssl-keyfile does not match the certificate in --ssl-certfile"
