"""Shared test fixtures: where the real public DICOM files live, strict pydicom."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

#: Real public DICOM-RT files (see each folder's SOURCE.md); shared/ sits beside the clone.
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _strict_pydicom():
    """Parse in strict mode so that written objects are checked as a strict reader would."""
    previous = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.reading_validation_mode = previous
