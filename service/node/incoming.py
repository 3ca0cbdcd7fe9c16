"""The temporary file pynetdicom writes an arriving dataset to, made to survive a full disk.

pynetdicom writes each fragment of a C-STORE's dataset as it arrives, on the association's own
thread; a write that raises there (ENOSPC) aborts the association, and the peer loses every
instance it sent on it. Here a write that finds the disk full closes the file, gives its space
back and drops the rest of the dataset; the file is noted as unwritten, and the inbox answers it
with 0xA700 (out of resources), as below the free-space floor. The association goes on: the
instances it stored before are kept, and the peer may send the refused one again later.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from uuid import uuid4

from worker.jobs.storage import DISK_FULL_ERRNOS

_lock = threading.Lock()
#: Paths of temporary files whose dataset did not fit: until the inbox has answered them.
_unwritten: set[str] = set()


class SpaceAwareFile:
    """A ``NamedTemporaryFile`` as pynetdicom uses it (``write``, ``file.flush``, ``close``,
    ``name``) that stops writing, instead of raising, once the disk is full."""

    def __init__(self, name: str, inner: IO[bytes] | None) -> None:
        self.name = name
        self._inner = inner
        #: Closed by its user (pynetdicom), as a file object's ``closed``: not merely given up.
        self.closed = False
        if inner is None:
            self._give_up()

    @property
    def file(self) -> SpaceAwareFile:
        # pynetdicom flushes ``file`` (the wrapped file object) after each fragment.
        return self

    def write(self, data: bytes) -> int:
        if self._inner is not None:
            self._guarded(lambda inner: inner.write(data))
        return len(data)

    def flush(self) -> None:
        if self._inner is not None:
            self._guarded(lambda inner: inner.flush())

    def close(self) -> None:
        self.closed = True
        if self._inner is not None:
            self._guarded(lambda inner: inner.close())
            self._inner = None

    def _guarded(self, action: Callable[[IO[bytes]], Any]) -> None:
        assert self._inner is not None
        try:
            action(self._inner)
        except OSError as error:
            if error.errno not in DISK_FULL_ERRNOS:
                raise
            self._give_up()

    def _give_up(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            with contextlib.suppress(OSError):  # its buffer cannot be written either
                inner.close()
        with contextlib.suppress(OSError):
            os.truncate(self.name, 0)
        with _lock:
            _unwritten.add(self.name)


def space_aware_temporary_file(*args: Any, **kwargs: Any) -> SpaceAwareFile:
    """``tempfile.NamedTemporaryFile(*args, **kwargs)``, wrapped; on a disk too full to create
    one, a file already given up (pynetdicom deletes it by name: there is nothing to delete)."""
    try:
        inner = tempfile.NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115 (closed by pynetdicom)
    except OSError as error:
        if error.errno not in DISK_FULL_ERRNOS:
            raise
        folder = kwargs.get("dir") or tempfile.gettempdir()
        return SpaceAwareFile(str(Path(folder) / f"unwritten-{uuid4().hex}.dcm"), None)
    return SpaceAwareFile(inner.name, inner)


def was_unwritten(dataset_path: Path) -> bool:
    """Whether the dataset at ``dataset_path`` did not fit (asked once per instance)."""
    with _lock:
        if str(dataset_path) in _unwritten:
            _unwritten.discard(str(dataset_path))
            return True
    return False
