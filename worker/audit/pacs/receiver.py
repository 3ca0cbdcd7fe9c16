"""Our storage SCP: the instances of the study being retrieved, filed as they arrive.

Under C-MOVE the PACS opens its own association to us, so :func:`receiving` runs a storage
SCP on ``move_host:move_port`` for as long as a retrieval lasts; under C-GET the instances come
back on our association, which proposes :func:`get_storage_contexts` and takes the SCP role for
them. Either way :func:`handle_store` hands each C-STORE to the :class:`Receiver`, which files
it as ``<folder>/<SOPInstanceUID>.dcm`` (as sent, in its own transfer syntax) and refuses any
instance that is not part of the study it expects.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom import (
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    StoragePresentationContexts,
    build_context,
    evt,
)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from models.files import write_atomically
from worker.audit.pacs.association import new_ae
from worker.audit.pacs.peers import RetrieveOptions
from worker.errors import InputError
from worker.stages.assemble.index import SOP_CATEGORIES

logger = logging.getLogger(__name__)

#: A UID as DICOM defines it (PS3.5 9.1): digits and dots, at most 64 characters. Checked
#: before a UID from the PACS becomes a folder or file name.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")

#: The SOP classes a case is made of (assembly's list); under C-GET they accept any transfer syntax.
_RT_STORAGE = frozenset(SOP_CATEGORIES)

#: C-STORE statuses of our storage SCP (PS3.4 B.2.3 and PS3.7 C).
_STORE_SUCCESS = 0x0000
_STORE_NOT_EXPECTED = 0x0124  # Refused: not authorised (not part of the study being retrieved)
_STORE_OUT_OF_RESOURCES = 0xA700
_STORE_CANNOT_UNDERSTAND = 0xC000


def is_uid(value: str) -> bool:
    """Whether ``value`` is a valid UID, and so safe as a folder or file name."""
    return bool(_UID.fullmatch(value)) and len(value) <= 64


class Receiver:
    """Files the instances of the study being retrieved (and refuses any other).

    Thread-safe: under C-MOVE the stores arrive on pynetdicom's server threads while the
    C-MOVE response is awaited on ours.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._study: str | None = None
        self._folder: Path | None = None
        self._received: set[str] = set()

    @contextmanager
    def expecting(self, study_uid: str, folder: Path) -> Iterator[set[str]]:
        """Accept the study's instances into ``folder`` for the duration; yields the SOP
        Instance UIDs received (complete once the block has ended)."""
        with self._lock:
            self._study, self._folder, self._received = study_uid, folder, set()
        try:
            yield self._received
        finally:
            with self._lock:
                self._study = self._folder = None

    def store(self, event: Event) -> int:
        """File one C-STORE request; the C-STORE status."""
        sop_uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID or "")
        if not is_uid(sop_uid):
            return _STORE_CANNOT_UNDERSTAND
        dataset = event.dataset
        with self._lock:
            if self._folder is None or str(dataset.get("StudyInstanceUID", "")) != self._study:
                logger.warning("refused an instance that is not part of the study being retrieved")
                return _STORE_NOT_EXPECTED
            dataset.file_meta = event.file_meta
            buffer = _encode(dataset)
            try:
                # Written under a hidden temporary name, then renamed: folder readers skip dot
                # files, and a crash leaves no half file under the real name.
                write_atomically(self._folder / f"{sop_uid}.dcm", buffer)
            except OSError as exc:
                logger.warning("cannot write a received instance: %s", exc.strerror or type(exc).__name__)
                return _STORE_OUT_OF_RESOURCES
            self._received.add(sop_uid)
        return _STORE_SUCCESS


def handle_store(event: Event, receiver: Receiver) -> int:
    """EVT_C_STORE: file the instance with ``receiver``; never raises (a status instead)."""
    try:
        return receiver.store(event)
    except Exception as exc:  # a handler must answer: anything unexpected is a refusal, logged by type
        logger.warning("cannot decode a received instance (%s)", type(exc).__name__)
        return _STORE_CANNOT_UNDERSTAND


def _encode(dataset: Dataset) -> bytes:
    """The dataset as received, in the DICOM file format and its own transfer syntax."""
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@contextmanager
def receiving(options: RetrieveOptions) -> Iterator[Receiver]:
    """A receiver; under C-MOVE also our storage SCP on ``move_host:move_port`` while it lasts.

    Raises
    ------
    InputError
        If the port cannot be listened on (in use, or an address not of this machine).
    """
    receiver = Receiver()
    if options.method == "get":
        yield receiver
        return
    ae = new_ae(options)
    for context in AllStoragePresentationContexts:
        # Any transfer syntax: the files are kept as sent, never decoded here.
        ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    ae.require_called_aet = True  # the PACS calls the move destination by our AE title
    address = (options.move_host, options.move_port)
    try:
        server = cast(
            ThreadedAssociationServer,
            ae.start_server(address, block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store, [receiver])]),
        )
    except OSError as exc:
        raise InputError(
            f"cannot listen for C-MOVE on {options.move_host}:{options.move_port}: {exc.strerror or exc}"
            " (is another storage SCP using the port? choose another move_port and register it in the PACS)"
        ) from exc
    try:
        yield receiver
    finally:
        server.shutdown()


def get_storage_contexts() -> list[PresentationContext]:
    """Storage contexts for C-GET: the 120 common SOP classes (with the RT ones we need), any
    transfer syntax for CT/MR/RT/REG/SEG so the PACS need not transcode.

    A requestor may propose 128 contexts at most (odd IDs 1-255), one of which is the C-GET
    model's, so ``AllStoragePresentationContexts`` (170) would not fit.
    """
    contexts = []
    for context in StoragePresentationContexts:
        sop_class = str(context.abstract_syntax)
        syntaxes = ALL_TRANSFER_SYNTAXES if sop_class in _RT_STORAGE else None
        contexts.append(build_context(sop_class, syntaxes))
    return contexts
