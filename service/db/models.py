"""The tables: jobs (the job folder holds the files, the row what the API lists), the audit trail
of the job routes, and the DICOM node's associations, received instances and per-patient studies.

The schema is created with ``create_all`` at start-up; there is no migration tool yet, so a
change to these columns needs a migration (Alembic) before it ships to a site with records.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Dialect, Integer, String, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite hands back naive ones otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class JobRecord(Base):
    """What the API knows about a job; ``status`` mirrors the job folder's ``status.json``."""

    __tablename__ = "jobs"

    #: uuid4 hex, also the job folder's name.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now, onupdate=utc_now)
    state: Mapped[str] = mapped_column(String(16), index=True)
    stage: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[int] = mapped_column(Integer, default=0)
    task: Mapped[str | None] = mapped_column(String(8))
    #: The case's alias (never a patient identifier).
    patient_alias: Mapped[str | None] = mapped_column(String(64))
    #: First 12 hex digits of the submitting key's SHA-256: whose job it is, without the key.
    owner: Mapped[str] = mapped_column(String(12), index=True)
    #: The request (``JobSpec``) as JSON.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: ``JobStatus`` as JSON: timings, warnings, error, refinements.
    status: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: ``SelectedCase.summary``: modality and instance counts, the alias; no identifiers.
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Deleted jobs keep their row (an audit trail of what ran) but lose their files.
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    #: The DICOM node's idempotency key (patient + follow-up series + input set); None for uploads.
    job_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    #: Who made the job: "api" (an upload) or "node" (a study pushed by a PACS).
    source: Mapped[str] = mapped_column(String(8), default="api")


class AuditEvent(Base):
    """One call of a job route, allowed or refused: who, what, which job, the answer's status.

    Nothing here comes from a patient: owner ids, action names, job ids (uuid4 hex), result
    names and request ids only.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now, index=True)
    #: Owner id of the calling key (first 12 hex digits of its hash).
    owner: Mapped[str] = mapped_column(String(12), index=True)
    #: submit, list, read, download, refine, deliver or delete.
    action: Mapped[str] = mapped_column(String(16))
    #: The job named in the path, or the job a submit made; None for a list, a refused submit
    #: and a path whose id is not a job id.
    job_id: Mapped[str | None] = mapped_column(String(32), index=True)
    #: The result name of a download.
    result: Mapped[str | None] = mapped_column(String(16))
    #: HTTP status of the answer.
    status: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[str] = mapped_column(String(64))


class NodeAssociation(Base):
    """One association a peer opened with the DICOM node, and how it ended."""

    __tablename__ = "node_associations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    peer_host: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: "open", "released" or "aborted" (an aborted association's instances are set aside).
    outcome: Mapped[str] = mapped_column(String(16), default="open", index=True)
    instances: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class NodeInstance(Base):
    """One stored instance; the file is under ``<storage root>/node/``, named by hashes."""

    __tablename__ = "node_instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: SHA-256 of the PatientID (hex): the patient, without the identifier.
    patient_key: Mapped[str] = mapped_column(String(64), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(64))
    series_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(16))
    #: Relative to the storage root.
    path: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(BigInteger)
    association_id: Mapped[str] = mapped_column(String(32), index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    #: "received" (its association still open), "accepted" (released) or "aside" (aborted).
    state: Mapped[str] = mapped_column(String(16), index=True)


class NodeStudy(Base):
    """What the node holds of one patient, and where its completion stands."""

    __tablename__ = "node_studies"

    patient_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_alias: Mapped[str] = mapped_column(String(16))
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    #: When an association that brought new instances was last released (the quiet period's start).
    last_released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Accepted instances that no assembly has looked at yet.
    pending: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    #: When the watcher last assembled the study (instances older than this have been used).
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: "receiving", "complete" (jobs made) or "incomplete" (``detail`` says what is missing).
    state: Mapped[str] = mapped_column(String(16), default="receiving")
    detail: Mapped[str | None] = mapped_column(String(500))
    #: The last assembly's series: uid, modality, description, instances, role.
    series: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    job_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    calling_aes: Mapped[list[str]] = mapped_column(JSON, default=list)
