"""Benchmark: one synthetic patient through the REST API, end to end, on this machine.

Starts ``rtinjury serve`` (embedded worker: no Redis, no GPU) as a separate process, uploads
the patient as a zip, polls ``GET /v1/jobs/{id}`` until it has finished and downloads the SEG,
then prints the stage timings the worker measured, the client's end-to-end time (upload →
result downloaded) and the worker's peak memory (VmHWM of its process). As a reference, the
same stages run first in this process (what ``rtinjury run`` does, network already loaded):
the ratio API / in-process is the price of the service around the pipeline. Deformable
registration is switched on explicitly. Targets (issue 7): ≤ 45 s end to end on 2 CPU cores
with the demo model; peak worker memory ≤ 3 GB. It prints whether they were met; it asserts
nothing.

    python benchmarks/e2e.py [--task orn] [--size full] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.synth import write_synthetic_patients
from tests.service.api.conftest import zip_folders
from worker.jobs import pipeline
from worker.jobs.folder import JobFolder
from worker.jobs.progress import StatusReporter
from worker.jobs.spec import JobOptions, JobSpec, write_spec
from worker.runtime import get_runtime
from worker.settings import WorkerSettings

TARGET_SECONDS = 45.0
TARGET_PEAK_GB = 3.0
API_KEY = "benchmark-key-0123456789abcdefghij"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=["orn", "ce", "crn"], default="orn")
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument("--seed", type=int, default=9100)
    parser.add_argument("--keep", type=Path, default=None, help="keep patient and storage here")
    args = parser.parse_args()
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="rtinjury-e2e-"))
    try:
        patient = write_synthetic_patients(
            scratch / "patient", task=args.task, cases=1, seed=args.seed, size=args.size
        )[0]
        say(f"patient: {args.task}, size {args.size}, {sum(1 for p in patient.rglob('*.dcm'))} DICOM files")
        reference = _in_process(patient, scratch / "reference")
        served = _through_api(patient, scratch / "storage")
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    _print_results(reference, served)
    return 0


def _in_process(patient: Path, root: Path) -> dict[str, float]:
    settings = WorkerSettings(storage_root=root)
    runtime = get_runtime(settings)  # loaded before the clock starts, as in a running worker
    folder = JobFolder(root / "job", source=patient).create()
    write_spec(JobSpec(options=JobOptions(deformable=True)), folder.spec_path)
    reporter = StatusReporter(folder)
    started = time.perf_counter()
    pipeline.run_job(folder, settings, runtime, reporter)
    return {"total": time.perf_counter() - started, "peak_gb": _self_peak_gb()}


def _through_api(patient: Path, storage: Path) -> dict[str, object]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTINJURY_")}
    env |= {"RTINJURY_STORAGE_ROOT": str(storage), "RTINJURY_API_KEY": API_KEY}
    log = storage.parent / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "service.cli.main", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, server)
        upload = zip_folders(patient)
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120
        ) as client:
            started = time.perf_counter()
            created = client.post(
                "/v1/jobs",
                files=[("files", ("patient.zip", upload, "application/zip"))],
                data={"options": '{"deformable": true}'},
            )
            created.raise_for_status()
            job_id = created.json()["id"]
            accepted = time.perf_counter() - started
            job = _wait_finished(client, job_id)
            client.get(f"/v1/jobs/{job_id}/results/seg").raise_for_status()
            total = time.perf_counter() - started
        worker_peak = max((_peak_gb(pid) for pid in _children(server.pid)), default=float("nan"))
    finally:
        server.terminate()
        server.wait(60)
    return {"job": job, "accepted": accepted, "total": total, "worker_peak_gb": worker_peak}


def _wait_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("rtinjury serve exited; see serve.log (use --keep)")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("rtinjury serve did not answer within 120 s")


def _wait_finished(client: httpx.Client, job_id: str) -> dict[str, object]:
    while True:
        job: dict[str, object] = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed"):
            if job["state"] == "failed":
                raise SystemExit(f"the job failed: {job['error']}")
            return job
        time.sleep(0.1)


def _print_results(reference: dict[str, float], served: dict[str, object]) -> None:
    job = served["job"]
    assert isinstance(job, dict)
    timings: dict[str, float] = job["timings_s"]
    total, peak, accepted = (float(served[k]) for k in ("total", "worker_peak_gb", "accepted"))  # type: ignore[arg-type]
    say("\nstage timings (worker, through the API):")
    for stage, seconds in timings.items():
        say(f"  {stage:<10} {seconds:7.2f} s")
    say(f"\nupload accepted (case checked) in {accepted:.2f} s")
    say(
        f"end to end through the API: {total:.2f} s (target ≤ {TARGET_SECONDS:.0f} s: "
        f"{'met' if total <= TARGET_SECONDS else 'NOT met'})"
    )
    say(
        f"reference, same stages in one process: {reference['total']:.2f} s; "
        f"ratio API / in-process = {total / reference['total']:.2f}"
    )
    say(
        f"peak worker memory: {peak:.2f} GB (target ≤ {TARGET_PEAK_GB:.0f} GB: "
        f"{'met' if peak <= TARGET_PEAK_GB else 'NOT met'}); "
        f"in-process reference peak {reference['peak_gb']:.2f} GB"
    )


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the embedded worker is one), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _peak_gb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def _self_peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


if __name__ == "__main__":
    sys.exit(main())
