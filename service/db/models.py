"""The tables. One row per job; the job folder holds the files, the row what the API lists.

The schema is created with ``create_all`` at start-up; there is no migration tool yet, so a
change to these columns needs a migration (Alembic) before it ships to a site with records.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Dialect, Integer, String, TypeDecorator
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
