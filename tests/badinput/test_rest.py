"""Bad input through the REST API of one real ``rtinjury serve`` process (embedded worker).

A good "sentinel" job is run to success first. After every case the service must answer
``/healthz``, the sentinel's record and files must be as they were, and a refused upload must
have left nothing behind (no job, no folder, no file, no link): :func:`assert_still_serving`.

Refused at upload (problem+json, nothing kept):
    truncated-slice, zero-length-slice, lying-length, unknown-vr, binary-vr-of-the-wrong-size,
    dicom-magic-then-garbage, no-planning-ct, no-rtdose, dose-in-another-frame,
    dose-off-the-patient, followup-of-another-patient, zip-bomb, zip-parent-path,
    zip-absolute-path, zip-symlink, zip-invalid-utf8-names, nested-zip, truncated-zip,
    zip-of-25000-entries, 2 GiB declared (Content-Length), 2 GiB streamed (chunked).
Accepted, then failed by the worker with a specific code (known only once pixels are read):
    4d-mr-enhanced, zero-dose, relative-dose-without-plan, rows-as-a-decimal-string.
Accepted and handled:
    non-dicom-named-dcm (ignored, said in a warning), zip-cp437-names, study-of-3000-instances
    (the API keeps answering while it is assembled).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pydicom
import pytest

from service.api.errors import PROBLEMS
from tests.badinput import inputs
from tests.badinput.inputs import OTHER_PATIENT_ID, PATIENT_ID
from tests.service.api.conftest import API_KEY, AUTH

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

#: Low enough that the streamed upload is cut off quickly, high enough for every real case here.
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
#: The default file cap, written out: the 25 000-entry zip must exceed it.
MAX_UPLOAD_FILES = 20_000
TWO_GIB = 2 * 1024**3
#: Hang guards (not timings): a request or a job that takes longer has hung.
REQUEST_TIMEOUT_S = 120
JOB_TIMEOUT_S = 180


# --- the service under test ---------------------------------------------------------------------


@dataclass
class Service:
    """A running ``rtinjury serve`` and what the cases compare against."""

    process: subprocess.Popen[bytes]
    client: httpx.Client
    storage_root: Path
    log: Path
    sentinel_id: str = ""
    sentinel_record: dict[str, Any] = field(default_factory=dict)
    sentinel_files: dict[str, tuple[int, int]] = field(default_factory=dict)
    storage_entries: set[str] = field(default_factory=set)
    #: Every job the service should have: the sentinel and the uploads it accepted.
    jobs: set[str] = field(default_factory=set)

    @property
    def jobs_root(self) -> Path:
        return self.storage_root / "jobs"

    def upload(self, body: bytes, *, name: str = "study.zip") -> httpx.Response:
        return self.client.post(
            "/v1/jobs", files=[("files", (name, body, "application/octet-stream"))], headers=AUTH
        )

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/jobs/{job_id}", headers=AUTH)
        assert response.status_code == 200, response.text
        record: dict[str, Any] = response.json()
        return record

    def finished(self, job_id: str) -> dict[str, Any]:
        """The job's record once it has succeeded or failed (polled; a hang guard, not a timing)."""
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            record = self.job(job_id)
            if record["state"] in ("succeeded", "failed"):
                return record
            time.sleep(0.25)
        pytest.fail(f"job {job_id} did not finish within {JOB_TIMEOUT_S} s: {self.job(job_id)}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(storage_root: Path, log: Path, port: int) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RTINJURY_")}
    env = {
        **clean,
        "RTINJURY_STORAGE_ROOT": str(storage_root),
        "RTINJURY_API_KEY": API_KEY,
        "RTINJURY_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "RTINJURY_MAX_UPLOAD_FILES": str(MAX_UPLOAD_FILES),
    }
    # Output to a file, not a pipe: nobody reads a pipe while the cases run, and a full one blocks.
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli.main", "serve", "--port", str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def _wait_until_up(service: Service) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            pytest.fail(f"serve exited early:\n{service.log.read_text(errors='replace')}")
        try:
            if service.client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    pytest.fail("serve did not answer /healthz within 90 s")


def _stop(process: subprocess.Popen[bytes], log: Path) -> None:
    # The job still in the worker (the 3000-instance study's) is not under test, and a warm
    # shutdown would wait ten seconds for it: the worker this serve started goes first.
    worker = re.search(r"worker: embedded \(pid (\d+)\)", log.read_text(errors="replace"))
    if worker is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(worker.group(1)), signal.SIGKILL)
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)  # uvicorn's shutdown
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, good_patient: Path) -> Iterator[Service]:
    """``rtinjury serve`` on a free port, with a sentinel job that has succeeded."""
    root = tmp_path_factory.mktemp("badinput-rest")
    port = _free_port()
    process = _start(root / "storage", root / "serve.log", port)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=REQUEST_TIMEOUT_S)
    service = Service(process, client, root / "storage", root / "serve.log")
    try:
        _wait_until_up(service)
        accepted = service.upload(inputs.zip_folder(good_patient))
        assert accepted.status_code == 202, accepted.text
        service.sentinel_id = accepted.json()["id"]
        sentinel = service.finished(service.sentinel_id)
        assert sentinel["state"] == "succeeded", sentinel
        service.sentinel_record = sentinel
        service.sentinel_files = listing(service.jobs_root / service.sentinel_id)
        service.storage_entries = {p.name for p in service.storage_root.iterdir()}
        service.jobs = {service.sentinel_id}
        yield service
    finally:
        client.close()
        _stop(process, service.log)


def assert_still_serving(service: Service, *, accepted: str | None = None) -> None:
    """The post-conditions of every case: healthy, the sentinel intact, nothing else kept."""
    assert service.client.get("/healthz").json()["status"] == "ok"
    assert service.job(service.sentinel_id) == service.sentinel_record
    assert listing(service.jobs_root / service.sentinel_id) == service.sentinel_files
    if accepted is not None:
        service.jobs.add(accepted)
    assert {p.name for p in service.jobs_root.iterdir()} == service.jobs, "a refused upload left a folder"
    assert service.client.get("/v1/jobs", headers=AUTH).json()["count"] == len(service.jobs)
    assert {p.name for p in service.storage_root.iterdir()} == service.storage_entries
    links = [p for p in service.storage_root.rglob("*") if p.is_symlink()]
    assert not links, f"links under the storage root: {links}"


def assert_problem(response: httpx.Response, service: Service, status: int, code: str, words: str) -> None:
    """A specific problem+json: its code's own title, a detail that says ``words``, nothing private."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == f"urn:rtinjury:problem:{code}" and problem["code"] == code, problem
    assert problem["title"] == PROBLEMS[code][1], "a specific title, not a bare HTTP phrase"
    assert words in problem["detail"], problem["detail"]
    for private in ("Traceback", str(service.storage_root), PATIENT_ID, OTHER_PATIENT_ID, "TEST^PATIENT"):
        assert private not in response.text, private


# --- the catalogue ------------------------------------------------------------------------------

Build = Callable[[Path], bytes]


def zipped(damage: Callable[[Path], None]) -> Build:
    """A builder that damages the case folder, then uploads it as one zip."""

    def build(case: Path) -> bytes:
        damage(case)
        return inputs.zip_folder(case)

    return build


@dataclass(frozen=True)
class BadCase:
    name: str
    build: Build
    status: int
    code: str
    #: What the problem's detail (or the failed job's error message) must say.
    words: str


REFUSED_AT_UPLOAD = [
    BadCase("truncated-slice", zipped(inputs.truncate_a_slice), 422, "truncated-file", "file is truncated"),
    BadCase("zero-length-slice", zipped(inputs.empty_a_slice), 422, "truncated-file", "empty file (0 bytes)"),
    BadCase("lying-length", zipped(inputs.lie_about_a_length), 422, "truncated-file", "declared"),
    BadCase("unknown-vr", zipped(inputs.unknown_vr), 422, "unreadable-dicom", "value representation 'ZZ'"),
    BadCase(
        "binary-vr-of-the-wrong-size",
        zipped(inputs.binary_vr_of_the_wrong_size),
        422,
        "unreadable-dicom",
        "(0028,0100) (UL) is 2 bytes long",
    ),
    BadCase(
        "dicom-magic-then-garbage",
        zipped(inputs.dicom_magic_then_garbage),
        422,
        "unreadable-dicom",
        "not a DICOM",
    ),
    BadCase(
        "no-planning-ct",
        zipped(inputs.drop_planning_ct),
        422,
        "invalid-study",
        "no planning CT shares the RTDOSE frame of reference",
    ),
    BadCase("no-rtdose", zipped(inputs.drop_rtdose), 422, "invalid-study", "no RTDOSE found"),
    BadCase(
        "dose-in-another-frame",
        zipped(inputs.dose_in_another_frame),
        422,
        "invalid-study",
        "no planning CT shares the RTDOSE frame of reference",
    ),
    BadCase(
        "dose-off-the-patient",
        zipped(inputs.dose_off_the_patient),
        422,
        "invalid-study",
        "lies wholly outside the planning CT",
    ),
    BadCase(
        "followup-of-another-patient",
        zipped(inputs.followup_of_another_patient),
        422,
        "invalid-study",
        "2 different patients",
    ),
    BadCase("zip-bomb", lambda case: inputs.zip_bomb(), 422, "invalid-archive", "looks like a zip bomb"),
    BadCase("zip-parent-path", inputs.zip_with_parent_path, 422, "invalid-archive", "unsafe path"),
    BadCase("zip-absolute-path", inputs.zip_with_absolute_path, 422, "invalid-archive", "unsafe path"),
    BadCase("zip-symlink", inputs.zip_with_symlink, 422, "invalid-archive", "symbolic link refused"),
    BadCase(
        "zip-invalid-utf8-names",
        inputs.zip_with_invalid_utf8_names,
        422,
        "invalid-archive",
        "are not valid UTF-8",
    ),
    BadCase("nested-zip", inputs.nested_zip, 422, "invalid-archive", "is itself a zip archive"),
    BadCase("truncated-zip", inputs.truncated_zip, 422, "invalid-archive", "corrupt or unsupported zip"),
    BadCase(
        "zip-of-25000-entries",
        lambda case: inputs.zip_of_many_entries(25_000),
        422,
        "invalid-archive",
        f"25000 entries exceed the limit of {MAX_UPLOAD_FILES}",
    ),
]


@pytest.mark.parametrize("bad", REFUSED_AT_UPLOAD, ids=[c.name for c in REFUSED_AT_UPLOAD])
def test_refused_at_upload(service: Service, case: Path, bad: BadCase) -> None:
    assert_problem(service.upload(bad.build(case)), service, bad.status, bad.code, bad.words)
    assert_still_serving(service)


def test_a_declared_2_gib_upload_is_refused_before_its_body_is_read(service: Service) -> None:
    port = service.client.base_url.port
    assert port is not None
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {API_KEY}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {TWO_GIB}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT_S) as raw:
        raw.sendall(head.encode() + b"--b\r\n")  # 5 bytes of the 2 GiB announced
        answer = b""
        while chunk := raw.recv(65536):  # the server answers, then closes: it waits for no body
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large", answer
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in headers.lower()
    assert b"urn:rtinjury:problem:upload-too-large" in body and b"RTINJURY_MAX_UPLOAD_BYTES" in body
    assert_still_serving(service)


def test_a_streamed_2_gib_upload_is_cut_off_at_the_limit(service: Service) -> None:
    sent = 0
    block = bytes(1 << 20)

    def two_gib_without_a_length() -> Iterator[bytes]:
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="huge.dcm"\r\n\r\n'
        for _ in range(TWO_GIB // len(block)):
            sent += len(block)
            yield block
        yield b"\r\n--b--\r\n"

    response = service.client.post(
        "/v1/jobs",
        content=two_gib_without_a_length(),
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert_problem(response, service, 413, "upload-too-large", "RTINJURY_MAX_UPLOAD_BYTES")
    assert response.headers["connection"] == "close"
    # The server stopped the transfer: the client got to send the limit and what the socket
    # buffers hold, not the 2 GiB (the rest was never read, let alone stored).
    assert MAX_UPLOAD_BYTES < sent < TWO_GIB // 4, sent
    assert_still_serving(service)


FAILED_IN_THE_WORKER = [
    BadCase("4d-mr-enhanced", zipped(inputs.followup_4d_enhanced), 202, "invalid-geometry", "a 4D series"),
    BadCase("zero-dose", zipped(inputs.zero_dose), 202, "invalid-dose", "0 Gy everywhere"),
    BadCase(
        "relative-dose-without-plan",
        zipped(inputs.relative_dose_without_plan),
        202,
        "invalid-dose",
        "DoseUnits RELATIVE cannot be turned into Gy without a prescription dose",
    ),
    BadCase(
        "rows-as-a-decimal-string",
        zipped(inputs.rows_as_a_decimal_string),
        202,
        "unreadable-dicom",
        "Rows is not an integer",
    ),
]


@pytest.mark.parametrize("bad", FAILED_IN_THE_WORKER, ids=[c.name for c in FAILED_IN_THE_WORKER])
def test_failed_by_the_worker_with_a_specific_error(service: Service, case: Path, bad: BadCase) -> None:
    response = service.upload(bad.build(case))
    assert response.status_code == bad.status, response.text
    record = service.finished(response.json()["id"])
    assert record["state"] == "failed", record
    assert record["error"]["code"] == bad.code, record["error"]
    assert bad.words in record["error"]["message"], record["error"]
    assert PATIENT_ID not in str(record)
    assert_still_serving(service, accepted=record["id"])


ACCEPTED = [
    BadCase(
        "non-dicom-named-dcm",
        zipped(inputs.text_named_dcm),
        202,
        "",
        "1 file(s) that are not DICOM were ignored",
    ),
    BadCase("zip-cp437-names", inputs.zip_with_cp437_names, 202, "", ""),
]


@pytest.mark.parametrize("bad", ACCEPTED, ids=[c.name for c in ACCEPTED])
def test_accepted_and_handled(service: Service, case: Path, bad: BadCase) -> None:
    response = service.upload(bad.build(case))
    assert response.status_code == bad.status, response.text
    warnings = response.json()["warnings"]
    assert [w for w in warnings if bad.words in w] if bad.words else warnings == [], warnings
    record = service.finished(response.json()["id"])
    assert record["state"] == "succeeded", record
    assert_still_serving(service, accepted=record["id"])


def test_a_study_of_3000_instances_is_taken_while_the_api_keeps_answering(
    service: Service, case: Path
) -> None:
    body = inputs.study_of_many_instances(case, 3000)
    answered_meanwhile = 0
    uploader = httpx.Client(base_url=service.client.base_url, timeout=REQUEST_TIMEOUT_S)
    with uploader, ThreadPoolExecutor(max_workers=1) as pool:
        upload = pool.submit(
            uploader.post, "/v1/jobs", files=[("files", ("study.zip", body, "application/zip"))], headers=AUTH
        )
        while not upload.done():
            assert service.client.get("/healthz").status_code == 200
            if not upload.done():
                answered_meanwhile += 1
            time.sleep(0.1)
        response = upload.result()
    assert response.status_code == 202, response.text
    assert response.json()["summary"]["followup_instances"] == 3000
    assert answered_meanwhile > 0, "the API answered nothing while it unpacked and assembled the study"
    # Its job runs on in the worker; the service is stopped with it in progress (a warm shutdown).
    assert_still_serving(service, accepted=response.json()["id"])


def test_the_log_holds_no_patient_data(service: Service, good_patient: Path) -> None:
    log = service.log.read_text(errors="replace")
    planning = pydicom.dcmread(next((good_patient / "planning").glob("*.dcm")), stop_before_pixels=True)
    for private in (PATIENT_ID, OTHER_PATIENT_ID, "TEST^PATIENT", planning.SeriesInstanceUID):
        assert private not in log, private


def test_no_archive_entry_was_written_outside_its_folder(service: Service) -> None:
    # "../../../escaped.dcm" would have landed in jobs/ (checked after its case); the absolute
    # entry would be here.
    assert not Path("/tmp/rtinjury-absolute.dcm").exists()
    assert not list(service.storage_root.parent.rglob("escaped.dcm"))
