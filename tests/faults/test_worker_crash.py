"""Workers that die mid-stage: the job completes anyway, once.

One job meets two crashes: the worker's prefork child is killed during registration (its main
process survives, sees the child lost and puts the message back), then the whole worker
(main and child, SIGKILL to its process group, as a container dies) during inference. Nobody
acknowledged the inference message; Redis hands it to the worker started in its place once the
visibility timeout has passed. Then a late duplicate of a stage message, for the finished job,
must change nothing.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from celery import chain

from tests.faults.stack import RIGID, VISIBILITY_TIMEOUT_S, Stack, redis_url, running_stack
from worker.celery.app import EXPORT, INFER
from worker.dispatch import Dispatcher
from worker.settings import WorkerSettings

#: The whole module under one limit: its first test also runs the shared scenario.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

OUTPUTS = ["preview.png", "report.json", "rtstruct.dcm", "seg.dcm", "sr.dcm"]


@dataclass
class Crashes:
    """What the module's scenario did and saw."""

    job_id: str
    job: dict[str, Any]
    main_pid: int
    child_pid: int
    main_alive_after_child_killed: bool
    killed_during_infer: dict[str, Any]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("crash")) as stack:
        yield stack


@pytest.fixture(scope="module")
def crashes(stack: Stack, patient_zip: bytes) -> Crashes:
    job_id = stack.submit(patient_zip, **RIGID)

    # Early in preparation: the stage is cheap to run again.
    stack.wait_for_stage(job_id, "assemble", "read", "register")
    main_pid = stack.worker.pid
    child_pid = _pool_child(stack, main_pid)
    os.kill(child_pid, signal.SIGKILL)
    time.sleep(0.5)
    main_alive = stack.worker.running

    stack.wait_for_stage(job_id, "infer")
    stack.worker.kill()
    killed = stack.job(job_id)
    stack.start_worker()
    job = stack.wait_until_finished(job_id, timeout_s=VISIBILITY_TIMEOUT_S + 200)
    # A copy the broker handed out meanwhile (a stage that outlasted the timeout) is dealt with.
    stack.wait_until_drained()
    return Crashes(job_id, job, main_pid, child_pid, main_alive, killed)


def _pool_child(stack: Stack, main_pid: int) -> int:
    """The prefork pool's child process of the worker's main process."""

    def child() -> int | None:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _parent_of(entry) == main_pid:
                return int(entry.name)
        return None

    return stack.wait_for("the worker's pool child", child, 30)


def _parent_of(proc: Path) -> int | None:
    try:
        # /proc/<pid>/stat: "pid (name) state ppid ..."; the name may hold spaces.
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _history(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    status = json.loads((stack.job_folder(job_id) / "status.json").read_text())
    history: list[dict[str, Any]] = status["history"]
    return history


def _started(history: list[dict[str, Any]]) -> list[str]:
    return [event["stage"] for event in history if event["event"] == "started"]


def test_the_job_completes_once_after_its_worker_is_killed_mid_inference(
    stack: Stack, crashes: Crashes
) -> None:
    assert crashes.killed_during_infer["state"] == "running"
    assert crashes.killed_during_infer["stage"] == "infer"
    job = crashes.job
    assert job["state"] == "succeeded", job["error"]
    history = _history(stack, crashes.job_id)
    started = _started(history)
    # The killed stage ran again; the stages after it ran once.
    assert started.count("infer") == 2, history
    assert started.count("export") == 1, history
    events = [event["event"] for event in history if event["event"] != "duplicate-ignored"]
    assert events.count("succeeded") == 1 and events[-1] == "succeeded", history
    folder = stack.job_folder(crashes.job_id)
    assert sorted(p.name for p in (folder / "outputs").iterdir()) == OUTPUTS
    assert not list(folder.glob("outputs.*")), "a staging folder of the export was left behind"
    assert sorted(job["links"]["results"]) == ["preview", "report", "rtstruct", "seg", "sr"]
    with stack.client() as client:
        download = client.get(f"/v1/jobs/{crashes.job_id}/results/seg")
    assert download.status_code == 200
    on_disk = pydicom.dcmread(folder / "outputs" / "seg.dcm")
    assert f"{on_disk.SOPInstanceUID}".encode() in download.content


def test_a_killed_pool_child_is_replaced_and_its_stage_runs_again(stack: Stack, crashes: Crashes) -> None:
    assert crashes.main_alive_after_child_killed, "the worker's main process died with its child"
    history = _history(stack, crashes.job_id)
    # Prepare (assemble … prompts) ran twice: the child died in it, the message came back.
    assert _started(history).count("assemble") == 2, history
    assert _started(history).count("register") in (1, 2), history
    assert "WorkerLostError" in stack.worker.log_text()


def test_a_late_duplicate_of_a_stage_message_changes_nothing(stack: Stack, crashes: Crashes) -> None:
    folder = stack.job_folder(crashes.job_id)
    seg = folder / "outputs" / "seg.dcm"
    before = (seg.stat().st_mtime_ns, stack.job(crashes.job_id))
    settings = WorkerSettings(storage_root=stack.storage, broker_url=redis_url(stack.redis))
    app = Dispatcher(settings).app
    # What Redis would hand out again: the inference message and the export chained after it.
    chain(app.signature(INFER, args=(crashes.job_id,)), app.signature(EXPORT)).apply_async()

    def ignored() -> list[str]:
        return [e["stage"] for e in _history(stack, crashes.job_id) if e["event"] == "duplicate-ignored"]

    earlier = ignored()
    stack.wait_for("the duplicate to be taken and ignored", lambda: ignored()[len(earlier) :] or None, 60)
    # Once nothing is queued or unacknowledged, an export chained on would have run already.
    stack.wait_until_drained()
    assert ignored()[len(earlier) :] == ["infer"]
    after = stack.job(crashes.job_id)
    assert _started(_history(stack, crashes.job_id)).count("export") == 1
    assert seg.stat().st_mtime_ns == before[0]
    assert after["state"] == "succeeded" and after["finished_at"] == before[1]["finished_at"]
