"""Retrieval of whole patients into a folder, study by study, reusing what an earlier run completed.

:func:`retrieve` finds the patients (:mod:`~worker.audit.pacs.query`), lists each one's studies
and fetches every study with one C-MOVE or C-GET into the
:class:`~worker.audit.pacs.receiver.Receiver`. A study is accepted only on a success status with
every instance here, then marked :data:`COMPLETE_MARKER`; a failed patient or study is recorded
and the others go on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import build_context, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import QR_GET_SERVICE_CLASS_STATUS, QR_MOVE_SERVICE_CLASS_STATUS

from models.files import write_atomically
from worker.audit.pacs.association import open_association, quiet_pynetdicom, status_code, status_text
from worker.audit.pacs.peers import PacsPeer, PacsQuery, Retrieval, RetrievedStudy, RetrieveOptions, StudyHit
from worker.audit.pacs.query import find_patients, find_studies
from worker.audit.pacs.receiver import Receiver, get_storage_contexts, handle_store, is_uid, receiving
from worker.errors import InputError
from worker.stages.assemble.case import patient_alias

logger = logging.getLogger(__name__)

#: Name of the marker of a study retrieved whole.
COMPLETE_MARKER = ".complete"


def retrieve(
    peer: PacsPeer,
    query: PacsQuery,
    dest: Path,
    options: RetrieveOptions,
    progress: Callable[[str], None] | None = None,
) -> Retrieval:
    """Retrieve every patient matching ``query``, whole, into ``dest`` (see :mod:`worker.audit.pacs`).

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
    quiet_pynetdicom()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the retrieval folder {dest}: {exc.strerror or exc}") from exc
    result = Retrieval(studies=[], failures=[])
    with receiving(options) as receiver:
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
    receiver: Receiver,
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
    peer: PacsPeer, hit: StudyHit, patient_folder: Path, receiver: Receiver, options: RetrieveOptions
) -> RetrievedStudy:
    """One study, complete in its folder: reused when its marker still holds, else retrieved.

    Raises
    ------
    InputError
        If the study cannot be retrieved whole (the message says why).
    OSError
        If its folder or marker cannot be written.
    """
    if not is_uid(hit.study_uid):
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
    write_atomically(
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
    # The temporary names of models.files.atomic_write: ".<name>.<random>.tmp".
    for leftover in folder.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def _send_retrieve(peer: PacsPeer, study_uid: str, receiver: Receiver, options: RetrieveOptions) -> Dataset:
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
        with open_association(peer, options, [build_context(model)]) as assoc:
            return _final(assoc.send_c_move(keys, options.calling_ae, model))
    model = StudyRootQueryRetrieveInformationModelGet
    storage = get_storage_contexts()
    with open_association(
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
    code = status_code(status)
    table = QR_MOVE_SERVICE_CLASS_STATUS if options.method == "move" else QR_GET_SERVICE_CLASS_STATUS
    # Nothing arriving under C-MOVE is nearly always the PACS's entry for our AE title.
    hint = ""
    if options.method == "move" and received == 0:
        hint = (
            f"; does the PACS map {options.calling_ae} to {options.move_host}:{options.move_port}"
            " (and can it reach it)?"
        )
    if code != 0x0000:
        raise InputError(f"{operation} failed: {status_text(code, table)}{_suboperations(status)}{hint}")
    completed = status.get("NumberOfCompletedSuboperations")
    expected = hit.instances if hit.instances is not None else completed
    if received == 0 or (expected is not None and received < int(expected)):
        raise InputError(f"{operation} reported success but {received} of {expected} instances arrived{hint}")


def _suboperations(status: Dataset) -> str:
    names = ("Completed", "Failed", "Warning", "Remaining")
    counts = [(name.lower(), status.get(f"NumberOf{name}Suboperations")) for name in names]
    shown = [f"{value} {name}" for name, value in counts if value is not None]
    return f" (sub-operations: {', '.join(shown)})" if shown else ""


def _say(progress: Callable[[str], None] | None, message: str) -> None:
    logger.info("%s", message)
    if progress is not None:
        progress(message)
