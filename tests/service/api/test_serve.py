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
    _assert_gone(_worker_pid(out))  # gone with the API


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_serve_stopped_by_a_signal_leaves_no_worker_behind(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    # SIGTERM is what docker stop and systemd send; SIGKILL gives the API no chance to clean up.
    process, port = _serve(tmp_path)
    try:
        _wait_for(port, process, "/readyz")
        worker_pid = _worker_pid_of_running(process)
        process.send_signal(stop_signal)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    if stop_signal == signal.SIGTERM:
        assert process.returncode == 0
    _assert_gone(worker_pid)


def _worker_pid(stdout: str) -> int:
    line = next(line for line in stdout.splitlines() if line.startswith("worker: embedded"))
    return int(line.split("pid ")[1].split(")")[0])


def _worker_pid_of_running(process: subprocess.Popen[str]) -> int:
    assert process.stdout is not None
    for _ in range(10):  # the address line, then the worker line
        line = process.stdout.readline()
        if line.startswith("worker: embedded"):
            return _worker_pid(line)
    pytest.fail("serve did not say its worker's pid")


def _assert_gone(pid: int, within_s: float = 30) -> None:
    """The process ``pid`` has exited (a warm shutdown may take a few seconds)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            return  # exited; its parent has not reaped it yet
        time.sleep(0.2)
    pytest.fail(f"the embedded worker (pid {pid}) is still running")
