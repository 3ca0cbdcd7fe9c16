"""The inputs the fuzzers crashed on, replayed through the same checks (no atheris): each now gives a
result or one of our own errors. One file per finding in ``crashes/<harness>/``, named after it."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from fuzz.targets import check_dicom, check_upload

CRASHES = Path(__file__).resolve().parent / "crashes"
CHECKS = {"dicom": check_dicom, "upload": check_upload}
FOUND = sorted(p for harness in CHECKS for p in (CRASHES / harness).iterdir() if p.is_file())


@pytest.fixture(autouse=True)
def _production_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom as the worker and the node run it (the fuzzers found these in its default mode)."""
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.WARN)


def test_there_are_crashes_to_replay() -> None:
    assert FOUND, f"no input under {CRASHES}"


@pytest.mark.parametrize("crash", FOUND, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_crashing_input_is_answered_with_our_own_error(crash: Path) -> None:
    CHECKS[crash.parent.name](crash.read_bytes())
