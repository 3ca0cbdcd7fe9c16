"""Shared by the bad-input catalogue: one good small patient, copied for each case to damage."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.badinput.inputs import PATIENT_ID
from tests.patients import write_patient


@pytest.fixture(autouse=True)
def _strict_pydicom() -> Iterator[None]:
    """Overrides the suite's strict pydicom mode: the catalogue reads files as the product does
    (pydicom's default), so a case shows what a user meets, not what a strict parser would."""
    yield


@pytest.fixture(scope="session")
def good_patient(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good small patient: planning CT (8 slices), RTPLAN, RTDOSE, one FLAIR follow-up (6)."""
    return write_patient(tmp_path_factory.mktemp("badinput-good") / "patient", patient_id=PATIENT_ID).root


@pytest.fixture
def case(good_patient: Path, tmp_path: Path) -> Path:
    """A fresh copy of the good patient for one case to damage."""
    return Path(shutil.copytree(good_patient, tmp_path / "case"))
