"""C-FIND: which patients match a query, and which studies a patient has.

Both are STUDY-level queries in the Study Root information model. Only the exact PatientIDs
asked for count, and the studies come back oldest first with their instance counts, which
:mod:`~worker.audit.pacs.retrieval` checks a retrieval (and a reuse) against.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]
from pynetdicom.status import QR_FIND_SERVICE_CLASS_STATUS

from worker.audit.pacs.association import open_association, quiet_pynetdicom, status_code, status_text
from worker.audit.pacs.peers import PacsPeer, PacsQuery, RetrieveOptions, StudyHit
from worker.errors import InputError

_PENDING = (0xFF00, 0xFF01)


def find_patients(peer: PacsPeer, query: PacsQuery, options: RetrieveOptions) -> list[str]:
    """The distinct PatientIDs (sorted) with a study matching ``query``.

    One STUDY-level C-FIND per patient ID (or one in all, for a date range alone), on one
    association. Unknown patient IDs find nothing; the caller says so.

    Raises
    ------
    InputError
        If the PACS cannot be reached, refuses the association or fails the query.
    """
    quiet_pynetdicom()
    keys = query.patient_ids or ("",)
    found: set[str] = set()
    contexts = [build_context(StudyRootQueryRetrieveInformationModelFind)]
    with open_association(peer, options, contexts) as assoc:
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
    quiet_pynetdicom()
    contexts = [build_context(StudyRootQueryRetrieveInformationModelFind)]
    with open_association(peer, options, contexts) as assoc:
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
        code = status_code(status)
        if code in _PENDING:
            if identifier is not None:
                matches.append(identifier)
        elif code is None:
            raise InputError(
                "the PACS ended the association instead of answering the query (aborted or timed out): "
                f"does it allow C-FIND from {assoc.requestor.ae_title}?"
            )
        elif code != 0x0000:
            raise InputError(f"the PACS refused the query: {status_text(code, QR_FIND_SERVICE_CLASS_STATUS)}")
    return matches
