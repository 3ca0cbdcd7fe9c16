"""Deliver stage: the job's DICOM results to a PACS or planning system (C-STORE SCU).

Each destination gets one association per attempt with a presentation context per SOP class of
the files, proposing the file's own transfer syntax first, then Explicit and Implicit VR Little
Endian (the usual PACS minimum). An attempt sends only what is not stored yet; attempts are
spaced by exponential back-off. Nothing here raises for a peer's failure: the result says what
was stored and why the rest was not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from worker.jobs.spec import Destination

logger = logging.getLogger(__name__)

#: Statuses that mean "stored": success, and the warnings of PS3.4 B.2.3 (coercion, elements
#: discarded, dataset does not match SOP class).
STORED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class SendOptions:
    calling_ae: str = "RTINJURY"
    attempts: int = 3
    backoff_s: float = 2.0
    timeout_s: float = 30.0


@dataclass
class SendResult:
    sent: int = 0
    failed: int = 0
    attempts: int = 0
    error: str | None = None
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.error is None


def send_files(
    files: Sequence[Path],
    destination: Destination,
    options: SendOptions | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> SendResult:
    """C-STORE every file to ``destination``, retrying what was not stored."""
    options = options or SendOptions()
    contexts = _contexts(files)
    remaining = list(files)
    result = SendResult()
    for attempt in range(1, options.attempts + 1):
        result.attempts = attempt
        remaining, result.error = _attempt(remaining, contexts, destination, options, result)
        if not remaining:
            result.error = None
            break
        if attempt < options.attempts:
            sleep(options.backoff_s * 2 ** (attempt - 1))
    result.sent = len(files) - len(remaining)
    result.failed = len(remaining)
    return result


def _contexts(files: Sequence[Path]) -> dict[str, list[str]]:
    """SOP class → transfer syntaxes to propose (the file's own first)."""
    contexts: dict[str, list[str]] = {}
    for path in files:
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        syntaxes = contexts.setdefault(str(meta.MediaStorageSOPClassUID), [])
        for syntax in (str(meta.TransferSyntaxUID), ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if syntax not in syntaxes:
                syntaxes.append(syntax)
    return contexts


def _attempt(
    files: list[Path],
    contexts: dict[str, list[str]],
    destination: Destination,
    options: SendOptions,
    result: SendResult,
) -> tuple[list[Path], str | None]:
    """One association: the files not stored by it, and why (None when all were)."""
    ae = AE(ae_title=options.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = options.timeout_s
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, syntaxes)
    association = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not association.is_established:
        reason = "was rejected" if association.is_rejected else "could not be opened"
        logger.warning("send to %s: association %s", destination.name, reason)
        return files, f"the association with {destination.ae_title} {reason}"
    not_stored: list[Path] = []
    try:
        for path in files:
            status = association.send_c_store(path)
            code = int(status.Status) if status and "Status" in status else -1
            result.statuses[path.name] = code
            if code not in STORED_STATUSES:
                not_stored.append(path)
            if not association.is_established:  # the peer aborted: the rest waits for a retry
                not_stored += files[files.index(path) + 1 :]
                break
    finally:
        if association.is_established:
            association.release()
    if not not_stored:
        return [], None
    codes = sorted({f"0x{result.statuses.get(p.name, -1) & 0xFFFF:04X}" for p in not_stored})
    return (
        not_stored,
        f"{len(not_stored)} object(s) not stored by {destination.ae_title} (status {', '.join(codes)})",
    )
