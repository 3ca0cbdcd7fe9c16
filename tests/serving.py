"""A real ``rtinjury serve`` for tests and benchmarks, and the system browser that looks at it.

One place for what several suites need: a server on a free loopback port with its embedded
worker (no Redis), its log kept for when it fails, and a stop that takes the worker with it;
and Debian's chromium started headless with nothing that calls out.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx

REPO = Path(__file__).resolve().parents[1]
#: Debian's chromium; Playwright's own browser download is never used.
CHROMIUM = Path("/usr/bin/chromium")
#: No sandbox (tests may run as root in a container), no GPU, and nothing that calls out.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


class ServeFailed(RuntimeError):
    """``rtinjury serve`` exited or did not answer ``/healthz`` in time; the message has its log."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def embedded_serve(storage: Path, log: Path, api_key: str, *, ready_within_s: float = 90) -> Iterator[str]:
    """``rtinjury serve`` with its embedded worker on a free loopback port; yields its URL.

    The site's ``RTINJURY_*`` settings are left out: only the storage root and the key are set.

    Raises
    ------
    ServeFailed
        The server exited before answering, or did not answer within ``ready_within_s``.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTINJURY_")}
    env |= {"RTINJURY_STORAGE_ROOT": str(storage), "RTINJURY_API_KEY": api_key}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli.main", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_health(url, process, log, ready_within_s)
        yield url
    finally:
        # Ctrl-C, not SIGTERM: on SIGTERM uvicorn re-raises the signal once it has shut down, and
        # the process dies before it has stopped its embedded worker.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def log_tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else ""


def _wait_for_health(url: str, process: subprocess.Popen[bytes], log: Path, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServeFailed(f"rtinjury serve exited:\n{log_tail(log)}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise ServeFailed(f"rtinjury serve did not answer /healthz within {within_s:.0f} s:\n{log_tail(log)}")
