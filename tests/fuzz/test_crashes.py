"""The inputs the fuzzers crashed on, replayed through the same checks (no atheris): each now gives a
result or one of our own errors. One file per finding in ``crashes/<harness>/``, named after it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pydicom
import pytest

CRASHES = Path(__file__).resolve().parent / "crashes"
TARGETS = Path(__file__).resolve().parents[2] / "fuzz" / "targets.py"


def _load_targets() -> ModuleType:
    """fuzz/targets.py by its path: fuzz/ is a folder of scripts, not an installed package."""
    spec = importlib.util.spec_from_file_location("fuzz_targets", TARGETS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


targets = _load_targets()
CHECKS = {"dicom": targets.check_dicom, "upload": targets.check_upload}
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
