"""The PACS side of the batch audit: find patients with C-FIND, retrieve them whole into a folder.

A query (exact PatientIDs and/or a StudyDate range) is a STUDY-level C-FIND in the Study Root
information model; every patient it finds is retrieved *whole*, all studies, because the
planning CT, plan and dose are usually older than the follow-ups the date range picks. Each
study is one C-MOVE to our own AE title (a storage SCP this package runs for the duration of
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

Modules: :mod:`.peers` (inputs and results), :mod:`.association` (associations, statuses),
:mod:`.query` (C-FIND), :mod:`.receiver` (our storage SCP), :mod:`.retrieval` (C-MOVE / C-GET
of whole patients, reuse).
"""

from __future__ import annotations

from worker.audit.pacs.peers import PacsPeer, PacsQuery, Retrieval, RetrievedStudy, RetrieveOptions, StudyHit
from worker.audit.pacs.query import find_patients, find_studies
from worker.audit.pacs.receiver import handle_store
from worker.audit.pacs.retrieval import COMPLETE_MARKER, retrieve

__all__ = [
    "COMPLETE_MARKER",
    "PacsPeer",
    "PacsQuery",
    "Retrieval",
    "RetrieveOptions",
    "RetrievedStudy",
    "StudyHit",
    "find_patients",
    "find_studies",
    "handle_store",
    "retrieve",
]
