"""Talking to the PACS: our AE, associations that explain a refusal, and DIMSE statuses.

Every association with the PACS is opened by :func:`open_association`, which raises
:class:`~worker.errors.InputError` saying *why* it could not be opened (nothing listening,
rejected, aborted, no answer). :func:`status_text` turns a final DIMSE status into words for
those messages, and :func:`quiet_pynetdicom` keeps identifiers out of pynetdicom's logs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import GENERAL_STATUS, StatusDictType

from worker.audit.pacs.peers import PacsPeer, RetrieveOptions
from worker.errors import InputError


def new_ae(options: RetrieveOptions) -> AE:
    """Our AE, titled ``options.calling_ae``, with every timeout set to ``options.timeout_s``."""
    ae = AE(ae_title=options.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = options.timeout_s
    ae.connection_timeout = options.timeout_s
    return ae


@contextmanager
def open_association(
    peer: PacsPeer, options: RetrieveOptions, contexts: list[PresentationContext], **kwargs: Any
) -> Iterator[Association]:
    """An established association with ``peer``, released on exit.

    ``kwargs`` go to :meth:`pynetdicom.AE.associate` (``ext_neg``, ``evt_handlers``...).

    Raises
    ------
    InputError
        If it cannot be opened: connection failed, rejected or aborted.
    """
    ae = new_ae(options)
    ae.requested_contexts = contexts
    # pynetdicom reports a failed TCP connect as an aborted association: only EVT_CONN_OPEN
    # tells "nothing listening" from "the PACS aborted".
    connected: list[bool] = []
    handlers = [*kwargs.pop("evt_handlers", []), (evt.EVT_CONN_OPEN, _note_connected, [connected])]
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, evt_handlers=handlers, **kwargs)
    if not assoc.is_established:
        raise InputError(_refusal(peer, options, assoc, bool(connected)))
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _note_connected(event: Event, connected: list[bool]) -> None:
    connected.append(True)


def _refusal(peer: PacsPeer, options: RetrieveOptions, assoc: Association, connected: bool) -> str:
    if not connected:
        return f"cannot connect to the PACS {peer}: nothing is listening there, or the host is unreachable"
    if assoc.is_rejected:
        return (
            f"the PACS {peer} rejected the association from {options.calling_ae} "
            "(does it know this AE title, and is its own AE title right?)"
        )
    if assoc.is_aborted:
        return f"the PACS {peer} aborted the association request from {options.calling_ae}"
    return f"the PACS {peer} did not answer the association request within {options.timeout_s:g} s"


def status_code(status: Dataset) -> int | None:
    """The Status of a DIMSE response, or None when there was no response (aborted, timed out)."""
    return int(status.Status) if "Status" in status else None


def status_text(code: int | None, table: StatusDictType) -> str:
    """``code`` in words, looked up in the service's ``table`` of statuses, then the general one."""
    if code is None:
        return "no answer from the PACS (the association was aborted or timed out)"
    description = (table.get(code) or GENERAL_STATUS.get(code) or ("", ""))[1]
    if not description and 0xC000 <= code <= 0xCFFF:
        description = "Unable to process"
    return f"status 0x{code:04X} ({description or 'unknown status'})"


def quiet_pynetdicom() -> None:
    """No DIMSE message, identifier or PDU content in the logs (they carry names and IDs).

    pynetdicom's standard handlers log those; without them its messages carry AE titles and
    addresses only. Levels stay the entry point's choice (the CLI keeps pynetdicom at WARNING).
    """
    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
