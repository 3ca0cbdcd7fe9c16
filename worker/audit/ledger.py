"""What an audit has done, on disk, so that a re-run skips it: keys, records and the run log.

Layout under the audit folder::

    state/records/<key>.json   one per finished item (its table row), written atomically
    state/processed.jsonl      one line each time an item is processed (key, run, outcome)
    state/runs.jsonl           one line per run start and end
    state/file-digests.json    SHA-256 of input files by (path, size, mtime) — not hashed twice
    state/work/<key>/          a job folder while its item runs (removed afterwards)

An item's key is the SHA-256 of its input files' contents, the network's fingerprint and the
settings that change results: the same scans with the same model give the same key, and
changing a file, the weights or τ makes a new one. A record appears only once the item has
finished, so an interrupted run leaves every item either finished or not started.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.files import write_atomically
from worker.audit.discovery import AuditItem

AUDIT_FORMAT = "rtinjury.audit/1"


@dataclass(frozen=True)
class AuditPaths:
    """Where everything of one audit lives."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def records(self) -> Path:
        return self.state / "records"

    @property
    def work(self) -> Path:
        return self.state / "work"

    @property
    def followups(self) -> Path:
        """Each finished follow-up's outputs (SEG, RTSTRUCT, SR, report, preview)."""
        return self.root / "followups"

    @property
    def retrieved(self) -> Path:
        """Studies retrieved from a PACS."""
        return self.root / "retrieved"

    def create(self) -> AuditPaths:
        for folder in (self.records, self.work, self.followups):
            folder.mkdir(parents=True, exist_ok=True)
        return self


class FileDigests:
    """SHA-256 of files, remembered by (path, size, mtime) across runs of one audit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._known: dict[str, list[Any]] = {}
        try:
            self._known = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self._known = {}  # no cache yet, or a damaged one: hash again

    def digest(self, file: Path) -> str:
        stat = file.stat()
        name = str(file.resolve())
        known = self._known.get(name)
        if known and known[0] == stat.st_size and known[1] == stat.st_mtime_ns:
            return str(known[2])
        digest = _sha256(file)
        self._known[name] = [stat.st_size, stat.st_mtime_ns, digest]
        return digest

    def save(self) -> None:
        write_atomically(self.path, json.dumps(self._known, sort_keys=True).encode("utf-8"))


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def item_key(item: AuditItem, digests: FileDigests, settings_fingerprint: str) -> str:
    """The item's key (64 hex): its input contents, in an order independent of file names."""
    contents = sorted(digests.digest(path) for path in item.files)
    case_file = digests.digest(item.case_file) if item.case_file else ""
    material = "\n".join(
        [AUDIT_FORMAT, settings_fingerprint, item.followup_series_uid or "", case_file, *contents]
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


class Ledger:
    """Records of finished items and the log of what each run processed."""

    def __init__(self, paths: AuditPaths) -> None:
        self.paths = paths.create()

    def record(self, key: str) -> dict[str, Any] | None:
        """The finished item's record, or None when it has not finished."""
        try:
            document: dict[str, Any] = json.loads((self.paths.records / f"{key}.json").read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a record cut short by a crash: the item runs again
        return document

    def write(self, key: str, row: dict[str, Any]) -> None:
        document = {"key": key, "row": row}
        write_atomically(self.paths.records / f"{key}.json", json.dumps(document, indent=1).encode("utf-8"))
        self._append(
            "processed.jsonl", {"key": key, "run_id": row.get("run_id"), "status": row.get("status")}
        )

    def processed(self) -> list[dict[str, Any]]:
        """Every line of the processing log, oldest first."""
        return _read_lines(self.paths.state / "processed.jsonl")

    def start_run(self, facts: dict[str, Any]) -> str:
        run_id = uuid.uuid4().hex[:12]
        self._append("runs.jsonl", {"run_id": run_id, "event": "start", **facts})
        return run_id

    def end_run(self, run_id: str, facts: dict[str, Any]) -> None:
        self._append("runs.jsonl", {"run_id": run_id, "event": "end", **facts})

    def _append(self, name: str, entry: dict[str, Any]) -> None:
        line = json.dumps({"at": now_iso(), **entry}, sort_keys=True) + "\n"
        # One write of one short line in append mode: lines of two writers never interleave.
        fd = os.open(self.paths.state / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def settings_fingerprint(model: str, values: dict[str, Any], software: str) -> str:
    """The model and the settings that change results, as one stable string."""
    return json.dumps({"model": model, "settings": values, "software": software}, sort_keys=True)


def finished_rows(ledger: Ledger, keys: Iterable[str]) -> list[dict[str, Any]]:
    """The rows of the items among ``keys`` that have a record."""
    rows = []
    for key in keys:
        record = ledger.record(key)
        if record is not None:
            rows.append(record["row"])
    return rows
