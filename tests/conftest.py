"""Shared test fixtures: where the real public DICOM files live, strict pydicom."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pydicom
import pytest

from models.synth import write_synthetic_patients

#: Real public DICOM-RT files (see each folder's SOURCE.md); shared/ sits beside the clone.
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def system_tool(name: str) -> str | None:
    """``name`` on the PATH, skipping this virtual environment's bin folder: pynetdicom installs
    its own storescu, echoscu and storescp there, which shadow dcmtk's once the venv is active."""
    venv_bin = Path(sys.executable).parent.resolve()
    folders = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() != venv_bin]
    return shutil.which(name, path=os.pathsep.join(folders))


@pytest.fixture(autouse=True)
def _strict_pydicom():
    """Parse in strict mode so that written objects are checked as a strict reader would."""
    previous = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.reading_validation_mode = previous


@pytest.fixture(scope="session")
def orn_patient(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ORN patient: planning CT, RTPLAN, RTDOSE, a follow-up CT, ground-truth SEG, case.json."""
    return write_synthetic_patients(tmp_path_factory.mktemp("orn"), task="orn", cases=1, seed=9100)[0]


@pytest.fixture(scope="session")
def two_followup_patient(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_patients(
        tmp_path_factory.mktemp("two"), task="orn", cases=1, seed=9101, followups=2
    )[0]
