"""The PACS side of the batch audit: find patients with C-FIND, retrieve them whole into a folder.

A query (exact PatientIDs and/or a StudyDate range) is a STUDY-level C-FIND in the Study Root
information model; every patient it finds is retrieved *whole*, all studies, because the
planning CT, plan and dose are usually older than the follow-ups the date range picks. Each
study is one C-MOVE to our own AE title (a storage SCP this module runs for the duration of
:func:`retrieve`) or one C-GET (the instances come back on the same association).

Layout: ``dest/<patient_alias>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``, each file written
under a hidden temporary name and renamed, so a folder never holds half a file; a study that
arrived whole gets a ``.complete`` marker (JSON: instance count and study date). A re-run reuses
a marked study whose count still matches the PACS and fetches the others again (same file
names, so a partial study is completed, not duplicated). Folder readers skip dot files, so
neither the marker nor a temporary file is taken for DICOM.

Errors: a problem with the configuration (bad peer or options, PACS unreachable, the C-MOVE
port in use, a refused query) raises :class:`~worker.errors.InputError` before anything is
retrieved; a patient or study that fails later is recorded in :attr:`Retrieval.failures` and the
others go on. PatientIDs never reach a path, a log line or a message: patients are named by
:func:`~worker.stages.assemble.case.patient_alias`.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Literal, cast

from pydicom.dataset import Dataset
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    StoragePresentationContexts,
    _config,
    build_context,
    build_role,
    evt,
)
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    DeformableSpatialRegistrationStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    MRImageStorage,
    RTDoseStorage,
    RTIonPlanStorage,
    RTPlanStorage,
    RTStructureSetStorage,
    SegmentationStorage,
    SpatialRegistrationStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import (
    GENERAL_STATUS,
    QR_FIND_SERVICE_CLASS_STATUS,
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
    StatusDictType,
)
from pynetdicom.transport import ThreadedAssociationServer

from worker.errors import InputError
from worker.stages.assemble.case import patient_alias

logger = logging.getLogger(__name__)

#: Name of the marker of a study retrieved whole.
COMPLETE_MARKER = ".complete"

#: A UID as DICOM defines it (PS3.5 9.1): digits and dots, at most 64 characters. Checked
#: before a UID from the PACS becomes a folder or file name.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
#: PatientID characters that C-FIND would take as wildcards or a value separator.
_NOT_EXACT = re.compile(r"[*?\\]")

#: Storage SOP classes an audit needs; under C-GET they accept any transfer syntax.
_RT_STORAGE = frozenset(
    {
        CTImageStorage,
        EnhancedCTImageStorage,
        MRImageStorage,
        EnhancedMRImageStorage,
        RTDoseStorage,
        RTPlanStorage,
        RTIonPlanStorage,
        RTStructureSetStorage,
        SpatialRegistrationStorage,
        DeformableSpatialRegistrationStorage,
        SegmentationStorage,
    }
)

_PENDING = (0xFF00, 0xFF01)
#: C-STORE statuses of our storage SCP (PS3.4 B.2.3 and PS3.7 C).
_STORE_SUCCESS = 0x0000
_STORE_NOT_EXPECTED = 0x0124  # Refused: not authorised (not part of the study being retrieved)
_STORE_OUT_OF_RESOURCES = 0xA700
_STORE_CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class PacsPeer:
    """The PACS we query and retrieve from (its C-FIND / C-MOVE / C-GET SCP).

    Raises
    ------
    InputError
        If the AE title, host or port is not usable.
    """

    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        _check_ae_title(self.ae_title, "the PACS AE title")
        if not self.host.strip():
            raise InputError("the PACS host is empty")
        _check_port(self.port, "the PACS port")

    @classmethod
    def parse(cls, text: str) -> PacsPeer:
        """``"AET@host:port"`` (an IPv6 host in brackets: ``"AET@[::1]:104"``).

        Raises
        ------
        InputError
            If a part is missing or wrong; the message names the part.
        """
        aet, at, address = text.strip().rpartition("@")
        if not at:
            raise InputError(f"PACS {text!r}: expected AET@host:port (no '@' after the AE title)")
        host, colon, port = address.rpartition(":")
        if not colon:
            raise InputError(f"PACS {text!r}: expected AET@host:port (no ':port' after the host)")
        if not port.isdigit():
            raise InputError(f"PACS {text!r}: the port {port!r} is not a number")
        return cls(ae_title=aet, host=host.removeprefix("[").removesuffix("]"), port=int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class PacsQuery:
    """Which patients to audit: exact PatientIDs, patients with a study in a date range, or both.

    Raises
    ------
    InputError
        If neither patient IDs nor a date bound is given, a patient ID is empty or has C-FIND
        wildcards, or the range ends before it starts.
    """

    patient_ids: tuple[str, ...] = ()
    date_from: datetime.date | None = None
    date_to: datetime.date | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "patient_ids", tuple(self.patient_ids))
        if not self.patient_ids and self.date_from is None and self.date_to is None:
            raise InputError("a PACS query needs patient IDs, a study date range, or both")
        for number, patient_id in enumerate(self.patient_ids, 1):
            # Never echo the ID itself: messages carry no patient identifiers.
            if not patient_id.strip() or len(patient_id) > 64 or _NOT_EXACT.search(patient_id):
                raise InputError(
                    f"patient ID #{number} of the query is empty, longer than 64 characters or has "
                    "a wildcard (*, ?) or backslash: give exact PatientIDs"
                )
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise InputError(
                f"the study date range ends ({self.date_to}) before it starts ({self.date_from})"
            )

    @property
    def study_date(self) -> str:
        """The C-FIND StudyDate key: ``YYYYMMDD-YYYYMMDD``, ``YYYYMMDD-``, ``-YYYYMMDD`` or empty."""
        if self.date_from is None and self.date_to is None:
            return ""
        start = self.date_from.strftime("%Y%m%d") if self.date_from else ""
        end = self.date_to.strftime("%Y%m%d") if self.date_to else ""
        return f"{start}-{end}"


@dataclass(frozen=True)
class RetrieveOptions:
    """How we talk to the PACS.

    ``calling_ae`` is also the C-MOVE destination: the PACS must map it to
    ``move_host:move_port``, where :func:`retrieve` listens while it runs.

    Raises
    ------
    InputError
        If the AE title, a port, the method or the timeout is not usable.
    """

    calling_ae: str = "RTINJURY_AUDIT"
    move_host: str = "127.0.0.1"
    move_port: int = 11113
    method: Literal["move", "get"] = "move"
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        _check_ae_title(self.calling_ae, "our AE title (calling_ae)")
        _check_port(self.move_port, "the C-MOVE port (move_port)")
        if self.method not in ("move", "get"):
            raise InputError(f"the retrieve method must be 'move' or 'get', not {self.method!r}")
        if not self.timeout_s > 0:
            raise InputError(f"the network timeout must be positive, not {self.timeout_s}")


@dataclass
class StudyHit:
    """One study found by C-FIND (``instances``: NumberOfStudyRelatedInstances, if reported)."""

    patient_id: str
    study_uid: str
    study_date: str
    instances: int | None


@dataclass
class RetrievedStudy:
    """A study that is complete in ``folder``; ``reused`` when an earlier run retrieved it."""

    patient_alias: str
    study_uid: str
    study_date: str
    instances: int
    folder: Path
    reused: bool


@dataclass
class Retrieval:
    """What :func:`retrieve` did: complete studies, and (alias or ``alias/StudyUID``, reason) failures."""

    studies: list[RetrievedStudy]
    failures: list[tuple[str, str]]


def _check_ae_title(value: str, what: str) -> None:
    # PS3.5 6.2: up to 16 characters of the default repertoire, no backslash or control character.
    usable = value.strip() and value.isascii() and value.isprintable() and "\\" not in value
    if not usable or len(value) > 16:
        raise InputError(f"{what} {value!r} must be 1-16 printable ASCII characters without a backslash")


def _check_port(value: int, what: str) -> None:
    if not 1 <= value <= 65535:
        raise InputError(f"{what} {value} is not a TCP port (1-65535)")


# -- C-FIND ----------------------------------------------------------------------------------


def find_patients(peer: PacsPeer, query: PacsQuery, options: RetrieveOptions) -> list[str]:
    """The distinct PatientIDs (sorted) with a study matching ``query``.

    One STUDY-level C-FIND per patient ID (or one in all, for a date range alone), on one
    association. Unknown patient IDs find nothing; the caller says so.

    Raises
    ------
    InputError
        If the PACS cannot be reached, refuses the association or fails the query.
    """
    _quiet_pynetdicom()
    keys = query.patient_ids or ("",)
    found: set[str] = set()
    with _association(peer, options, [build_context(StudyRootQueryRetrieveInformationModelFind)]) as assoc:
        for patient_id in keys:
            for match in _find(assoc, _study_keys(patient_id, query.study_date)):
                found.add(str(match.get("PatientID", "")))
    # Some PACS match IDs loosely (case, trailing spaces): only the exact IDs asked for count.
    wanted = set(query.patient_ids)
    return sorted(p for p in found if p and (not wanted or p in wanted))


def find_studies(peer: PacsPeer, patient_id: str, options: RetrieveOptions) -> list[StudyHit]:
    """Every study of one patient, oldest first.

    Raises
    ------
    InputError
        If the PACS cannot be reached, refuses the association or fails the query.
    """
    _quiet_pynetdicom()
    with _association(peer, options, [build_context(StudyRootQueryRetrieveInformationModelFind)]) as assoc:
        matches = _find(assoc, _study_keys(patient_id, ""))
    hits = {}
    for match in matches:
        if str(match.get("PatientID", "")) != patient_id:
            continue
        uid = str(match.get("StudyInstanceUID", ""))
        hits[uid] = StudyHit(patient_id, uid, str(match.get("StudyDate", "")), _instances(match))
    return sorted(hits.values(), key=lambda hit: (hit.study_date, hit.study_uid))


def _study_keys(patient_id: str, study_date: str) -> Dataset:
    """A STUDY-level identifier: matching keys with a value, return keys empty."""
    keys = Dataset()
    keys.QueryRetrieveLevel = "STUDY"
    keys.PatientID = patient_id
    keys.StudyDate = study_date
    keys.StudyInstanceUID = ""
    keys.NumberOfStudyRelatedInstances = ""
    return keys


def _instances(match: Dataset) -> int | None:
    value = match.get("NumberOfStudyRelatedInstances")
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):  # an IS the PACS got wrong is as good as none
        return None


def _find(assoc: Association, keys: Dataset) -> list[Dataset]:
    """The identifiers of a C-FIND's pending responses.

    Raises
    ------
    InputError
        For any final status but success, or no answer at all.
    """
    matches = []
    for status, identifier in assoc.send_c_find(keys, StudyRootQueryRetrieveInformationModelFind):
        code = _code(status)
        if code in _PENDING:
            if identifier is not None:
                matches.append(identifier)
        elif code is None:
            raise InputError(
                "the PACS ended the association instead of answering the query (aborted or timed out): "
                f"does it allow C-FIND from {assoc.requestor.ae_title}?"
            )
        elif code != 0x0000:
            status_text = _status_text(code, QR_FIND_SERVICE_CLASS_STATUS)
            raise InputError(f"the PACS refused the query: {status_text}")
    return matches


# -- retrieval -------------------------------------------------------------------------------


def retrieve(
    peer: PacsPeer,
    query: PacsQuery,
    dest: Path,
    options: RetrieveOptions,
    progress: Callable[[str], None] | None = None,
) -> Retrieval:
    """Retrieve every patient matching ``query``, whole, into ``dest`` (see the module docstring).

    Parameters
    ----------
    peer, query, options
        The PACS, which patients, and how.
    dest : pathlib.Path
        The folder of all patients (created if missing); studies already complete in it are reused.
    progress : callable, optional
        Called with one line per patient and study (aliases only, no identifiers).

    Returns
    -------
    Retrieval
        The complete studies and the failures; a failed patient or study never stops the others.

    Raises
    ------
    InputError
        Before anything is retrieved: ``dest`` cannot be created, the C-MOVE port is in use, or
        the PACS cannot be reached or refuses the query.
    """
    _quiet_pynetdicom()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the retrieval folder {dest}: {exc.strerror or exc}") from exc
    result = Retrieval(studies=[], failures=[])
    with _receiving(options) as receiver:
        patient_ids = find_patients(peer, query, options)
        _say(progress, f"{len(patient_ids)} patient(s) found on {peer.ae_title}")
        for number, patient_id in enumerate(patient_ids, 1):
            alias = patient_alias(patient_id)
            _say(progress, f"{alias}: patient {number}/{len(patient_ids)}")
            _retrieve_patient(peer, patient_id, dest / alias, receiver, options, result, progress)
    return result


def _retrieve_patient(
    peer: PacsPeer,
    patient_id: str,
    folder: Path,
    receiver: _Receiver,
    options: RetrieveOptions,
    result: Retrieval,
    progress: Callable[[str], None] | None,
) -> None:
    """Every study of one patient into ``folder``; failures go to ``result``, never raised."""
    alias = folder.name
    try:
        hits = find_studies(peer, patient_id, options)
    except InputError as exc:
        result.failures.append((alias, str(exc)))
        _say(progress, f"{alias}: studies not found: {exc}")
        return
    for number, hit in enumerate(hits, 1):
        where = f"{alias} study {number}/{len(hits)}"
        try:
            study = _retrieve_study(peer, hit, folder, receiver, options)
        except (InputError, OSError) as exc:
            reason = str(exc) if isinstance(exc, InputError) else f"cannot write the study: {exc}"
            result.failures.append((f"{alias}/{hit.study_uid}", reason))
            _say(progress, f"{where}: failed: {reason}")
            continue
        result.studies.append(study)
        _say(progress, f"{where}: {'reused' if study.reused else 'retrieved'} ({study.instances} instances)")


def _retrieve_study(
    peer: PacsPeer, hit: StudyHit, patient_folder: Path, receiver: _Receiver, options: RetrieveOptions
) -> RetrievedStudy:
    """One study, complete in its folder: reused when its marker still holds, else retrieved.

    Raises
    ------
    InputError
        If the study cannot be retrieved whole (the message says why).
    OSError
        If its folder or marker cannot be written.
    """
    if not _UID.fullmatch(hit.study_uid) or len(hit.study_uid) > 64:
        raise InputError("the PACS gave a StudyInstanceUID that is not a valid UID")
    folder = patient_folder / hit.study_uid
    alias = patient_folder.name
    reused = _reusable(folder, hit)
    if reused is not None:
        return RetrievedStudy(alias, hit.study_uid, hit.study_date, reused, folder, reused=True)
    _prepare_folder(folder)
    with receiver.expecting(hit.study_uid, folder) as received:
        status = _send_retrieve(peer, hit.study_uid, receiver, options)
    _check_complete(status, len(received), hit, options)
    _write_atomically(
        folder / COMPLETE_MARKER,
        json.dumps({"instances": len(received), "study_date": hit.study_date}).encode(),
    )
    return RetrievedStudy(alias, hit.study_uid, hit.study_date, len(received), folder, reused=False)


def _reusable(folder: Path, hit: StudyHit) -> int | None:
    """The instance count of a study an earlier run completed, or None when it must be fetched."""
    try:
        marker = json.loads((folder / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    count = marker.get("instances") if isinstance(marker, dict) else None
    if not isinstance(count, int) or (hit.instances is not None and count != hit.instances):
        return None
    # A folder someone thinned out since is fetched again rather than audited incomplete.
    return count if sum(1 for _ in folder.glob("*.dcm")) >= count else None


def _prepare_folder(folder: Path) -> None:
    """Make ``folder`` ready for a (re)retrieval: no marker until it is whole again, no
    temporary files an interrupted run left behind; instances already there are overwritten."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / COMPLETE_MARKER).unlink(missing_ok=True)
    for leftover in folder.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def _send_retrieve(peer: PacsPeer, study_uid: str, receiver: _Receiver, options: RetrieveOptions) -> Dataset:
    """C-MOVE or C-GET one study; the final response's status (empty if there was none).

    Raises
    ------
    InputError
        If the association cannot be opened.
    """
    keys = Dataset()
    keys.QueryRetrieveLevel = "STUDY"
    keys.StudyInstanceUID = study_uid
    if options.method == "move":
        model = StudyRootQueryRetrieveInformationModelMove
        with _association(peer, options, [build_context(model)]) as assoc:
            return _final(assoc.send_c_move(keys, options.calling_ae, model))
    model = StudyRootQueryRetrieveInformationModelGet
    storage = _get_storage_contexts()
    with _association(
        peer,
        options,
        [build_context(model), *storage],
        # C-GET sends the instances back on this association: we take the SCP role for storage.
        ext_neg=[build_role(str(cx.abstract_syntax), scp_role=True) for cx in storage],
        evt_handlers=[(evt.EVT_C_STORE, handle_store, [receiver])],
    ) as assoc:
        return _final(assoc.send_c_get(keys, model))


def _final(responses: Iterable[tuple[Dataset, Dataset | None]]) -> Dataset:
    """The last response's status: pending ones only count sub-operations."""
    final = Dataset()
    for status, _identifier in responses:
        final = status
    return final


def _check_complete(status: Dataset, received: int, hit: StudyHit, options: RetrieveOptions) -> None:
    """Accept a retrieval only on success with every instance here.

    Raises
    ------
    InputError
        Naming the status and sub-operation counts, or how many instances are missing.
    """
    operation = "C-MOVE" if options.method == "move" else "C-GET"
    code = _code(status)
    table = QR_MOVE_SERVICE_CLASS_STATUS if options.method == "move" else QR_GET_SERVICE_CLASS_STATUS
    # Nothing arriving under C-MOVE is nearly always the PACS's entry for our AE title.
    hint = ""
    if options.method == "move" and received == 0:
        hint = (
            f"; does the PACS map {options.calling_ae} to {options.move_host}:{options.move_port}"
            " (and can it reach it)?"
        )
    if code != 0x0000:
        raise InputError(f"{operation} failed: {_status_text(code, table)}{_suboperations(status)}{hint}")
    completed = status.get("NumberOfCompletedSuboperations")
    expected = hit.instances if hit.instances is not None else completed
    if received == 0 or (expected is not None and received < int(expected)):
        raise InputError(f"{operation} reported success but {received} of {expected} instances arrived{hint}")


def _suboperations(status: Dataset) -> str:
    names = ("Completed", "Failed", "Warning", "Remaining")
    counts = [(name.lower(), status.get(f"NumberOf{name}Suboperations")) for name in names]
    shown = [f"{value} {name}" for name, value in counts if value is not None]
    return f" (sub-operations: {', '.join(shown)})" if shown else ""


def _code(status: Dataset) -> int | None:
    return int(status.Status) if "Status" in status else None


def _status_text(code: int | None, table: StatusDictType) -> str:
    if code is None:
        return "no answer from the PACS (the association was aborted or timed out)"
    description = (table.get(code) or GENERAL_STATUS.get(code) or ("", ""))[1]
    if not description and 0xC000 <= code <= 0xCFFF:
        description = "Unable to process"
    return f"status 0x{code:04X} ({description or 'unknown status'})"


# -- receiving instances ---------------------------------------------------------------------


class _Receiver:
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
        if not _UID.fullmatch(sop_uid) or len(sop_uid) > 64:
            return _STORE_CANNOT_UNDERSTAND
        dataset = event.dataset
        with self._lock:
            if self._folder is None or str(dataset.get("StudyInstanceUID", "")) != self._study:
                logger.warning("refused an instance that is not part of the study being retrieved")
                return _STORE_NOT_EXPECTED
            dataset.file_meta = event.file_meta
            buffer = _encode(dataset)
            try:
                _write_atomically(self._folder / f"{sop_uid}.dcm", buffer)
            except OSError as exc:
                logger.warning("cannot write a received instance: %s", exc.strerror or type(exc).__name__)
                return _STORE_OUT_OF_RESOURCES
            self._received.add(sop_uid)
        return _STORE_SUCCESS


def handle_store(event: Event, receiver: _Receiver) -> int:
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


def _write_atomically(path: Path, data: bytes) -> None:
    # Hidden while incomplete: folder readers skip dot files, and a crash leaves no half file
    # under the real name.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def _receiving(options: RetrieveOptions) -> Iterator[_Receiver]:
    """A receiver; under C-MOVE also our storage SCP on ``move_host:move_port`` while it lasts.

    Raises
    ------
    InputError
        If the port cannot be listened on (in use, or an address not of this machine).
    """
    receiver = _Receiver()
    if options.method == "get":
        yield receiver
        return
    ae = _new_ae(options)
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


# -- associations ----------------------------------------------------------------------------


def _new_ae(options: RetrieveOptions) -> AE:
    ae = AE(ae_title=options.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = options.timeout_s
    ae.connection_timeout = options.timeout_s
    return ae


def _get_storage_contexts() -> list[PresentationContext]:
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


@contextmanager
def _association(
    peer: PacsPeer, options: RetrieveOptions, contexts: list[PresentationContext], **kwargs: Any
) -> Iterator[Association]:
    """An established association with ``peer``, released on exit.

    Raises
    ------
    InputError
        If it cannot be opened: connection failed, rejected or aborted.
    """
    ae = _new_ae(options)
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


def _quiet_pynetdicom() -> None:
    """No DIMSE message, identifier or PDU content in the logs (they carry names and IDs).

    pynetdicom's standard handlers log those; without them its messages carry AE titles and
    addresses only. Levels stay the entry point's choice (the CLI keeps pynetdicom at WARNING).
    """
    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


def _say(progress: Callable[[str], None] | None, message: str) -> None:
    logger.info("%s", message)
    if progress is not None:
        progress(message)
