"""No patient data in any log: a patient with distinctive identifiers goes through every entry
point at debug level, and every log stream is searched for them.

The three entry points run at once, as real processes (one patient, few slices):

- ``rtinjury --debug -v run`` (every stage in the CLI process);
- ``rtinjury --debug serve`` in embedded mode (the API and its worker): upload, the job runs,
  results downloaded;
- ``rtinjury --debug node`` (and its embedded worker): dcmtk's storescu pushes the patient, the
  quiet period passes, the study becomes a job (the node stops then: the job's stages are the
  ones the API's job runs).

Searched: each process's stdout and stderr (embedded workers write to their parent's) and any
``*.log`` under the storage roots. The outputs themselves (SEG, RTSTRUCT, SR, report) carry the
patient's data by design and are not searched.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx
import pydicom
import pytest

from tests.conftest import system_tool
from tests.patients import write_patient
from tests.service.api.conftest import zip_folders

pytestmark = [pytest.mark.slow, pytest.mark.tools, pytest.mark.timeout(300)]

API_KEY = "phi-test-key-0123456789abcdefghij"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: Distinctive values: any of them in a log line is a leak, whatever the line.
IDENTIFYING = {
    "PatientName": "Qzxv^Wyrtle",
    "PatientID": "PHI-7734129",
    "PatientBirthDate": "19470312",
    "AccessionNumber": "ACC99310",
    "InstitutionName": "Blorvik General",
    "ReferringPhysicianName": "Threnody^Ansel",
    "OtherPatientIDs": "OTHER-55120",
}
#: Other spellings a log could use: the name's parts, the birth date in ISO form.
SPELLINGS = ("Qzxv", "Wyrtle", "Threnody", "1947-03-12")
#: Seconds any one wait may take before the test fails (the machines are shared and slow).
WAIT_S = 240


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def text(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


@dataclass
class Runs:
    """What the three runs left: processes (stopped), storage roots, and what they achieved."""

    processes: dict[str, Process] = field(default_factory=dict)
    storage_roots: list[Path] = field(default_factory=list)
    uids: set[str] = field(default_factory=set)
    outcomes: dict[str, object] = field(default_factory=dict)

    def logs(self, name: str) -> str:
        text = self.processes[name].text()
        for root in self.storage_roots:
            if root.name == name:
                text += "".join(p.read_text(errors="replace") for p in root.rglob("*.log"))
        return text


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """A small patient whose headers carry ``IDENTIFYING``; its study, series and SOP UIDs."""
    root = tmp_path_factory.mktemp("phi") / "patient"
    write_patient(root, patient_id=IDENTIFYING["PatientID"])
    uids: set[str] = set()
    for path in root.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        for keyword, value in IDENTIFYING.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
        uids |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    return root, uids


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(name: str, args: list[str], env: dict[str, str], folder: Path) -> Process:
    stdout, stderr = folder / f"{name}.out", folder / f"{name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        popen = subprocess.Popen(
            [sys.executable, "-m", "service.cli.main", *args], env=env, stdout=out, stderr=err
        )
    return Process(name, popen, stdout, stderr)


def _stop(process: Process) -> None:
    if process.popen.poll() is None:
        process.popen.send_signal(signal.SIGINT)
    try:
        process.popen.wait(30)
    except subprocess.TimeoutExpired:
        process.popen.kill()
        process.popen.wait(10)


def _wait(condition: Callable[[], object], what: str, processes: list[Process]) -> object:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for process in processes:
            if process.popen.poll() is not None:
                pytest.fail(f"{process.name} exited early:\n{process.text()[-3000:]}")
        try:
            found = condition()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, patient: tuple[Path, set[str]]) -> Iterator[Runs]:
    folder = tmp_path_factory.mktemp("phi-runs")
    source, uids = patient
    result = Runs(uids=uids, storage_roots=[folder / "run", folder / "serve", folder / "node"])
    base = {k: v for k, v in os.environ.items() if not k.startswith("RTINJURY_")}
    api_port, node_port = _free_port(), _free_port()
    serve_env = base | {"RTINJURY_STORAGE_ROOT": str(folder / "serve"), "RTINJURY_API_KEY": API_KEY}
    node_env = base | {
        "RTINJURY_STORAGE_ROOT": str(folder / "node"),
        "RTINJURY_NODE_PORT": str(node_port),
        "RTINJURY_NODE_PEERS": json.dumps([{"ae_title": "PACS", "host": "127.0.0.1"}]),
        "RTINJURY_NODE_QUIET_PERIOD_S": "1",
        "RTINJURY_NODE_MIN_FREE_BYTES": "0",
    }
    processes = result.processes
    try:
        run_args = ["--debug", "-v", "run", str(source), "--out", str(folder / "run-out")]
        processes["run"] = _start(
            "run", run_args, base | {"RTINJURY_STORAGE_ROOT": str(folder / "run")}, folder
        )
        processes["serve"] = _start("serve", ["--debug", "serve", "--port", str(api_port)], serve_env, folder)
        processes["node"] = _start("node", ["--debug", "node"], node_env, folder)
        # All three at once: the node's quiet period and the API's job overlap the CLI's run.
        _push_to_the_node(processes["node"], node_port, source)
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", headers=AUTH, timeout=60) as client:
            _wait(
                lambda: client.get("/healthz", timeout=2).status_code == 200, "the API", [processes["serve"]]
            )
            # A refused upload too: a damaged file named after the patient, through the error path.
            refused = _upload(client, source, extra=_truncated_copy(source))
            result.outcomes["serve-refused"] = (refused.status_code, refused.json().get("code"))
            created = _upload(client, source)
            assert created.status_code == 202, created.text
            job_id = str(created.json()["id"])
            result.outcomes["node"] = _node_job_made(processes["node"])
            _stop(processes["node"])  # its worker's run of the job would add nothing the API's does not
            result.outcomes["serve"] = _finished_and_downloaded(client, processes["serve"], job_id)
        processes["run"].popen.wait(WAIT_S)
        result.outcomes["run"] = processes["run"].popen.returncode
    finally:
        for process in processes.values():
            _stop(process)
    yield result


def _push_to_the_node(node: Process, port: int, source: Path) -> None:
    storescu = system_tool("storescu")
    if storescu is None:
        pytest.fail("dcmtk storescu is not installed (.ci/run installs it)", pytrace=False)
    _wait(lambda: "DICOM node" in node.stdout.read_text(), "the node to listen", [node])
    options = ["-aet", "PACS", "-aec", "RTINJURY", "+sd", "+r", "+sp", "*.dcm"]  # every *.dcm below
    command = [storescu, *options, "127.0.0.1", str(port)]
    sent = subprocess.run([*command, str(source)], capture_output=True, text=True, timeout=60, check=False)
    assert sent.returncode == 0, sent.stdout + sent.stderr


def _node_job_made(node: Process) -> str:
    """The job the node made of the patient's study once the quiet period passed (its id)."""
    made = re.compile(r"node: job ([0-9a-f]{32}) made")
    return str(_wait(lambda: (m := made.search(node.text())) and m.group(1), "the node's job", [node]))


def _truncated_copy(source: Path) -> dict[str, bytes]:
    """A zip entry: one of the patient's slices, cut short, in a file named after the patient."""
    slice_bytes = sorted(source.rglob("*.dcm"))[0].read_bytes()
    return {f"{source.name}/Qzxv_Wyrtle_PHI-7734129.dcm": slice_bytes[: len(slice_bytes) // 2]}


def _upload(client: httpx.Client, source: Path, extra: dict[str, bytes] | None = None) -> httpx.Response:
    upload = [("files", ("patient.zip", zip_folders(source, extra=extra), "application/zip"))]
    return client.post("/v1/jobs", files=upload)


def _finished_and_downloaded(client: httpx.Client, serve: Process, job_id: str) -> str:
    """The API job's final state, once every result was downloaded (when it succeeded)."""

    def finished() -> str | None:
        state = client.get(f"/v1/jobs/{job_id}").json()["state"]
        return state if state in ("succeeded", "failed") else None

    state = str(_wait(finished, "the API's job", [serve]))
    if state == "succeeded":
        for name in ("seg", "rtstruct", "sr", "report", "preview"):
            assert client.get(f"/v1/jobs/{job_id}/results/{name}").status_code == 200
    return state


def _leaks(text: str, uids: set[str]) -> list[str]:
    lowered = text.lower()
    words = [*IDENTIFYING.values(), *SPELLINGS]
    found = [word for word in words if word.lower() in lowered]
    return found + sorted(uid for uid in uids if uid in text)


#: A line each entry point logs when the patient went through it: the logs searched are real.
EVIDENCE = {
    "run": "[100%] done",
    "serve": "Task rtinjury.export[",  # the embedded worker's, at the end of the job
    "node": "node: study of pt-",  # the study settled, under the patient's alias
}


@pytest.mark.parametrize("entry_point", ["run", "serve", "node"])
def test_no_identifier_or_uid_reaches_a_log(runs: Runs, entry_point: str) -> None:
    outcome = runs.outcomes[entry_point]
    if entry_point == "node":
        assert re.fullmatch(r"[0-9a-f]{32}", str(outcome)), "the node made no job"
    else:
        assert outcome == {"run": 0, "serve": "succeeded"}[entry_point], runs.logs(entry_point)[-3000:]
    if entry_point == "serve":
        assert runs.outcomes["serve-refused"] == (422, "truncated-file")
    logs = runs.logs(entry_point)
    assert EVIDENCE[entry_point] in logs, f"{entry_point} did not log its work:\n{logs[-3000:]}"
    leaks = _leaks(logs, runs.uids)
    lines = [line for line in logs.splitlines() if _leaks(line, runs.uids)]
    assert not leaks, f"{entry_point} logged {leaks}:\n" + "\n".join(lines[:20])
