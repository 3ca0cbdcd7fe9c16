"""Writing files so that a reader sees the old file or the whole new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

#: mkstemp makes owner-only files; outputs are read by the service's other users.
FILE_MODE = 0o644


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """A binary stream that replaces ``path`` (same folder, os.replace) only if the block succeeds."""
    path = Path(path)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            os.fchmod(stream.fileno(), FILE_MODE)
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_atomically(path: Path, data: bytes) -> None:
    with atomic_write(path) as stream:
        stream.write(data)


def replace_folder(new: Path, target: Path) -> None:
    """Put the folder ``new`` in place of ``target`` (same parent). Two renames: a reader sees the
    old folder or the new one, never a mix of both; only for the instant between them, neither."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)
