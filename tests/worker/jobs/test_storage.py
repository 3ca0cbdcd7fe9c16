"""Telling a full disk from other faults, whatever library raised it."""

from __future__ import annotations

import errno
import sqlite3

import pytest

from worker.jobs.storage import is_disk_full


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        RuntimeError("ITK ERROR: MetaImageIO: File cannot be written\nReason: No space left on device"),
        sqlite3.OperationalError("database or disk is full"),
    ],
    ids=["enospc", "quota", "itk", "sqlite"],
)
def test_a_full_disk_is_recognised(error: Exception) -> None:
    assert is_disk_full(error)


def test_a_full_disk_behind_another_error_is_recognised() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as cause:
            raise ValueError("the export failed") from cause
    except ValueError as error:
        assert is_disk_full(error)


@pytest.mark.parametrize(
    "error",
    [OSError(errno.EACCES, "Permission denied"), FileNotFoundError("status.json"), ValueError("space")],
)
def test_other_faults_are_not_a_full_disk(error: Exception) -> None:
    assert not is_disk_full(error)
