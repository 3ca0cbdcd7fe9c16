"""Shared test fixtures: where the real public DICOM files live, strict pydicom."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from models.synth import write_synthetic_patients
from worker.logs import PhiFilter

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


@pytest.fixture
def no_site_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RTINJURY_* variable of the machine reaches the test (a broker URL, a model path …)."""
    for name in list(os.environ):
        if name.startswith("RTINJURY_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _logging_as_found(request: pytest.FixtureRequest) -> Iterator[None]:
    """Commands run in this process (``main([...])``) set logging up as their own process should:
    pynetdicom's logger quietened, the PHI filter on every handler there is, pytest's capture
    handlers included (they live as long as the session, and the filter drops pynetdicom's debug
    records). Each test gets logging back as it found it."""
    pynetdicom = logging.getLogger("pynetdicom")
    level = pynetdicom.level
    yield
    pynetdicom.setLevel(level)
    plugin = request.config.pluginmanager.get_plugin("logging-plugin")
    handlers = [getattr(plugin, "caplog_handler", None), getattr(plugin, "report_handler", None)]
    for handler in [*handlers, *logging.getLogger().handlers]:
        for phi_filter in [f for f in getattr(handler, "filters", []) if isinstance(f, PhiFilter)]:
            handler.removeFilter(phi_filter)


@pytest.fixture(scope="session")
def orn_patient(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ORN patient: planning CT, RTPLAN, RTDOSE, a follow-up CT, ground-truth SEG, case.json."""
    return write_synthetic_patients(tmp_path_factory.mktemp("orn"), task="orn", cases=1, seed=9100)[0]


@pytest.fixture(scope="session")
def two_followup_patient(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_patients(
        tmp_path_factory.mktemp("two"), task="orn", cases=1, seed=9101, followups=2
    )[0]
