"""The load benchmark in its bounded CI form: ``benchmarks/load.py --short`` (Redis, API, worker
and DICOM node as real processes; 10 clients polling and downloading while 4 studies are pushed
at once with dcmtk's storescu). Only the counts are asserted: one job per study, every job
completed exactly once, no error. Latency is the benchmark's to print, not a test's to assert."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "load.py"
STUDIES = 4  # what --short pushes


@pytest.mark.timeout(480)
def test_short_load_loses_nothing_runs_everything_once_without_errors(tmp_path: Path) -> None:
    figures_path = tmp_path / "load.json"
    command = [sys.executable, str(BENCHMARK), "--short", "--json", str(figures_path)]
    # Its own process group: if it hangs, it and every service process it started are ended.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # the benchmark stops its processes on SIGTERM
        try:
            output, _ = process.communicate(timeout=60)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"benchmarks/load.py --short ran past 420 s:\n{output[-3000:]}")
    assert process.returncode == 0, output[-4000:]

    figures = json.loads(figures_path.read_text(encoding="utf-8"))
    assert not figures["timed_out"], output[-3000:]
    assert figures["instances_stored"] == figures["instances_sent"] > 0
    assert figures["jobs_per_study"] == {"1": STUDIES}
    assert figures["jobs_created"] == figures["jobs_expected"] == figures["jobs_completed_once"]
    assert (figures["lost"], figures["duplicated"], figures["errors"]) == (0, 0, 0), figures["error_kinds"]
    assert figures["jobs_export_not_logged"] == []
    assert figures["status_reads"]["count"] > 0 and figures["downloads"]["count"] > 0
