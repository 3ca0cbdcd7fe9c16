"""The audit's tables: ``audit.csv`` and ``audit.parquet`` (one row per follow-up), ``patients.csv``.

Columns, their order and types come from :data:`worker.audit.rows.COLUMNS`; ``patient_id`` is
left out unless the caller asks for it. Both follow-up tables carry the same values:

* None (and an empty text) is an empty cell / a null;
* floats of measured quantities — columns ending in ``_cc``, ``_gy``, ``_pct``, ``_mm``,
  ``months_since_rt`` and the ``seconds_*`` timings — are rounded to 4 decimals, so two runs over
  the same inputs write the same text (sub-0.1 mm³ noise of resampling does not show); the other
  floats (tau, registration metrics, overlaps) keep their full precision (Python's repr);
* bools are ``true``/``false`` in the CSV, booleans in Parquet.

The CSV is UTF-8 with a header row, one line per row (texts with commas, quotes or newlines are
quoted the csv module's way). :func:`read_audit_csv` reads it back with the column kinds.

Every file is written atomically (a temporary file in the same folder, then ``os.replace``), so a
reader never sees half a table.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.files import write_atomically
from worker.audit.rows import COLUMNS, IDENTIFYING_COLUMNS, Column, Kind, sort_key
from worker.audit.trends import PatientTrend, patient_trends

if TYPE_CHECKING:
    import pyarrow as pa

AUDIT_CSV = "audit.csv"
AUDIT_PARQUET = "audit.parquet"
PATIENTS_CSV = "patients.csv"
#: Decimals of the rounded (measured) floats.
DECIMALS = 4
_ROUNDED_SUFFIXES = ("_cc", "_gy", "_pct", "_mm")
_ROUNDED_NAMES = frozenset({"months_since_rt", "months"})
_KINDS: dict[str, Kind] = {column.name: column.kind for column in COLUMNS}
#: Columns of patients.csv, in order; patient_id goes after the alias when it is written.
PATIENT_COLUMNS: tuple[str, ...] = (
    "patient_alias",
    "tasks",
    "followups",
    "succeeded",
    "failed",
    "first_date",
    "last_date",
    "first_detection_date",
    "first_detection_months",
    "course",
    "volumes_cc",
    "months",
    "months_basis",
    "growth_rate_cc_per_month",
    "relative_growth_pct_per_month",
    "max_volume_cc",
    "last_volume_cc",
    "centroid_shift_mm",
    "summary",
)


@dataclass(frozen=True)
class TablePaths:
    """Where :func:`write_tables` put the three tables."""

    audit_csv: Path
    audit_parquet: Path
    patients_csv: Path


# --- public -----------------------------------------------------------------------------------


def write_tables(
    rows: Iterable[Mapping[str, Any]], out: Path, *, include_patient_ids: bool = False
) -> TablePaths:
    """Write ``audit.csv``, ``audit.parquet`` and ``patients.csv`` into ``out`` (created if needed).

    Parameters
    ----------
    rows
        Audit rows (:mod:`worker.audit.rows`), any order; missing keys count as None.
    out
        The audit folder.
    include_patient_ids
        Write the identifying columns (``patient_id``); left out by default.

    Returns
    -------
    TablePaths
        The three files.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    columns = table_columns(include_patient_ids=include_patient_ids)
    ordered = [normalise_row(row, columns) for row in sorted(rows, key=lambda row: sort_key(dict(row)))]
    paths = TablePaths(out / AUDIT_CSV, out / AUDIT_PARQUET, out / PATIENTS_CSV)
    write_atomically(paths.audit_csv, audit_csv_text(ordered, columns).encode("utf-8"))
    write_atomically(paths.audit_parquet, audit_parquet_bytes(ordered, columns))
    trends = patient_trends(ordered)
    text = patients_csv_text(trends, include_patient_ids=include_patient_ids)
    write_atomically(paths.patients_csv, text.encode("utf-8"))
    return paths


def read_audit_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of an ``audit.csv``, values typed by the column kinds (unknown columns stay text).

    Empty cells are None. Floats come back as written (rounded where the writer rounds).
    """
    with Path(path).open(encoding="utf-8", newline="") as stream:
        return [
            {name: parse_cell(cell, _KINDS.get(name, "str")) for name, cell in record.items()}
            for record in csv.DictReader(stream)
        ]


def table_columns(*, include_patient_ids: bool = False) -> tuple[Column, ...]:
    """The columns of the follow-up tables, in order."""
    return tuple(c for c in COLUMNS if include_patient_ids or c.name not in IDENTIFYING_COLUMNS)


def normalise_row(row: Mapping[str, Any], columns: Sequence[Column]) -> dict[str, Any]:
    """The row as the tables hold it: every column, typed by its kind, rounded where measured."""
    return {column.name: _typed(row.get(column.name), column) for column in columns}


# --- CSV --------------------------------------------------------------------------------------


def audit_csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """The CSV text of normalised rows."""
    return _csv_text([c.name for c in columns], ([row[c.name] for c in columns] for row in rows))


def patients_csv_text(trends: Sequence[PatientTrend], *, include_patient_ids: bool = False) -> str:
    """The CSV text of ``patients.csv``: one line per patient."""
    names = list(PATIENT_COLUMNS)
    if include_patient_ids:
        names.insert(1, "patient_id")
    return _csv_text(names, ([_patient_cell(trend, name) for name in names] for trend in trends))


def format_cell(value: Any) -> str:
    """One CSV cell: None empty, bools true/false, floats by repr (already rounded)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse_cell(cell: str | None, kind: Kind) -> Any:
    """The typed value of a CSV cell (inverse of :func:`format_cell`)."""
    if cell is None or cell == "":
        return None
    if kind == "bool":
        if cell not in ("true", "false"):
            raise ValueError(f"not a bool cell: {cell!r}")
        return cell == "true"
    if kind == "int":
        return int(cell)
    if kind == "float":
        return float(cell)
    return cell


def _csv_text(header: Sequence[str], records: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    # "\n" line ends: the same bytes on every platform.
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for record in records:
        writer.writerow([format_cell(value) for value in record])
    return buffer.getvalue()


def _patient_cell(trend: PatientTrend, name: str) -> Any:
    if name == "tasks":
        return ";".join(trend.tasks)
    if name in ("volumes_cc", "months"):
        values: list[float | None] = getattr(trend, name)
        return ";".join(format_cell(_rounded(v)) for v in values)
    value = getattr(trend, name)
    return _rounded(value) if isinstance(value, float) else value


# --- Parquet ----------------------------------------------------------------------------------


def audit_parquet_bytes(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> bytes:
    """The Parquet file of normalised rows, typed by :func:`arrow_schema`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema(columns)
    table = pa.Table.from_pylist([dict(row) for row in rows], schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def arrow_schema(columns: Sequence[Column]) -> pa.Schema:
    """Nullable fields typed by kind, each with its description as field metadata."""
    import pyarrow as pa

    types = {"str": pa.string(), "float": pa.float64(), "int": pa.int64(), "bool": pa.bool_()}
    fields = [
        pa.field(c.name, types[c.kind], nullable=True, metadata={"description": c.description})
        for c in columns
    ]
    return pa.schema(fields, metadata={"table": "rtinjury audit: one row per follow-up"})


# --- values -----------------------------------------------------------------------------------


def _typed(value: Any, column: Column) -> Any:
    """``value`` as its column's kind (numpy scalars unwrapped); rounded if measured."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalar
    if column.kind == "str":
        text = str(value)
        return text or None
    if column.kind == "bool":
        return bool(value)
    if column.kind == "int":
        return int(value)
    number = float(value)
    return _rounded(number) if is_rounded(column.name) else number


def is_rounded(name: str) -> bool:
    """Whether a float column is a measured quantity written to :data:`DECIMALS` decimals."""
    return name.endswith(_ROUNDED_SUFFIXES) or name in _ROUNDED_NAMES or name.startswith("seconds_")


def _rounded(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return value
    # + 0.0 turns a rounded -0.0 into 0.0, so the text does not flip between "-0.0" and "0.0".
    return round(value, DECIMALS) + 0.0
