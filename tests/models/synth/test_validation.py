"""Every written DICOM object passes dciodvfy (through the shared dicom-validate.sh)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

VALIDATE = Path(__file__).resolve().parents[4] / "shared" / "tools" / "dicom-validate.sh"
EXPECTED_IODS = {"CTImage", "MRImage", "RTPlan", "RTDose", "Segmentation"}


@pytest.mark.tools
def test_all_objects_pass_dciodvfy(synth_cases: dict[str, Path]) -> None:
    if not VALIDATE.is_file() or shutil.which("dciodvfy") is None:
        pytest.fail(
            "dicom-validate.sh or dciodvfy missing (../shared/tools/install-dicom-tools.sh)", pytrace=False
        )
    # Only DICOM folders: case.json is not a DICOM file.
    folders = [d for case in synth_cases.values() for d in sorted(case.iterdir()) if d.is_dir()]
    result = subprocess.run(
        [str(VALIDATE), *map(str, folders)], capture_output=True, text=True, timeout=300, check=False
    )
    lines = result.stdout.splitlines()
    failures = [line for line in lines if not line.startswith("PASS")]
    assert result.returncode == 0, "\n".join(failures[:20]) + result.stderr
    assert not failures
    iods = {part.removeprefix("iod=") for line in lines for part in line.split() if part.startswith("iod=")}
    assert iods == EXPECTED_IODS
    assert " 0 fail, 0 crash" in result.stderr
