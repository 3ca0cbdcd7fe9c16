"""The atheris harnesses in their bounded CI form: each runs in a subprocess for a fixed number of
executions from the committed seeds (a fixed libFuzzer seed, so a failure replays), and must end
without a crash and say how many inputs it ran. Longer runs: see each harness's docstring."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
#: Executions per harness: about 15 s each on one CI core (both run ~100-200 inputs/s).
RUNS = 2000
DONE = re.compile(r"Done (\d+) (?:runs )?in (\d+) second")


@pytest.mark.timeout(150)
@pytest.mark.parametrize("harness", ["dicom", "upload"])
def test_a_bounded_run_finds_no_crash(harness: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"  # new inputs go here, the committed seeds are only read
    corpus.mkdir()
    command = [
        sys.executable,
        str(FUZZ / f"fuzz_{harness}.py"),
        f"-atheris_runs={RUNS}",
        "-seed=20261129",
        "-timeout=30",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
        str(FUZZ / "corpus" / harness),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=140)

    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert done.returncode == 0, f"{crashes}\n{done.stderr[-4000:]}"
    ran = DONE.search(done.stderr)
    assert ran is not None and int(ran.group(1)) >= RUNS - 10, done.stderr[-2000:]
