"""The service as real processes, for breaking it: our own ``redis-server``, ``rtinjury serve``
and ``rtinjury worker``, plus a tmpfs to fill.

Each process runs in its own process group, so that ``kill()`` takes its children too (a worker's
prefork child, as when a container dies), and writes its output to a log file; a failing test
shows every log of its stack (see ``conftest.py``). Every wait has a deadline: a hang fails the
test instead of the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx2 as httpx
import pytest
import redis

API_KEY = "faults-key-0123456789abcdefghijk"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: Short, so that a killed worker's message comes back soon. A stage that outlasts it (a cold
#: worker on a busy machine) is handed out again while it runs: with one worker process the copy
#: waits for the original to finish and is then ignored (it ran already), which the tests allow.
VISIBILITY_TIMEOUT_S = 20
#: Rigid registration only: the real pipeline at a third of the time.
RIGID = {"options": '{"deformable": false}'}
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ServiceProcess:
    """One process of the service (or Redis), started with ``start()`` in its own group."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    #: Earlier runs of this process (it may be killed and started again).
    starts: int = 0

    def start(self) -> ServiceProcess:
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole process group: no handler, no clean-up, children gone too."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(30)

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the group's stragglers are killed too."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout_s)
        self.kill()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return text[-chars:]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def redis_server(root: Path) -> ServiceProcess:
    """A redis-server on a free port, persisting every write (AOF, fsync always) under ``root``:
    restarted on the same port and folder it has the queue it had, as production's must."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (.ci/run installs it)", pytrace=False)
    folder = root / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    argv += ["--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"]
    return ServiceProcess("redis", argv, dict(os.environ), root / "redis.log")


def redis_url(server: ServiceProcess, db: int = 0) -> str:
    port = server.argv[server.argv.index("--port") + 1]
    return f"redis://127.0.0.1:{port}/{db}"


def rtinjury(name: str, args: list[str], env: dict[str, str], root: Path) -> ServiceProcess:
    return ServiceProcess(name, [sys.executable, "-m", "service.cli.main", *args], env, root / f"{name}.log")


def service_environment(storage: Path, broker: str | None, **extra: str) -> dict[str, str]:
    """The environment of a service process: none of the machine's RTINJURY_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTINJURY_")}
    env |= {"RTINJURY_STORAGE_ROOT": str(storage), "RTINJURY_API_KEY": API_KEY}
    if broker:
        env["RTINJURY_BROKER_URL"] = broker
    return env | extra


@dataclass
class Stack:
    """One test module's processes: Redis, the API, the worker; ``fail()`` shows their logs."""

    root: Path
    storage: Path
    redis: ServiceProcess
    api: ServiceProcess
    worker: ServiceProcess
    api_port: int
    extra: list[ServiceProcess] = field(default_factory=list)

    @property
    def processes(self) -> list[ServiceProcess]:
        return [self.redis, self.api, self.worker, *self.extra]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=AUTH, timeout=30)

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} ({p.log_path})\n{p.log_tail()}" for p in self.processes)

    def fail(self, message: str) -> NoReturn:
        pytest.fail(f"{message}\n{self.logs()}", pytrace=False)

    def wait_for(self, what: str, check: Callable[[], T | None], timeout_s: float, every_s: float = 0.2) -> T:
        """Poll ``check`` until it returns something other than None (or fail, with the logs)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = check()
            if value is not None:
                return value
            time.sleep(every_s)
        self.fail(f"timed out after {timeout_s} s waiting for {what}")

    # -- the processes ------------------------------------------------------------------------

    def start_redis(self) -> None:
        self.redis.start()
        client = redis.Redis.from_url(redis_url(self.redis), socket_connect_timeout=1)
        self.wait_for("redis to answer PING", lambda: _pong(client), 20, every_s=0.05)

    def start_api(self) -> None:
        self.api.start()
        self.wait_for("the API's /healthz", self._healthy, 90)

    def start_worker(self) -> None:
        """Start the worker and wait until it consumes (Celery logs "ready")."""
        before = self.worker.log_text().count(" ready.")
        self.worker.start()

        def ready() -> bool | None:
            if not self.worker.running:
                self.fail("the worker exited while starting")
            return True if self.worker.log_text().count(" ready.") > before else None

        self.wait_for("the worker to be ready", ready, 120, every_s=0.2)

    def _healthy(self) -> bool | None:
        if not self.api.running:
            self.fail("the API exited while starting")
        try:
            return True if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200 else None
        except httpx.HTTPError:
            return None

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    # -- jobs ---------------------------------------------------------------------------------

    def submit(self, archive: bytes, **fields: str) -> str:
        with self.client() as client:
            answer = client.post(
                "/v1/jobs", files=[("files", ("patient.zip", archive, "application/zip"))], data=fields
            )
        if answer.status_code != 202:
            self.fail(f"the job was not accepted: {answer.status_code} {answer.text}")
        return str(answer.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        with self.client() as client:
            answer = client.get(f"/v1/jobs/{job_id}")
        if answer.status_code != 200:
            self.fail(f"GET /v1/jobs/{job_id}: {answer.status_code} {answer.text}")
        job: dict[str, Any] = answer.json()
        return job

    def wait_for_stage(self, job_id: str, *stages: str, timeout_s: float = 180) -> dict[str, Any]:
        """Poll the API until the job runs one of ``stages``."""

        def at_stage() -> dict[str, Any] | None:
            job = self.job(job_id)
            if job["state"] in ("succeeded", "failed"):
                self.fail(f"job {job_id} finished before a stage of {stages} was seen: {job}")
            return job if job["stage"] in stages and job["state"] == "running" else None

        return self.wait_for(f"job {job_id} to reach a stage of {stages}", at_stage, timeout_s, every_s=0.1)

    def wait_until_drained(self) -> None:
        """Until the broker holds no message: none queued, none taken and unacknowledged."""
        client = redis.Redis.from_url(redis_url(self.redis))

        def drained() -> bool | None:
            left = client.llen("cpu") + client.llen("gpu") + client.hlen("unacked")
            return True if left == 0 else None

        self.wait_for("the queues and the unacknowledged set to be empty", drained, 90)

    def wait_until_finished(self, job_id: str, timeout_s: float = 240) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["state"] in ("succeeded", "failed") else None

        return self.wait_for(f"job {job_id} to finish", finished, timeout_s, every_s=0.25)

    def job_folder(self, job_id: str) -> Path:
        return self.storage / "jobs" / job_id


def _pong(client: redis.Redis) -> bool | None:
    try:
        return True if client.ping() else None
    except redis.ConnectionError:
        return None


@contextlib.contextmanager
def running_stack(
    root: Path, *, storage: Path | None = None, settings: dict[str, str] | None = None
) -> Iterator[Stack]:
    """Redis, the API (``rtinjury serve`` on that broker) and one worker (prefork, one child),
    all started; all stopped on exit, whatever happened. ``settings``: more ``RTINJURY_*``."""
    root.mkdir(parents=True, exist_ok=True)
    storage = storage or root / "storage"
    server = redis_server(root)
    env = service_environment(
        storage,
        redis_url(server),
        RTINJURY_BROKER_VISIBILITY_TIMEOUT_S=str(VISIBILITY_TIMEOUT_S),
        **(settings or {}),
    )
    port = free_port()
    worker_argv = ["worker", "--queues", "cpu,gpu", "--loglevel", "INFO"]
    stack = Stack(
        root=root,
        storage=storage,
        redis=server,
        api=rtinjury("api", ["serve", "--port", str(port)], env, root),
        worker=rtinjury("worker", worker_argv, env, root),
        api_port=port,
    )
    ACTIVE_STACKS.append(stack)
    try:
        stack.start_redis()
        stack.start_api()
        stack.start_worker()
        yield stack
    finally:
        stack.close()
        ACTIVE_STACKS.remove(stack)


#: Stacks of the running tests: their logs go into the report of a failing test.
ACTIVE_STACKS: list[Stack] = []


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` (root only, as in CI), always unmounted."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the fault tests run as root): {mounted.stderr}", pytrace=False)
    try:
        yield folder
    finally:
        unmounted = subprocess.run(["umount", "-l", str(folder)], capture_output=True, text=True)
        assert unmounted.returncode == 0, unmounted.stderr


def fill(folder: Path, leave_bytes: int = 0) -> Path:
    """Fill ``folder``'s file system until ``leave_bytes`` (or nothing) is left; returns the
    filler, which ``unlink()`` frees."""
    filler = folder / f".filler-{time.monotonic_ns()}"
    block = b"\0" * (1 << 20)
    with filler.open("wb", buffering=0) as out:
        while True:
            room = shutil.disk_usage(folder).free - leave_bytes
            if room <= 0:
                break
            try:
                out.write(block[: min(len(block), room)])
            except OSError:
                break
    return filler
