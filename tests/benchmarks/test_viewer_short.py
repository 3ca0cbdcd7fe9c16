"""The viewer's page-load benchmark in a small form: ``benchmarks/viewer.py --size small --runs 2``
(a real ``rtinjury serve``, one job, headless Debian Chromium). Asserted: the measurement
completes and the first slice the browser shows is the follow-up's axial slice, at its size.
How long it took is the benchmark's to print, never a test's to assert."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "viewer.py"
RUNS = 2

pytestmark = [pytest.mark.slow]


@pytest.mark.timeout(420)
def test_short_viewer_benchmark_measures_every_opening_of_the_right_slice(tmp_path: Path) -> None:
    figures_path = tmp_path / "viewer.json"
    command = [
        sys.executable,
        str(BENCHMARK),
        "--size",
        "small",
        "--runs",
        str(RUNS),
        "--json",
        str(figures_path),
    ]
    # Its own process group: if it hangs, it, its server and its browser are ended together.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=360)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)  # the benchmark stops its server on the way out
        try:
            output, _ = process.communicate(timeout=60)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"benchmarks/viewer.py ran past 360 s:\n{output[-3000:]}")
    assert process.returncode == 0, output[-4000:]

    figures = json.loads(figures_path.read_text(encoding="utf-8"))
    # The synthetic "small" ORN follow-up: 144 columns, 128 rows, 48 slices (models/synth/params.py).
    assert figures["grid"] == [144, 128, 48]
    assert figures["axial_size"] == [144, 128]
    assert figures["first_slice_sizes"] == [[144, 128]] * RUNS
    for series in ("job_page_ms", "job_page_wall_ms", "reference_ms"):
        assert len(figures[series]) == RUNS and all(v > 0 for v in figures[series]), (series, figures)
    assert figures["server_view_cold_ms"] is not None and figures["server_view_cold_ms"] > 0
    assert figures["ratio_median"] > 0
    assert isinstance(figures["passed"], bool)
    assert "first slice within 1000 ms" in output
