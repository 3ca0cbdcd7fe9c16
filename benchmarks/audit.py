"""Benchmark: audit throughput (follow-ups per hour) on this machine, with the per-stage split.

Writes a synthetic archive (``--patients`` per task × ``--followups``), then runs
``rtinjury audit`` on it as a user does (a separate process: discovery, hashing, the network's
loading, the pipeline per follow-up, the tables and the summary) once per ``--workers`` value,
each into a fresh audit folder. As a reference, the same stages run first in this process on one
follow-up with the network already loaded (what one ``rtinjury run`` costs): the ratio
audit / reference says what the batch machinery costs or gains. It prints the wall time, the
throughput, the per-stage seconds (means over the follow-ups, from the audit's own table) and
the ratios; it asserts nothing.

    python benchmarks/audit.py [--patients 2] [--followups 3] [--workers 1 2] [--rigid-only] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.synth import write_synthetic_patients
from worker.audit.rows import TIMED_STAGES
from worker.audit.tables import read_audit_csv
from worker.jobs import pipeline
from worker.jobs.folder import JobFolder
from worker.jobs.progress import StatusReporter
from worker.jobs.spec import JobOptions, JobSpec, write_spec
from worker.runtime import get_runtime
from worker.settings import WorkerSettings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=2, help="patients per task (three tasks)")
    parser.add_argument("--followups", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rigid-only", action="store_true", help="no B-spline step (as the tests run)")
    parser.add_argument("--seed", type=int, default=7700)
    parser.add_argument("--keep", type=Path, default=None, help="keep the archive and audits here")
    args = parser.parse_args()
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="rtinjury-audit-bench-"))
    try:
        archive = scratch / "archive"
        write_synthetic_patients(
            archive, task="all", cases=args.patients, seed=args.seed, followups=args.followups
        )
        count = 3 * args.patients * args.followups
        say(f"archive: {3 * args.patients} patients × {args.followups} follow-ups = {count} follow-ups")
        reference = _reference(next(archive.iterdir()), scratch / "reference", args.rigid_only)
        say(f"reference (one follow-up in this process, network loaded): {reference:.1f} s")
        for workers in args.workers:
            _audit(archive, scratch / f"audit-{workers}", workers, args.rigid_only, count, reference)
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _reference(patient: Path, root: Path, rigid_only: bool) -> float:
    settings = WorkerSettings(storage_root=root)
    runtime = get_runtime(settings)  # loaded before the clock starts
    folder = JobFolder(root / "job", source=patient).create()
    first_followup = json.loads((patient / "case.json").read_text())["followups"][0]["series_instance_uid"]
    spec = JobSpec(
        followup_series_uid=first_followup, options=JobOptions(deformable=False if rigid_only else None)
    )
    write_spec(spec, folder.spec_path)
    started = time.perf_counter()
    pipeline.run_job(folder, settings, runtime, StatusReporter(folder))
    return time.perf_counter() - started


def _audit(archive: Path, out: Path, workers: int, rigid_only: bool, count: int, reference: float) -> None:
    command = [sys.executable, "-m", "service.cli.main", "audit", str(archive), "--out", str(out)]
    command += ["--workers", str(workers), "--json", *(["--rigid-only"] if rigid_only else [])]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"rtinjury audit failed: {done.stderr[-2000:]}")
    rows = read_audit_csv(out / "audit.csv")
    succeeded = [r for r in rows if r["status"] == "succeeded"]
    per_hour = 3600.0 * len(rows) / wall
    say(f"\n--workers {workers}: {len(rows)} follow-ups ({len(succeeded)} succeeded) in {wall:.1f} s")
    say(f"  throughput {per_hour:.0f} follow-ups/hour; reference {3600.0 / reference:.0f}/hour")
    say(f"  ratio audit / reference throughput = {per_hour * reference / 3600.0:.2f}")
    stage_means = {s: _mean([r[f"seconds_{s}"] for r in succeeded]) for s in TIMED_STAGES}
    pipeline_mean = _mean([r["seconds_total"] for r in succeeded])
    say(f"  per follow-up (mean over {len(succeeded)}): pipeline {pipeline_mean:.2f} s")
    for stage, seconds in stage_means.items():
        say(f"    {stage:<9} {seconds:6.2f} s  {100.0 * seconds / pipeline_mean:5.1f} %")
    busy = sum(r["seconds_total"] or 0.0 for r in succeeded) / workers
    outside = max(0.0, wall - busy)
    say(f"  outside the pipeline (discovery, hashing, start-up, tables): {outside:.1f} s of {wall:.1f} s")
    if count != len(rows):
        say(f"  note: {count} follow-ups were written, the audit found {len(rows)}")


def _mean(values: list[float | None]) -> float:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else float("nan")


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
