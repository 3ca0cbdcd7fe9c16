"""The same records on a real PostgreSQL (the project's machines run one; ``.ci/run`` starts one).

Set ``RTINJURY_TEST_POSTGRES_URL`` to a server URL whose user may create databases; by default
the local server's socket is used as ``postgres``. No server is a failure, never a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, select, text

from service.db import AuditEvent, Database, JobRecord
from tests.service.db.test_records import job_record

SERVER_URL = os.environ.get(
    "RTINJURY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@/postgres?host=/var/run/postgresql"
)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the server, dropped afterwards."""
    admin = create_engine(SERVER_URL, isolation_level="AUTOCOMMIT")
    name = f"rtinjury_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:
        admin.dispose()
        pytest.fail(
            f"no PostgreSQL server to test with ({type(error).__name__}); .ci/run starts one, "
            "or set RTINJURY_TEST_POSTGRES_URL",
            pytrace=False,
        )
    try:
        yield make_url(SERVER_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_records_survive_a_restart_on_postgresql(postgres_url: str) -> None:
    first = Database(postgres_url)
    assert first.problem() is None
    with first.session() as session:
        session.add(job_record("d" * 32))
        session.commit()
    first.dispose()

    reopened = Database(postgres_url)
    with reopened.session() as session:
        record = session.get(JobRecord, "d" * 32)
        assert record is not None and record.spec == {"task": "orn", "tau": 0.8}
        assert record.created_at.tzinfo is not None
    reopened.dispose()


def test_the_audit_trail_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    settings = Settings(storage_root=tmp_path, database_url=postgres_url, api_key="pg-audit-key-0123456789")
    auth = {"Authorization": "Bearer pg-audit-key-0123456789"}
    with TestClient(create_app(settings)) as client:
        assert client.get(f"/v1/jobs/{'e' * 32}", headers=auth).status_code == 404
        assert client.get("/v1/jobs", headers=auth).status_code == 200
        trail = client.get("/v1/audit-events", headers=auth).json()
    assert [(e["action"], e["job_id"], e["status"]) for e in trail["data"]] == [
        ("list", None, 200),
        ("read", "e" * 32, 404),
    ]
    assert trail["count"] == 2 and trail["data"][0]["at"] >= trail["data"][1]["at"]
    database = Database(postgres_url)
    with database.session() as session:
        [row] = session.scalars(select(AuditEvent).where(AuditEvent.action == "read"))
        assert row.at.tzinfo is not None
    database.dispose()
