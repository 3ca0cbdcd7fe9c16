"""Fault injection with real processes: shared fixtures, and the logs of every process of a
failing test's stack in its report."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest

from tests.faults.stack import ACTIVE_STACKS
from tests.service.api.conftest import zip_folders


@pytest.fixture(scope="session")
def patient_zip(orn_patient: Path) -> bytes:
    """The synthetic ORN patient (planning CT, RTPLAN, RTDOSE, follow-up CT) as one zip."""
    return zip_folders(orn_patient)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for stack in ACTIVE_STACKS:
            for process in stack.processes:
                report.sections.append((f"{process.name} log", process.log_tail(20_000)))
    return report
