"""``rtinjury serve`` as a user runs it: a real process on a free port, stopped with Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.service.api.conftest import API_KEY


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[str], int]:
    port = _free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RTINJURY_")}
    environment = {
        **clean,
        "RTINJURY_STORAGE_ROOT": str(tmp_path / "storage"),
        "RTINJURY_API_KEY": API_KEY,
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli.main", "serve", "--port", str(port)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, port


def _wait_for(port: int, process: subprocess.Popen[str], path: str = "/healthz") -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve exited early: {process.communicate()[1]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                answer: dict[str, object] = json.load(response)
                return answer
        except OSError:
            time.sleep(0.2)
    pytest.fail("serve did not answer within 60 s")


def _stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def test_serve_with_a_broker_runs_the_api_alone(tmp_path: Path) -> None:
    process, port = _serve(tmp_path, RTINJURY_BROKER_URL="redis://user:hunter2@127.0.0.1:6379/15")
    try:
        assert _wait_for(port, process)["status"] == "ok"
    finally:
        out, err = _stop(process)
    assert process.returncode == 0, err
    assert f"http://127.0.0.1:{port}" in out
    assert "worker: external, via the broker at redis://127.0.0.1:6379/15" in out
    assert "hunter2" not in out + err


def test_serve_embedded_starts_a_worker_and_stops_it(tmp_path: Path) -> None:
    process, port = _serve(tmp_path)
    try:
        _wait_for(port, process)
        readiness = _wait_for(port, process, "/readyz")
        assert readiness["status"] == "ready", readiness
    finally:
        out, err = _stop(process)
    assert process.returncode == 0, err
    worker_line = next(line for line in out.splitlines() if line.startswith("worker: embedded"))
    worker_pid = int(worker_line.split("pid ")[1].split(")")[0])
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)  # gone with the API
