"""What a PACS retrieval is given and gives back: the peer, the query, the options, the results.

The inputs (:class:`PacsPeer`, :class:`PacsQuery`, :class:`RetrieveOptions`) check themselves
when built and raise :class:`~worker.errors.InputError` naming the wrong part, so nothing reaches
the network with an unusable configuration. The results (:class:`StudyHit`,
:class:`RetrievedStudy`, :class:`Retrieval`) are plain records.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from worker.errors import InputError

#: PatientID characters that C-FIND would take as wildcards or a value separator.
_NOT_EXACT = re.compile(r"[*?\\]")


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
    ``move_host:move_port``, where :func:`~worker.audit.pacs.retrieve` listens while it runs.

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
    """What :func:`~worker.audit.pacs.retrieve` did: complete studies, and (alias or
    ``alias/StudyUID``, reason) failures."""

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
