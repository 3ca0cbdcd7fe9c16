"""Job records: they survive a restart, keep aware UTC times, and SQLite runs in WAL mode."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from service.db import Database, JobRecord


def job_record(job_id: str) -> JobRecord:
    """A queued ORN job as the API records it."""
    return JobRecord(
        id=job_id,
        state="queued",
        stage=None,
        progress=0,
        task="orn",
        patient_alias="pt-0123456789",
        owner="abcdef012345",
        spec={"task": "orn", "tau": 0.8},
        status={
            "state": "queued",
            "timings_s": {},
            "warnings": ["1 file(s) that are not DICOM were ignored"],
        },
        summary={"followup_modality": "CT"},
    )


def test_records_survive_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'rtinjury.db'}"
    first = Database(url)
    with first.session() as session:
        session.add(job_record("a" * 32))
        session.commit()
    first.dispose()

    reopened = Database(url)
    with reopened.session() as session:
        record = session.get(JobRecord, "a" * 32)
        assert record is not None
        assert (record.state, record.task, record.owner, record.deleted) == (
            "queued",
            "orn",
            "abcdef012345",
            False,
        )
        assert record.spec == {"task": "orn", "tau": 0.8}
        assert record.status["warnings"] == ["1 file(s) that are not DICOM were ignored"]
        assert record.created_at.tzinfo is not None and record.created_at <= datetime.now(UTC)
        assert record.finished_at is None
    reopened.dispose()


def test_updates_keep_utc_and_move_updated_at(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'jobs.db'}")
    with database.session() as session:
        session.add(job_record("b" * 32))
        session.commit()
        record = session.get(JobRecord, "b" * 32)
        assert record is not None
        created = record.updated_at
        record.state, record.finished_at = "succeeded", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        session.commit()
    with database.session() as session:
        record = session.get(JobRecord, "b" * 32)
        assert record is not None and record.updated_at >= created
        assert record.finished_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_naive_datetimes_are_refused(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'jobs.db'}")
    with database.session() as session:
        record = job_record("c" * 32)
        record.finished_at = datetime(2026, 1, 1)  # no time zone: ambiguous
        session.add(record)
        with pytest.raises(Exception, match="naive"):
            session.commit()


def test_sqlite_runs_in_wal_mode_and_answers_the_readiness_probe(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'jobs.db'}")
    assert database.problem() is None
    with database.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 30_000


def test_an_unreachable_database_is_a_reason_not_a_crash() -> None:
    database = Database("postgresql+psycopg://rtinjury:secret@127.0.0.1:9/rtinjury")
    problem = database.problem()
    assert problem is not None and problem.startswith("database unreachable")
    assert "secret" not in problem
