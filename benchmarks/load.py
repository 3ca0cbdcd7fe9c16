"""Benchmark: the service under load, on loopback only (issue 10, item 3).

Starts the production topology as real processes on this machine: a Redis of its own (free
port), ``rtinjury serve`` (the API alone), ``rtinjury worker --queues cpu,gpu`` (prefork, as
docker-compose runs it on a machine without a GPU) and ``rtinjury node``, all on one storage
root and one job database. Then:

1. ``--api-jobs`` small patients are uploaded through the API and run to the end.
2. Reference: one client reads ``GET /v1/jobs/{id}`` of a finished job on the idle service.
3. Load: ``--clients`` API clients (asyncio, one connection each) poll the jobs (every
   ``--poll-interval`` s) and download each succeeded job's SEG and report, while ``--studies``
   small studies are pushed to the node at once (one dcmtk ``storescu`` per study: that many
   concurrent associations); the jobs the node makes join the polled set as they appear.

It counts jobs per pushed study (exactly 1 each), jobs completed exactly once (no client read a
job unfinished after another read had seen it finished, its timings never changed once finished,
and the worker's log has one successful export per job), lost jobs (a study without a job, a job
that never succeeded) and errors (HTTP 5xx and other unexpected answers, timeouts, connection
errors, DIMSE failures, failed jobs); and the latency of the status reads under load against
the idle reference measured in the same run (ratio loaded / idle), and the CPU seconds each
process used during the load (where the time went on a small machine). Targets: 0 lost, 0
duplicated, 0 errors, p99 ≤ 50 ms for status reads. It prints whether they were met and writes
the figures with ``--json``; it asserts nothing (tests/benchmarks/test_load_short.py does, on
the counts only, for the ``--short`` form).

Why this topology: it is what docker-compose runs (API, node and worker as separate processes on
a Redis broker), so the API's latency includes sharing the machine with the node and the worker.
Clients poll every 0.5 s by default, four times as often as docs/api.md's example (2 s).
Settings that differ from a site's defaults, and why: the node's quiet period is 2 s (not 30:
the run would mostly wait), it accepts ``--studies`` + 5 associations (not 10: the pushes are
concurrent by design), and the job database is SQLite under the storage root unless
``--database-url`` names a PostgreSQL one (as docker-compose does).

    python benchmarks/load.py [--clients 50] [--studies 20] [--api-jobs 4] [--short] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import system_tool
from tests.patients import write_patient

API_KEY = "load-benchmark-key-0123456789abcdef"
PEER_AE = "LOADPACS"
NODE_AE = "RTINJURY"
QUIET_PERIOD_S = 2.0
TARGET_P99_MS = 50.0
FINISHED = ("succeeded", "failed")
#: What each client downloads of a succeeded job, once.
DOWNLOADS = ("seg", "report")
REFERENCE_READS = 200
#: Celery's line for a task that returned: ``Task rtinjury.export[<task id>] succeeded in …: '<job>'``.
EXPORT_DONE = re.compile(r"Task rtinjury\.export\[[^\]]+\] succeeded in [^:]+: '([0-9a-f]{32})'")
DIMSE_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")


def main() -> int:
    args = _arguments()
    # SIGTERM (a CI timeout) unwinds like Ctrl-C, so the processes started here are stopped.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="rtinjury-load-"))
    try:
        api_patients = [_patient(scratch / "api", f"LOADAPI{n:03d}") for n in range(args.api_jobs)]
        node_patients = [_patient(scratch / "node", f"LOADNODE{n:03d}") for n in range(args.studies)]
        with running_stack(scratch, args) as stack:
            figures = asyncio.run(_benchmark(stack, args, api_patients, node_patients))
            figures.worker_exports = _exports_in_log(stack.worker_log)
        if args.keep is not None:
            _write_reads(args.keep / "reads.json", figures)
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    summary = summarise(figures, args)
    _print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent API clients")
    parser.add_argument("--studies", type=int, default=20, help="studies pushed to the node at once")
    parser.add_argument("--api-jobs", type=int, default=4, help="jobs uploaded through the API first")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds between a client's reads")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on the load phase after this")
    parser.add_argument("--short", action="store_true", help="bounded CI form: 10 clients, 4 studies, 2 jobs")
    parser.add_argument("--database-url", default=None, help="job database (default: SQLite)")
    parser.add_argument(
        "--worker-nice", type=int, default=0, help="run the worker at this niceness (API before batch work)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--keep", type=Path, default=None, help="keep patients, storage and logs here")
    args = parser.parse_args()
    if args.short:
        args.clients, args.studies, args.api_jobs, args.timeout = 10, 4, 2, 240.0
    if min(args.clients, args.studies, args.api_jobs) < 1:
        parser.error("--clients, --studies and --api-jobs must be at least 1")
    return args


def _patient(root: Path, patient_id: str) -> Path:
    """A small patient (8-slice planning CT, RTPLAN, RTDOSE, 6-slice follow-up MR)."""
    return write_patient(root / patient_id.lower(), patient_id=patient_id).root


# -- the processes ---------------------------------------------------------------------------


@dataclass
class Stack:
    url: str
    node_port: int
    worker_log: Path
    logs: list[Path]
    #: The process of each role (its children count with it: the worker's pool process).
    pids: dict[str, int]

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by each role, and by this process (the clients and storescu runs)."""
        used = {role: _tree_cpu_seconds(pid) for role, pid in self.pids.items()}
        times = os.times()
        return used | {"clients": times.user + times.system + times.children_user + times.children_system}


@contextmanager
def running_stack(scratch: Path, args: argparse.Namespace) -> Iterator[Stack]:
    """Redis, API, worker and node as processes; all stopped (then killed) on the way out."""
    logs = scratch / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    redis_port, api_port, node_port = _free_port(), _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTINJURY_")}
    env |= {
        "RTINJURY_STORAGE_ROOT": str(scratch / "storage"),
        "RTINJURY_API_KEY": API_KEY,
        "RTINJURY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "RTINJURY_NODE_AE_TITLE": NODE_AE,
        "RTINJURY_NODE_PORT": str(node_port),
        "RTINJURY_NODE_PEERS": json.dumps([{"ae_title": PEER_AE, "host": "127.0.0.1"}]),
        "RTINJURY_NODE_QUIET_PERIOD_S": str(QUIET_PERIOD_S),
        "RTINJURY_NODE_MAX_ASSOCIATIONS": str(args.studies + 5),
        "RTINJURY_NODE_MIN_FREE_BYTES": str(64 * 1024**2),
    }
    if args.database_url:
        env["RTINJURY_DATABASE_URL"] = args.database_url
    processes: list[subprocess.Popen[bytes]] = []
    try:
        redis_server = _tool("redis-server")
        redis_args = ["--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        processes.append(_start([redis_server, *redis_args], env, logs / "redis.log"))
        _wait_for_port(redis_port, processes, logs)
        rtinjury = [sys.executable, "-m", "service.cli.main"]
        worker = [*rtinjury, "worker", "--queues", "cpu,gpu", "--loglevel", "INFO"]
        if args.worker_nice:
            worker = ["nice", "-n", str(args.worker_nice), *worker]
        processes.append(_start(worker, env, logs / "worker.log"))
        processes.append(_start([*rtinjury, "node"], env, logs / "node.log"))
        processes.append(_start([*rtinjury, "serve", "--port", str(api_port)], env, logs / "serve.log"))
        url = f"http://127.0.0.1:{api_port}"
        _wait_for_port(node_port, processes, logs)
        _wait_for_api(url, processes, logs)
        roles = dict(zip(("redis", "worker", "node", "api"), (p.pid for p in processes), strict=True))
        yield Stack(url, node_port, logs / "worker.log", sorted(logs.glob("*.log")), roles)
    finally:
        _stop(processes)


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            process.terminate()
    for process in reversed(processes):
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _tree_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of ``pid`` and its living descendants, from /proc."""
    stats: dict[int, tuple[int, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command: state, ppid, … utime (14th field overall), stime (15th).
        stats[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])))
    tree, total = {pid}, 0.0
    for _ in range(8):  # a few generations deep is plenty (worker → pool process)
        tree |= {child for child, (parent, _) in stats.items() if parent in tree}
    for member in tree:
        total += stats.get(member, (0, 0))[1]
    return total / os.sysconf("SC_CLK_TCK")


def _tool(name: str) -> str:
    path = system_tool(name)
    if path is None:
        raise SystemExit(f"{name} is not installed (.ci/run installs it)")
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _check_alive(processes: list[subprocess.Popen[bytes]], logs: Path) -> None:
    for process in processes:
        if process.poll() is not None:
            tails = "\n".join(
                f"== {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in logs.glob("*.log")
            )
            raise SystemExit(f"a service process exited early ({process.args!r}):\n{tails}")


def _wait_for_port(port: int, processes: list[subprocess.Popen[bytes]], logs: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _check_alive(processes, logs)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on port {port} after 120 s")


def _wait_for_api(url: str, processes: list[subprocess.Popen[bytes]], logs: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _check_alive(processes, logs)
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("the API was not ready (GET /readyz) within 120 s")


# -- what is measured ------------------------------------------------------------------------


@dataclass
class Read:
    """One status read: when it was sent and answered (monotonic s), its state and timings."""

    sent: float
    answered: float
    state: str
    timings: str


@dataclass
class Figures:
    api_jobs: list[str] = field(default_factory=list)
    reference_ms: list[float] = field(default_factory=list)
    loaded_ms: list[float] = field(default_factory=list)
    download_ms: list[float] = field(default_factory=list)
    download_bytes: int = 0
    reads: dict[str, list[Read]] = field(default_factory=dict)
    #: (what, detail) of every error: HTTP status, timeout, DIMSE status, failed job …
    errors: list[tuple[str, str]] = field(default_factory=list)
    instances_sent: int = 0
    instances_stored: int = 0
    studies: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    load_seconds: float = 0.0
    #: CPU seconds each role used during the load phase.
    load_cpu_seconds: dict[str, float] = field(default_factory=dict)
    timed_out: bool = False
    worker_exports: Counter[str] = field(default_factory=Counter)


async def _benchmark(
    stack: Stack, args: argparse.Namespace, api_patients: list[Path], node_patients: list[Path]
) -> Figures:
    figures = Figures()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=60) as admin:
        figures.api_jobs = [await _submit(admin, patient) for patient in api_patients]
        say(f"{len(api_patients)} API job(s) submitted; waiting for them to finish")
        await _wait_finished(admin, figures.api_jobs, args.timeout)
        say(f"reference: {REFERENCE_READS} status reads by one client on the idle service")
        figures.reference_ms = await _reference(admin, figures.api_jobs[0])
        say(f"load: {args.clients} clients polling, {len(node_patients)} studies pushed at once")
        await _load(stack, args, node_patients, admin, figures)
        figures.studies = (await _get_json(admin, "/v1/studies?limit=500"))["data"]
        figures.jobs = (await _get_json(admin, "/v1/jobs?limit=500"))["data"]
    return figures


async def _submit(client: httpx.AsyncClient, patient: Path) -> str:
    files = [("files", ("patient.zip", _zip(patient), "application/zip"))]
    created = await client.post("/v1/jobs", files=files)
    if created.status_code != 202:
        raise SystemExit(f"POST /v1/jobs answered {created.status_code}: {created.text[:500]}")
    return str(created.json()["id"])


async def _wait_finished(client: httpx.AsyncClient, job_ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting = set(job_ids)
    while waiting:
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(waiting)} API job(s) did not finish within {timeout:.0f} s")
        for job_id in sorted(waiting):
            if (await _get_json(client, f"/v1/jobs/{job_id}"))["state"] in FINISHED:
                waiting.discard(job_id)
        await asyncio.sleep(0.5)


async def _reference(client: httpx.AsyncClient, job_id: str) -> list[float]:
    for _ in range(20):  # warm-up: connection, caches
        await client.get(f"/v1/jobs/{job_id}")
    latencies = []
    for _ in range(REFERENCE_READS):
        started = time.perf_counter()
        answer = await client.get(f"/v1/jobs/{job_id}")
        latencies.append(1000 * (time.perf_counter() - started))
        answer.raise_for_status()
    return latencies


async def _get_json(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    answer = await client.get(path)
    answer.raise_for_status()
    result: dict[str, Any] = answer.json()
    return result


# -- the load phase --------------------------------------------------------------------------


@dataclass
class Board:
    """The jobs known to the clients, and when the load phase is over."""

    jobs: list[str]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    pushes_done: bool = False
    studies_settled: bool = False

    def add(self, job_id: str) -> None:
        if job_id not in self.jobs:
            self.jobs.append(job_id)


async def _load(
    stack: Stack,
    args: argparse.Namespace,
    node_patients: list[Path],
    admin: httpx.AsyncClient,
    figures: Figures,
) -> None:
    board = Board(jobs=list(figures.api_jobs))
    cpu_before = stack.cpu_seconds()
    started = time.monotonic()
    clients = [
        asyncio.create_task(_client(number, stack.url, board, figures, args.poll_interval))
        for number in range(args.clients)
    ]
    watch = asyncio.create_task(_watch_studies(admin, board, len(node_patients)))
    await _push_all(stack.node_port, node_patients, figures)
    board.pushes_done = True
    deadline = started + args.timeout
    while not _done(board, figures) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    figures.timed_out = not _done(board, figures)
    # One more round of reads, so that every client has seen the final states.
    await asyncio.sleep(args.poll_interval * 2)
    board.stop.set()
    await asyncio.gather(*clients, watch)
    figures.load_seconds = time.monotonic() - started
    figures.load_cpu_seconds = {
        role: round(used - cpu_before.get(role, 0.0), 1) for role, used in stack.cpu_seconds().items()
    }


def _done(board: Board, figures: Figures) -> bool:
    if not (board.pushes_done and board.studies_settled):
        return False
    return all(any(r.state in FINISHED for r in figures.reads.get(j, [])) for j in board.jobs)


async def _watch_studies(admin: httpx.AsyncClient, board: Board, expected: int) -> None:
    """Adds the node's jobs to the board as the studies complete (an admin key sees them)."""
    while not board.stop.is_set():
        try:
            studies = (await _get_json(admin, "/v1/studies?limit=500"))["data"]
        except httpx.HTTPError:
            studies = []  # counted by the clients' own reads; the next round tries again
        for study in studies:
            for job_id in study["job_ids"]:
                board.add(job_id)
        settled = [s for s in studies if not s["pending"]]
        board.studies_settled = board.pushes_done and len(settled) >= expected
        await asyncio.sleep(0.5)


async def _client(number: int, url: str, board: Board, figures: Figures, interval: float) -> None:
    """One API client: reads a job's status in turn (round-robin from its own offset) and
    downloads each succeeded job's results once."""
    downloaded: set[str] = set()
    turn = number
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        while not board.stop.is_set():
            job_id = board.jobs[turn % len(board.jobs)]
            turn += 1
            state = await _read_status(client, job_id, figures)
            if state == "succeeded" and job_id not in downloaded:
                downloaded.add(job_id)
                for name in DOWNLOADS:
                    await _download(client, job_id, name, figures)
            await asyncio.sleep(interval)


async def _read_status(client: httpx.AsyncClient, job_id: str, figures: Figures) -> str | None:
    sent = time.monotonic()
    started = time.perf_counter()
    try:
        answer = await client.get(f"/v1/jobs/{job_id}")
    except httpx.HTTPError as error:
        figures.errors.append(("status read", type(error).__name__))
        return None
    figures.loaded_ms.append(1000 * (time.perf_counter() - started))
    if answer.status_code != 200:
        figures.errors.append(("status read", f"HTTP {answer.status_code}"))
        return None
    job = answer.json()
    timings = json.dumps(job["timings_s"], sort_keys=True) if job["state"] in FINISHED else ""
    figures.reads.setdefault(job_id, []).append(Read(sent, time.monotonic(), job["state"], timings))
    return str(job["state"])


async def _download(client: httpx.AsyncClient, job_id: str, name: str, figures: Figures) -> None:
    started = time.perf_counter()
    try:
        answer = await client.get(f"/v1/jobs/{job_id}/results/{name}")
    except httpx.HTTPError as error:
        figures.errors.append((f"download {name}", type(error).__name__))
        return
    figures.download_ms.append(1000 * (time.perf_counter() - started))
    if answer.status_code != 200 or not answer.content:
        figures.errors.append((f"download {name}", f"HTTP {answer.status_code}, {len(answer.content)} bytes"))
        return
    figures.download_bytes += len(answer.content)


async def _push_all(node_port: int, patients: list[Path], figures: Figures) -> None:
    """Every study at once, one storescu (one association) each."""
    storescu = _tool("storescu")
    results = await asyncio.gather(
        *(asyncio.to_thread(_push, storescu, node_port, patient) for patient in patients)
    )
    for files, statuses, problem in results:
        figures.instances_sent += files
        figures.instances_stored += sum(1 for s in statuses if s == 0)
        failures = [f"0x{s:04X}" for s in statuses if s != 0 and s >> 12 != 0xB]
        if problem or failures or len(statuses) != files:
            detail = problem or f"{len(statuses)} answers to {files} instances, failures {failures}"
            figures.errors.append(("C-STORE", detail))


def _push(storescu: str, port: int, patient: Path) -> tuple[int, list[int], str | None]:
    """Send one study; (instances, the DIMSE statuses received, what went wrong if anything)."""
    files = sorted(patient.rglob("*.dcm"))
    command = [storescu, "-d", "-R", "-aet", PEER_AE, "-aec", NODE_AE, "127.0.0.1", str(port)]
    # dcmtk leaves Nagle's algorithm on unless told: every instance would wait ~40 ms on loopback.
    env = {**os.environ, "TCP_NODELAY": "1"}
    try:
        done = subprocess.run(
            [*command, *map(str, files)], capture_output=True, text=True, timeout=300, env=env
        )
    except subprocess.TimeoutExpired:
        return len(files), [], "storescu did not finish within 300 s"
    statuses = [int(code, 16) for code in DIMSE_STATUS.findall(done.stdout + done.stderr)]
    problem = None if done.returncode == 0 else f"storescu exit status {done.returncode}"
    return len(files), statuses, problem


# -- the figures -----------------------------------------------------------------------------


def _exports_in_log(worker_log: Path) -> Counter[str]:
    """Successful exports per job, from the worker's log (the last stage: one per completed run)."""
    return Counter(EXPORT_DONE.findall(worker_log.read_text(errors="replace")))


def _write_reads(path: Path, figures: Figures) -> None:
    """Every status read of the load phase (for plotting latency against time or state)."""
    reads = {job: [asdict(r) for r in rs] for job, rs in figures.reads.items()}
    path.write_text(json.dumps(reads), encoding="utf-8")


def _ran_again(reads: list[Read]) -> bool:
    """A read sent after another read had seen the job finished found it unfinished, or the
    finished job's timings changed: the job ran (at least partly) a second time."""
    finished = [r for r in reads if r.state in FINISHED]
    if not finished:
        return False
    first_seen = min(r.answered for r in finished)
    unfinished_later = any(r.state not in FINISHED and r.sent > first_seen for r in reads)
    return unfinished_later or len({r.timings for r in finished}) > 1


def summarise(figures: Figures, args: argparse.Namespace) -> dict[str, Any]:
    """The figures as one JSON-ready dictionary (what is printed and written with --json)."""
    jobs_per_study = [len(s["job_ids"]) for s in figures.studies]
    node_jobs = [j for j in figures.jobs if j["source"] == "node"]
    states = Counter(j["state"] for j in figures.jobs)
    expected_jobs = args.api_jobs + args.studies
    ran_again = sorted(j for j, reads in figures.reads.items() if _ran_again(reads))
    exported_twice = sorted(j for j, count in figures.worker_exports.items() if count > 1)
    not_exported = [
        j["id"] for j in figures.jobs if j["state"] == "succeeded" and not figures.worker_exports[j["id"]]
    ]
    errors = list(figures.errors) + [
        ("job failed", str(j["error"])) for j in figures.jobs if j["state"] == "failed"
    ]
    twice = set(ran_again) | set(exported_twice)
    duplicated = (
        sum(max(0, n - 1) for n in jobs_per_study) + max(0, len(node_jobs) - args.studies) + len(twice)
    )
    studies_without_job = args.studies - sum(1 for n in jobs_per_study if n >= 1)
    lost = studies_without_job + sum(1 for j in figures.jobs if j["state"] != "succeeded")
    loaded, reference = figures.loaded_ms, figures.reference_ms
    return {
        "settings": {
            "clients": args.clients,
            "studies": args.studies,
            "api_jobs": args.api_jobs,
            "poll_interval_s": args.poll_interval,
            "database": "postgresql" if args.database_url else "sqlite",
            "worker_nice": args.worker_nice,
            "cpu_count": os.cpu_count(),
        },
        "load_seconds": round(figures.load_seconds, 1),
        "load_cpu_seconds": figures.load_cpu_seconds,
        "timed_out": figures.timed_out,
        "studies_pushed": args.studies,
        "instances_sent": figures.instances_sent,
        "instances_stored": figures.instances_stored,
        "studies_recorded": len(figures.studies),
        "jobs_per_study": dict(Counter(jobs_per_study)),
        "jobs_expected": expected_jobs,
        "jobs_created": len(figures.jobs),
        "jobs_by_state": dict(states),
        "jobs_completed_once": sum(
            1 for j in figures.jobs if j["state"] == "succeeded" and j["id"] not in twice
        ),
        "jobs_ran_again": ran_again,
        "jobs_exported_twice": exported_twice,
        "jobs_export_not_logged": not_exported,
        "lost": lost,
        "duplicated": duplicated,
        "errors": len(errors),
        "error_kinds": dict(Counter(f"{what}: {detail}" for what, detail in errors)),
        "status_reads": {
            "count": len(loaded),
            "per_second": round(len(loaded) / figures.load_seconds, 1) if figures.load_seconds else 0.0,
            "loaded_ms": _percentiles(loaded),
            "idle_ms": _percentiles(reference),
            "ratio_p50": _ratio(loaded, reference, 50),
            "ratio_p99": _ratio(loaded, reference, 99),
        },
        "downloads": {
            "count": len(figures.download_ms),
            "bytes": figures.download_bytes,
            "ms": _percentiles(figures.download_ms),
        },
    }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if q < 100 else max(values)


def _percentiles(values: list[float]) -> dict[str, float]:
    return {f"p{q}": round(_percentile(values, q), 2) for q in (50, 95, 99)} | {
        "max": round(max(values), 2) if values else float("nan")
    }


def _ratio(loaded: list[float], reference: list[float], q: float) -> float:
    base = _percentile(reference, q)
    return round(_percentile(loaded, q) / base, 2) if base else float("nan")


def _print_summary(summary: dict[str, Any]) -> None:
    reads = summary["status_reads"]
    settings = summary["settings"]
    say(
        f"\nload: {settings['clients']} clients every {settings['poll_interval_s']} s, "
        f"{settings['studies']} studies pushed at once, {summary['load_seconds']} s "
        f"({'TIMED OUT' if summary['timed_out'] else 'completed'})"
    )
    rows = [
        ("instances stored / sent", f"{summary['instances_stored']} / {summary['instances_sent']}"),
        ("jobs per study", json.dumps(summary["jobs_per_study"])),
        ("jobs created / expected", f"{summary['jobs_created']} / {summary['jobs_expected']}"),
        ("jobs by state", json.dumps(summary["jobs_by_state"])),
        ("jobs completed exactly once", str(summary["jobs_completed_once"])),
        ("lost", _target(summary["lost"], 0)),
        ("duplicated", _target(summary["duplicated"], 0)),
        ("errors", _target(summary["errors"], 0)),
        ("status reads", f"{reads['count']} ({reads['per_second']}/s)"),
        ("  idle p50 / p99 (ms)", f"{reads['idle_ms']['p50']} / {reads['idle_ms']['p99']}"),
        ("  loaded p50 / p95 / p99 (ms)", "{p50} / {p95} / {p99}".format(**reads["loaded_ms"])),
        ("  ratio loaded / idle p50, p99", f"{reads['ratio_p50']}, {reads['ratio_p99']}"),
        ("  loaded p99 ≤ 50 ms", "met" if reads["loaded_ms"]["p99"] <= TARGET_P99_MS else "NOT met"),
        ("downloads", f"{summary['downloads']['count']}, p99 {summary['downloads']['ms']['p99']} ms"),
        ("CPU s during load", ", ".join(f"{k} {v}" for k, v in summary["load_cpu_seconds"].items())),
    ]
    for name, value in rows:
        say(f"  {name:<32} {value}")
    for kind, count in summary["error_kinds"].items():
        say(f"  error: {kind} ×{count}")


def _target(value: int, target: int) -> str:
    return f"{value} ({'met' if value == target else 'NOT met'}: target {target})"


def _zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*.dcm")):
            archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
