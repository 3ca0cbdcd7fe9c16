"""Keeping patient data out of the logs: a filter on every handler our processes configure.

Code must not log identifying data in the first place (job ids, patient aliases and hashed file
names are what our messages carry); this filter is the safety net for what slips through: a
library's message, an exception text that quotes a header, a warning. It rewrites the formatted
message, the exception text and the stack text of each record:

1. identifying values our DICOM readers met in this process (``register_identifiers``) become
   ``[redacted]``;
2. person names in DICOM form (``Family^Given``) become ``[redacted]``;
3. DICOM UIDs become ``uid:<first 8 hex digits of their SHA-256>``: stable across processes and
   machines, so the lines of one study can still be followed through the API, node and workers.

Entry points install it (``install_phi_filter`` after their logging set-up, or
``PHI_FILTER_CONFIG`` in a ``dictConfig``); libraries never configure logging. ``models`` does
not import this module (layout: models ← worker ← service).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

REDACTED = "[redacted]"
#: Header attributes that identify a patient, a visit or the people and places around them
#: (the PS3.15 basic profile's person, place, date and id attributes our readers may meet).
IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientBirthDate",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "MedicalRecordLocator",
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord",
    "OperatorsName",
    "StationName",
)
#: Shorter values ("1", "CT", "M") would redact half of every log line; they cannot be scrubbed
#: safely, which is why the code must not log identifiers at all.
MIN_IDENTIFIER_LENGTH = 4
#: Values remembered per process, the least recently met forgotten first: about 50 patients, the
#: ones a process is working on (a node sees many). More would make the pattern's recompilation,
#: once per new patient, slower (~15 ms at 512 values, ~50 ms at 2048).
MAX_IDENTIFIERS = 512

#: Libraries that log UIDs, datasets or PDUs below WARNING (highdicom: every attribute it copies;
#: pynetdicom: DIMSE messages and, at DEBUG, whole PDUs): the filter drops those records. Done
#: at the handler rather than by logger levels: a process that calls our entry point (a test)
#: keeps its own levels.
IDENTIFYING_LIBRARIES = ("highdicom", "pynetdicom")
_LIBRARY_PREFIXES = tuple(f"{name}." for name in IDENTIFYING_LIBRARIES)
#: ``Family^Given[^Middle^Prefix^Suffix]``: the caret is what makes it a DICOM person name.
_PERSON_NAME = re.compile(r"(?<![\w^])[^\W\d_][\w'.-]*\^[\w'.^-]*")
#: A UID: a root arc 0-2 and at least two more numeric components, not inside a longer token.
_UID = re.compile(r"(?<![\w.])[0-2](?:\.\d+){2,}(?!\w|\.\d)")
#: Three components are a UID only when long (``2.25.<uuid>``); shorter ones are versions.
_MIN_SHORT_UID_LENGTH = 16
_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")


class _Identifiers:
    """The identifying values met in this process, and one regular expression matching them."""

    def __init__(self) -> None:
        self._values: dict[str, None] = {}  # an ordered set: the least recently met go first
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None
        self._stale = False

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            for value in values:
                if value in self._values:
                    del self._values[value]  # met again: the newest now, the pattern unchanged
                else:
                    self._stale = True
                self._values[value] = None
            while len(self._values) > MAX_IDENTIFIERS:
                del self._values[next(iter(self._values))]

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._pattern, self._stale = None, False

    def pattern(self) -> re.Pattern[str] | None:
        if not self._stale:
            return self._pattern
        with self._lock:
            if self._stale:
                # Longest first, so "Qzxv^Wyrtle" is redacted whole before "Qzxv" is tried; letters
                # or digits on either side mean the value is part of a longer word (a hash, an id).
                alternatives = "|".join(map(re.escape, sorted(self._values, key=len, reverse=True)))
                self._pattern = (
                    re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", re.IGNORECASE)
                    if alternatives
                    else None
                )
                self._stale = False
            return self._pattern


_IDENTIFIERS = _Identifiers()


def register_identifiers(dataset: Dataset) -> None:
    """Remember the identifying values of ``dataset`` so that no log line of this process shows them.

    Called by the code that reads DICOM headers; cheap (a few attribute look-ups per file).
    """
    spellings: list[str] = []
    for keyword in IDENTIFYING_KEYWORDS:
        try:
            value = dataset.get(keyword)
        except Exception:  # a value pydicom cannot convert (strict mode): the reader's business
            continue
        # A multi-valued attribute (pydicom's MultiValue) is a sequence; a PersonName is not.
        items = list(value) if isinstance(value, Sequence) and not isinstance(value, str | bytes) else [value]
        for item in items:
            if item is not None:
                spellings += _spellings(str(item))
    register_values(spellings)


def register_values(values: Iterable[str]) -> None:
    """Remember identifying values (a PatientID read without pydicom's Dataset, say)."""
    kept = (v.strip() for v in values)
    _IDENTIFIERS.add(v for v in kept if len(v) >= MIN_IDENTIFIER_LENGTH)


def forget_identifiers() -> None:
    """Forget every registered value (tests)."""
    _IDENTIFIERS.clear()


def _spellings(value: str) -> list[str]:
    """How ``value`` may appear in a message: as stored, the parts of a person name, a date in ISO."""
    spellings = [value]
    if "^" in value or "=" in value:
        spellings += [part for part in re.split(r"[\^=]", value) if part]
        spellings.append(" ".join(part for part in re.split(r"[\^=]", value) if part))
    date = _DATE.match(value)
    if date:
        spellings.append("-".join(date.groups()))
    return spellings


def scrub(text: str) -> str:
    """``text`` without registered identifiers and person names, and with UIDs hashed."""
    pattern = _IDENTIFIERS.pattern()
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    if "^" in text:
        text = _PERSON_NAME.sub(REDACTED, text)
    return _UID.sub(_hashed_uid, text)


def _hashed_uid(match: re.Match[str]) -> str:
    uid = match.group(0)
    parts = uid.split(".")
    if len(parts) == 3 and len(uid) < _MIN_SHORT_UID_LENGTH:
        return uid  # a version number such as 2.13.0
    if len(parts) == 4 and all(len(p) <= 3 and int(p) <= 255 for p in parts):
        return uid  # an IPv4 address such as 127.0.0.1
    return uid_token(uid)


@lru_cache(maxsize=4096)
def uid_token(uid: str) -> str:
    """The stable short stand-in of a UID in the logs: ``uid:`` and 8 hex digits of its SHA-256."""
    return "uid:" + hashlib.sha256(uid.encode("ascii")).hexdigest()[:8]


class PhiFilter(logging.Filter):
    """Rewrites a record's message, exception and stack text with :func:`scrub`; drops only the
    records of the ``IDENTIFYING_LIBRARIES`` below WARNING.

    The record is changed in place (every handler sees the scrubbed text); its ``args`` are
    emptied only when the message changed, so formatters that read them still work otherwise.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and _from_identifying_library(record.name):
            return False
        if getattr(record, _SCRUBBED, False):  # another handler's filter did it already
            return True
        setattr(record, _SCRUBBED, True)
        try:
            message = record.getMessage()
        except Exception:
            # logging would print the bad arguments to stderr: replace them with where they were.
            record.msg, record.args = f"unformattable log message at {record.module}:{record.lineno}", ()
        else:
            clean = scrub(message)
            if clean != message:
                record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            # Formatted here, once: formatters reuse exc_text instead of formatting the traceback.
            record.exc_text = _EXCEPTION_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


#: The attribute that marks a record as scrubbed (the filter sits on every handler it reaches).
_SCRUBBED = "_rtinjury_phi_scrubbed"


def _from_identifying_library(name: str) -> bool:
    return name in IDENTIFYING_LIBRARIES or name.startswith(_LIBRARY_PREFIXES)


_EXCEPTION_FORMATTER = logging.Formatter()
_FILTER = PhiFilter()
#: The filter for ``logging.config.dictConfig``: ``"filters": {"phi": PHI_FILTER_CONFIG}``.
PHI_FILTER_CONFIG: dict[str, Any] = {"()": "worker.logs.PhiFilter"}


def install_phi_filter(*loggers: logging.Logger) -> None:
    """Put the filter on every handler of the root logger, of ``loggers``, and of any other logger
    that has handlers of its own; route ``warnings`` through logging so they are scrubbed too.

    Call it after the process has set its logging up; calling it again adds nothing twice.
    """
    logging.captureWarnings(True)
    candidates = [logging.getLogger(), *loggers]
    candidates += [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    for logger in candidates:
        for handler in logger.handlers:
            if not any(isinstance(f, PhiFilter) for f in handler.filters):
                handler.addFilter(_FILTER)
