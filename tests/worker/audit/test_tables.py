"""audit.csv, audit.parquet and patients.csv: columns, types, rounding, identifiers, atomic writes."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.worker.audit.test_trends import cohort, followup
from worker.audit import tables
from worker.audit.rows import COLUMN_NAMES, COLUMNS, sort_key
from worker.audit.tables import (
    PATIENT_COLUMNS,
    TablePaths,
    normalise_row,
    read_audit_csv,
    table_columns,
    write_tables,
)

ARROW_TYPES = {"str": pa.string(), "float": pa.float64(), "int": pa.int64(), "bool": pa.bool_()}
PYTHON_TYPES = {"str": str, "float": float, "int": int, "bool": bool}


def cohort_with_ids() -> list[dict[str, Any]]:
    rows = cohort()
    for row in rows:
        row["patient_id"] = "ID-" + str(row["patient_alias"]).upper()
    return rows


def expected_rows(rows: list[dict[str, Any]], *, include_patient_ids: bool = False) -> list[dict[str, Any]]:
    columns = table_columns(include_patient_ids=include_patient_ids)
    return [normalise_row(row, columns) for row in sorted(rows, key=sort_key)]


def patients_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture
def written(tmp_path: Path) -> TablePaths:
    return write_tables(cohort(), tmp_path / "audit")


# --- audit.csv --------------------------------------------------------------------------------


def test_csv_has_the_columns_in_order_without_patient_id(written: TablePaths) -> None:
    header = written.audit_csv.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header == [name for name in COLUMN_NAMES if name != "patient_id"]


def test_csv_round_trip_keeps_values_and_types(written: TablePaths) -> None:
    read = read_audit_csv(written.audit_csv)
    assert read == expected_rows(cohort())
    kinds = {column.name: column.kind for column in COLUMNS}
    for row in read:
        for name, value in row.items():
            assert value is None or type(value) is PYTHON_TYPES[kinds[name]], name


def test_rows_are_in_table_order(written: TablePaths) -> None:
    read = read_audit_csv(written.audit_csv)
    assert [sort_key(row) for row in read] == sorted(sort_key(row) for row in cohort())
    # Date order within a patient, the failed follow-up in its place.
    assert [r["followup_date"] for r in read if r["patient_alias"] == "pt-d-appears"] == [
        "2020-04-01",
        "2020-08-01",
        "2020-12-01",
        "2021-04-01",
    ]


def test_measured_floats_are_rounded_and_bools_written_as_words(written: TablePaths) -> None:
    lines = list(csv.DictReader(written.audit_csv.open(encoding="utf-8", newline="")))
    row = next(r for r in lines if r["patient_alias"] == "pt-a-growing")
    assert row["high_dose_roi_cc"] == "85.3123"
    assert row["lesion_dmean_gy"] == "55.1235"
    assert row["lesion_v50gy_pct"] == "99.1235"
    assert row["seconds_total"] == "12.3457"
    # Not measured quantities: full precision.
    assert row["registration_metric_before"] == "-0.41234567"
    assert (row["lesion_found"], row["registration_needs_review"]) == ("true", "false")
    assert row["lesion_components"] == "1"
    failed = next(r for r in lines if r["patient_alias"] == "pt-f-failed")
    assert failed["task"] == failed["lesion_volume_cc"] == failed["lesion_found"] == ""


def test_texts_with_commas_quotes_and_newlines_survive(tmp_path: Path) -> None:
    row = followup("pt-x", "2020-03-01", 2.0, 0.5, warnings='a, "quoted" | two\nlines <script>')
    paths = write_tables([row], tmp_path)
    assert read_audit_csv(paths.audit_csv)[0]["warnings"] == 'a, "quoted" | two\nlines <script>'


def test_numpy_values_are_plain_in_the_tables(tmp_path: Path) -> None:
    row = followup("pt-x", "2020-03-01", 2.0, 0.5)
    row.update(lesion_volume_cc=np.float32(0.5), lesion_components=np.int64(3), lesion_found=np.bool_(True))
    read = read_audit_csv(write_tables([row], tmp_path).audit_csv)[0]
    assert (read["lesion_volume_cc"], read["lesion_components"], read["lesion_found"]) == (0.5, 3, True)


# --- audit.parquet ----------------------------------------------------------------------------


def test_parquet_schema_is_typed_by_kind_with_descriptions(written: TablePaths) -> None:
    schema = pq.read_schema(written.audit_parquet)
    columns = [c for c in COLUMNS if c.name != "patient_id"]
    assert schema.names == [c.name for c in columns]
    for column in columns:
        field = schema.field(column.name)
        assert field.type == ARROW_TYPES[column.kind], column.name
        assert field.nullable
        assert field.metadata[b"description"].decode("utf-8") == column.description


def test_parquet_round_trip_matches_the_csv(written: TablePaths) -> None:
    from_parquet = pq.read_table(written.audit_parquet).to_pylist()
    assert from_parquet == expected_rows(cohort())
    assert from_parquet == read_audit_csv(written.audit_csv)


# --- patient IDs ------------------------------------------------------------------------------


def test_patient_id_is_left_out_unless_asked(tmp_path: Path) -> None:
    paths = write_tables(cohort_with_ids(), tmp_path)
    for path in (paths.audit_csv, paths.audit_parquet, paths.patients_csv):
        assert b"ID-PT-" not in path.read_bytes(), path.name
    assert "patient_id" not in pq.read_schema(paths.audit_parquet).names
    assert "patient_id" not in patients_csv(paths.patients_csv)[0]


def test_patient_id_is_written_when_asked(tmp_path: Path) -> None:
    rows = cohort_with_ids()
    paths = write_tables(rows, tmp_path, include_patient_ids=True)
    assert read_audit_csv(paths.audit_csv) == expected_rows(rows, include_patient_ids=True)
    assert pq.read_schema(paths.audit_parquet).names == list(COLUMN_NAMES)
    patients = patients_csv(paths.patients_csv)
    assert list(patients[0])[:2] == ["patient_alias", "patient_id"]
    assert {p["patient_alias"]: p["patient_id"] for p in patients}["pt-a-growing"] == "ID-PT-A-GROWING"


# --- patients.csv -----------------------------------------------------------------------------


def test_patients_csv_one_line_per_patient(written: TablePaths) -> None:
    patients = {p["patient_alias"]: p for p in patients_csv(written.patients_csv)}
    assert list(next(iter(patients.values()))) == list(PATIENT_COLUMNS)
    assert sorted(patients) == sorted({row["patient_alias"] for row in cohort()})
    appears = patients["pt-d-appears"]
    assert appears["volumes_cc"] == "0.0;0.02;;0.4"
    assert appears["months"] == "2.0;6.0;10.0;14.0"
    assert (appears["followups"], appears["succeeded"], appears["failed"]) == ("4", "3", "1")
    assert appears["course"] == "appeared"
    assert appears["first_detection_date"] == "2021-04-01"
    assert appears["relative_growth_pct_per_month"] == ""
    growing = patients["pt-a-growing"]
    assert growing["tasks"] == "orn"
    slope = float(np.polyfit([3.0, 7.0, 12.0], [0.5, 0.9, 1.5], 1)[0])
    assert growing["growth_rate_cc_per_month"] == repr(round(slope, 4))
    assert growing["centroid_shift_mm"] == "12.0"
    assert patients["pt-f-failed"]["summary"] == "no follow-up succeeded; 1 follow-up failed"


# --- files ------------------------------------------------------------------------------------


def test_two_runs_write_identical_bytes(tmp_path: Path) -> None:
    first = write_tables(cohort(), tmp_path / "one")
    second = write_tables(list(reversed(cohort())), tmp_path / "two")
    for name in ("audit_csv", "patients_csv", "audit_parquet"):
        assert getattr(first, name).read_bytes() == getattr(second, name).read_bytes(), name


def test_writes_leave_no_temporary_files(written: TablePaths) -> None:
    folder = written.audit_csv.parent
    assert sorted(p.name for p in folder.iterdir()) == ["audit.csv", "audit.parquet", "patients.csv"]


def test_a_failed_write_keeps_the_old_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = write_tables(cohort(), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(*args: Any) -> bytes:
        raise RuntimeError("disk full")

    monkeypatch.setattr(tables, "audit_parquet_bytes", broken)
    with pytest.raises(RuntimeError):
        write_tables([followup("pt-x", "2020-03-01", 2.0, 0.5)], tmp_path)
    assert paths.audit_parquet.read_bytes() == before["audit.parquet"]
    # audit.csv was replaced whole before the failure; nothing half-written, no temporary file.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)


def test_no_rows_writes_headers_and_an_empty_typed_table(tmp_path: Path) -> None:
    paths = write_tables([], tmp_path)
    assert read_audit_csv(paths.audit_csv) == []
    assert paths.audit_csv.read_text(encoding="utf-8").count("\n") == 1
    table = pq.read_table(paths.audit_parquet)
    assert table.num_rows == 0
    assert table.schema.field("lesion_found").type == pa.bool_()
    assert patients_csv(paths.patients_csv) == []
