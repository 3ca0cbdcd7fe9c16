"""Telling a full disk from other faults: the API answers it with 507, a job fails with
``storage-full`` (never retried: it does not pass by itself), the node with DIMSE 0xA700."""

from __future__ import annotations

import errno
import os

#: Errors of a file system that has no room left (full, or over the owner's quota).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: How libraries that raise no OSError say it: ITK quotes the system's message, SQLite its own.
_DISK_FULL_WORDS = (*(os.strerror(number) for number in sorted(DISK_FULL_ERRNOS)), "database or disk is full")


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or the error it was raised from) says the disk is full."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            return True
        if any(words in str(seen) for words in _DISK_FULL_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
