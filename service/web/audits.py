"""Audits (``rtinjury audit --out``) as the web pages read them: the list, one audit, one follow-up.

Each subfolder of ``Settings.audits_folder`` that holds an ``audit.csv`` or ``state/records/`` is
one audit, named after its folder. Nothing here writes: an audit may be running while it is
looked at (its ``audit.csv`` appears at the end of a run, its records one by one), so a missing,
partial or damaged table is a message on the page, never an error of the server.

Every path made from a URL or from a table is resolved, symlinks included, and must stay inside
its audit (and the audit inside the audits folder); anything else is :class:`AuditNotFound`.
Rows may hold PatientIDs (``--include-patient-ids``): they are shown, never logged.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from worker.audit.rows import COLUMNS, SUCCEEDED, sort_key
from worker.audit.tables import AUDIT_CSV, parse_cell
from worker.audit.trends import SINCE_RT, PatientTrend, finite_float, patient_trends
from worker.stages.export.files import OUTPUT_FILES

log = logging.getLogger(__name__)

#: Names of audits, patients and follow-up folders that a URL may carry.
SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
FOLLOWUPS = "followups"
RECORDS = Path("state") / "records"
RUNS_LOG = Path("state") / "runs.jsonl"
#: Columns without which the rows cannot be grouped and counted.
REQUIRED_COLUMNS = ("patient_alias", "status")
_KINDS = {column.name: column.kind for column in COLUMNS}
#: The output files of a follow-up, by file name (``seg.dcm`` → ``seg``).
OUTPUT_NAMES = {file: name for name, file in OUTPUT_FILES.items()}


class AuditNotFound(LookupError):
    """No audit, follow-up or file of that name inside the audits folder (a 404 page)."""


class _Unreadable(Exception):
    """A table or record that cannot be read; the message says why, in words, without values."""


@dataclass(frozen=True)
class AuditRows:
    """An audit's rows in table order, where they came from and what could not be read."""

    rows: list[dict[str, Any]]
    source: str
    problems: list[str]


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit list."""

    name: str
    last_run: str | None
    patients: int
    followups: int
    failed: int
    source: str
    problems: list[str]


@dataclass(frozen=True)
class FollowupLine:
    """One follow-up of a patient: its row, where it sits on the time axis, its output folder."""

    row: dict[str, Any]
    months: float | None
    item: str | None

    @property
    def files(self) -> list[str]:
        """Output file names the row lists (seg.dcm …), in OUTPUT_FILES order."""
        return [file for name, file in OUTPUT_FILES.items() if self.row.get(f"{name}_path")]


@dataclass(frozen=True)
class PatientView:
    """One patient of an audit: follow-ups in table order, volumes and the trend."""

    alias: str
    patient_id: str | None
    tasks: list[str]
    followups: list[FollowupLine]
    first_volume_cc: float | None
    last_volume_cc: float | None
    course: str
    summary: str
    x_label: str

    def series(self) -> dict[str, list[tuple[float, float, str]]]:
        """Task → (months, volume, date) of the follow-ups that have both, in table order."""
        series: dict[str, list[tuple[float, float, str]]] = {}
        for line in self.followups:
            volume = finite_float(line.row.get("lesion_volume_cc"))
            if volume is not None and line.months is not None:
                task = str(line.row.get("task") or "?")
                date = str(line.row.get("followup_date") or "undated")
                series.setdefault(task, []).append((line.months, volume, date))
        return series


# --- paths ------------------------------------------------------------------------------------


def is_safe_name(name: str) -> bool:
    """A single path component of our own alphabet, and not ``.`` or ``..``."""
    return bool(SAFE_NAME.match(name)) and name.strip(".") != ""


def audit_folder(audits_root: Path, name: str) -> Path:
    """The resolved folder of audit ``name``.

    Raises
    ------
    AuditNotFound
        A name outside our alphabet, a folder that resolves outside the audits folder, or no audit.
    """
    if not is_safe_name(name):
        raise AuditNotFound(name)
    folder = _inside(_resolved(audits_root), name)
    if not _is_audit(folder):
        raise AuditNotFound(name)
    return folder


def followup_folder(audit: Path, patient: str, item: str) -> Path:
    """The resolved ``followups/<patient>/<item>`` folder of an audit (see :func:`audit_folder`)."""
    if not (is_safe_name(patient) and is_safe_name(item)):
        raise AuditNotFound(item)
    folder = _inside(audit, FOLLOWUPS, patient, item)
    if not folder.is_dir():
        raise AuditNotFound(item)
    return folder


def output_file(folder: Path, file: str) -> Path:
    """One output file (a name of OUTPUT_FILES) of a follow-up folder; it must be a file in it."""
    if file not in OUTPUT_NAMES:
        raise AuditNotFound(file)
    path = _inside(folder, file)
    if not path.is_file():
        raise AuditNotFound(file)
    return path


def _resolved(path: Path) -> Path:
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError) as error:  # missing, or a symlink loop
        raise AuditNotFound(str(path.name)) from error


def _inside(base: Path, *parts: str) -> Path:
    """``base/parts`` resolved; it must stay inside ``base`` (already resolved)."""
    try:
        target = base.joinpath(*parts).resolve()
    except (OSError, RuntimeError) as error:
        raise AuditNotFound(parts[-1]) from error
    if target == base or not target.is_relative_to(base):
        raise AuditNotFound(parts[-1])
    return target


def _is_audit(folder: Path) -> bool:
    return folder.is_dir() and ((folder / AUDIT_CSV).is_file() or (folder / RECORDS).is_dir())


# --- the list ---------------------------------------------------------------------------------


def list_audits(audits_root: Path) -> list[AuditEntry]:
    """The audits under ``audits_root``, by name; none when the folder does not exist."""
    try:
        root = audits_root.resolve(strict=True)
        children = sorted(root.iterdir())
    except (OSError, RuntimeError):
        return []
    entries = []
    for child in children:
        try:
            folder = audit_folder(root, child.name)
        except AuditNotFound:
            continue  # not an audit, a name we do not serve, or a link out of the folder
        entries.append(_entry(child.name, folder))
    return entries


def _entry(name: str, folder: Path) -> AuditEntry:
    rows = read_rows(folder)
    return AuditEntry(
        name=name,
        last_run=last_run(folder),
        patients=len({row.get("patient_alias") for row in rows.rows}),
        followups=len(rows.rows),
        failed=sum(row.get("status") != SUCCEEDED for row in rows.rows),
        source=rows.source,
        problems=rows.problems,
    )


def last_run(folder: Path) -> str | None:
    """When the audit last ran (UTC): the run log's last line, else when audit.csv was written."""
    try:
        lines = (folder / RUNS_LOG).read_text("utf-8").splitlines()
        at = json.loads(next(line for line in reversed(lines) if line.strip()))["at"]
        return dt.datetime.fromisoformat(str(at)).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OSError, ValueError, StopIteration, KeyError, TypeError):
        pass  # no run log (copied tables only) or a damaged one: the table's time
    try:
        written = (folder / AUDIT_CSV).stat().st_mtime
    except OSError:
        return None
    return dt.datetime.fromtimestamp(written, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- one audit's rows -------------------------------------------------------------------------


def read_rows(folder: Path) -> AuditRows:
    """The rows of ``audit.csv``; the finished records when there is no (readable) table yet."""
    problems = []
    table = folder / AUDIT_CSV
    if table.is_file():
        try:
            return AuditRows(_read_table(table), AUDIT_CSV, [])
        except _Unreadable as error:
            log.warning("audit %s: audit.csv not readable", folder.name)
            problems.append(f"{AUDIT_CSV} cannot be read: {error}.")
    else:
        problems.append(
            f"There is no {AUDIT_CSV} yet (the audit is running, or stopped before writing its tables)."
        )
    rows, unreadable = _read_records(folder / RECORDS)
    if rows:
        problems.append(f"Shown: the {len(rows)} follow-ups recorded as finished under state/records.")
    if unreadable:
        problems.append(f"{unreadable} record file(s) under state/records could not be read.")
    return AuditRows(rows, "records", problems)


def _read_table(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8", newline="") as stream:
            return list(_table_rows(csv.reader(stream)))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise _Unreadable(_reason(error)) from error


def _table_rows(reader: Iterator[list[str]]) -> Iterator[dict[str, Any]]:
    header = next(reader, None)
    if not header:
        raise _Unreadable("the file is empty")
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise _Unreadable(f"it has no {', '.join(missing)} column")
    for number, cells in enumerate(reader, start=2):
        if not cells:
            continue
        if len(cells) != len(header):
            raise _Unreadable(f"row {number} has {len(cells)} cells where the header names {len(header)}")
        yield dict(_typed_cells(header, cells, number))


def _typed_cells(header: Sequence[str], cells: Sequence[str], number: int) -> Iterator[tuple[str, Any]]:
    for name, cell in zip(header, cells, strict=True):
        try:
            yield name, parse_cell(cell, _KINDS.get(name, "str"))
        except ValueError as error:
            # The column, not the cell: a cell may hold a PatientID.
            raise _Unreadable(f"row {number} has a value of the wrong kind in column {name}") from error


def _reason(error: Exception) -> str:
    if isinstance(error, UnicodeDecodeError):
        return "it is not UTF-8 text"
    if isinstance(error, csv.Error):
        return "it is not a well-formed CSV file"
    return f"it could not be opened ({type(error).__name__})"


def _read_records(folder: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of the records (``{"key", "row"}`` JSON files) in table order, and how many failed."""
    rows, unreadable = [], 0
    try:
        paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    except OSError:
        return [], 0
    for path in paths:
        try:
            row = json.loads(path.read_text("utf-8"))["row"]
        except (OSError, ValueError, KeyError, TypeError):
            unreadable += 1  # a record cut short by a crash; the audit runs its item again
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            unreadable += 1
    return sorted(rows, key=sort_key), unreadable


# --- patients ---------------------------------------------------------------------------------


def patients(rows: Sequence[Mapping[str, Any]]) -> list[PatientView]:
    """The rows grouped by patient alias, each with its volumes over time and trend."""
    ordered = sorted((dict(row) for row in rows), key=sort_key)
    by_alias: dict[str, list[dict[str, Any]]] = {}
    for row in ordered:
        by_alias.setdefault(str(row.get("patient_alias") or ""), []).append(row)
    return [_patient(trend, by_alias[trend.patient_alias]) for trend in patient_trends(ordered)]


def _patient(trend: PatientTrend, rows: list[dict[str, Any]]) -> PatientView:
    # The trend keeps table order, so its months (dates fill in missing ones) line up with rows.
    lines = [FollowupLine(row, months, item_of(row)) for row, months in zip(rows, trend.months, strict=True)]
    volumes = [
        volume for volume in (finite_float(row.get("lesion_volume_cc")) for row in rows) if volume is not None
    ]
    since = "months since RT" if trend.months_basis == SINCE_RT else "months since the first follow-up"
    return PatientView(
        alias=trend.patient_alias,
        patient_id=trend.patient_id,
        tasks=trend.tasks,
        followups=lines,
        first_volume_cc=volumes[0] if volumes else None,
        last_volume_cc=volumes[-1] if volumes else None,
        course=trend.course,
        summary=trend.summary,
        x_label=since,
    )


def item_of(row: Mapping[str, Any]) -> str | None:
    """The follow-up's folder name under ``followups/<alias>/``, from the paths its row lists."""
    alias = str(row.get("patient_alias") or "")
    for name in OUTPUT_FILES:
        path = row.get(f"{name}_path")
        if not path:
            continue
        parts = PurePosixPath(str(path)).parts
        if len(parts) == 4 and parts[0] == FOLLOWUPS and parts[1] == alias and is_safe_name(alias):
            return parts[2] if is_safe_name(parts[2]) else None
    return None


def find_row(rows: Sequence[Mapping[str, Any]], patient: str, item: str) -> dict[str, Any] | None:
    """The row of the follow-up kept in ``followups/<patient>/<item>``, if the table lists it."""
    for row in rows:
        if row.get("patient_alias") == patient and item_of(row) == item:
            return dict(row)
    return None
