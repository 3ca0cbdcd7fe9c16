"""Worker processes: ``rtinjury worker`` in this process, and the embedded worker that
``rtinjury serve`` starts beside the API when no broker is configured."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from worker.celery.app import CPU_QUEUE, GPU_QUEUE, ensure_queue_folders
from worker.settings import WorkerSettings

ALL_QUEUES = (CPU_QUEUE, GPU_QUEUE)


def worker_argv(
    queues: Sequence[str] = ALL_QUEUES, *, pool: str = "prefork", concurrency: int = 1, loglevel: str = "INFO"
) -> list[str]:
    """Arguments of ``celery worker`` for our app (without the program name)."""
    name = "-".join(queues)
    return [
        "--app=worker.celery.tasks",
        "worker",
        f"--queues={','.join(queues)}",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel}",
        f"--hostname=rtinjury-{name}@%h",
        # Workers stay quiet on the network: no gossip or mingle between them.
        "--without-gossip",
        "--without-mingle",
    ]


def settings_environment(settings: WorkerSettings) -> dict[str, str]:
    """``settings`` as ``RTINJURY_*`` variables, so a child process reads the same settings."""
    env = {}
    for name in WorkerSettings.model_fields:
        value = getattr(settings, name)
        if value is not None:
            env[f"RTINJURY_{name.upper()}"] = str(value)
    return env


def start_embedded_worker(settings: WorkerSettings, *, loglevel: str = "WARNING") -> subprocess.Popen[bytes]:
    """A worker for both queues in a child process (solo pool: one job at a time, no fork after
    torch). Its output goes to this process's stderr."""
    ensure_queue_folders(settings)
    env = {**os.environ, **settings_environment(settings)}
    argv = worker_argv(ALL_QUEUES, pool="solo", concurrency=1, loglevel=loglevel)
    return subprocess.Popen([sys.executable, "-m", "celery", *argv], env=env, preexec_fn=_die_with_parent)


#: prctl(2) option: the signal a process gets when the thread that started it ends.
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the worker, before exec: SIGTERM (a warm shutdown) when its parent dies, however it dies
    (``kill -9`` included), so that an embedded worker never outlives the command that started it
    and goes on taking jobs from a queue nobody serves. Linux only; elsewhere the parent's own
    ``stop_embedded_worker`` is the only stop."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_embedded_worker(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Warm shutdown (SIGTERM: the current stage finishes), then kill after ``timeout``."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
