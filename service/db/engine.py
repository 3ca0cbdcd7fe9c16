"""The engine and sessions of the job database, made from a URL (no import-time singleton)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Base

log = logging.getLogger(__name__)

#: How long a SQLite writer waits for another one before failing (ms).
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Connections kept open between requests, and how many more may be opened. A request holds a
#: connection only while its route runs (``SessionDep``: the session ends with the route), so the
#: API needs at most one per thread of FastAPI's pool (anyio: 40); the cap stays above that, so no
#: request thread ever waits for a connection (with a capped pool below it, threads waiting for
#: connections starved those holding them: benchmarks/load.py, 50 clients, 30 s stalls, then 500s),
#: while a PostgreSQL server sees a bounded number per API process.
POOL_SIZE = 5
MAX_OVERFLOW = 45


def create_db_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL and a busy timeout for concurrent processes."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # Connections to a server go stale (restarts, idle timeouts): test them on checkout.
        return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW)
    engine = create_engine(
        url,
        # The API hands a session to FastAPI's thread pool; SQLAlchemy's pool keeps one
        # connection to one thread at a time, so sqlite3's own thread check only gets in the way.
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        # An in-memory database lives in one connection (SQLAlchemy's own pool for it, unsized).
        **({} if _in_memory(parsed.database) else {"pool_size": POOL_SIZE, "max_overflow": MAX_OVERFLOW}),
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _in_memory(database: str | None) -> bool:
    return not database or database == ":memory:" or database.startswith("file::memory:")


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    try:
        # WAL lets readers (API processes, the worker's status refresh) run beside one writer.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


class Database:
    """One job database: its engine, its sessions, and its schema created on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_db_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._schema_ready = False
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Create the SQLite file's folder and the tables, once (``create_all``; no migrations yet)."""
        if self._schema_ready:
            return
        with self._lock:
            if self._schema_ready:
                return
            database = make_url(self.url).database
            if self.engine.dialect.name == "sqlite" and database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            Base.metadata.create_all(self.engine)
            self._schema_ready = True

    def session(self) -> Session:
        """A new session; the caller closes it (``with database.session() as session``)."""
        self.prepare()
        return self._sessions()

    def problem(self) -> str | None:
        """None when the database answers ``SELECT 1``; else why not (no URL, no password)."""
        try:
            self.prepare()
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as error:
            log.warning("database check failed: %s", type(error).__name__)
            return f"database unreachable ({type(error).__name__})"
        return None

    def dispose(self) -> None:
        self.engine.dispose()
