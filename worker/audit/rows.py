"""The audit's table: one row per follow-up scan, the columns of ``audit.csv`` and ``audit.parquet``.

A row is a plain ``dict`` keyed by column name (None where a value does not apply: the lesion
figures of a failed follow-up, the dose of an empty lesion). The column list below is the one
place that fixes names, order, types and meanings; the writers and the HTML summary follow it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["str", "float", "int", "bool"]

SUCCEEDED = "succeeded"
FAILED = "failed"


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    description: str


def _c(name: str, kind: Kind, description: str) -> Column:
    return Column(name, kind, description)


#: Every column in table order.
COLUMNS: tuple[Column, ...] = (
    _c("key", "str", "input key: SHA-256 of the input files, model fingerprint and settings (first 16 hex)"),
    _c("patient_alias", "str", "stable pseudonym of the PatientID (pt- + 10 hex)"),
    _c("patient_id", "str", "the PatientID itself; only with --include-patient-ids"),
    _c("task", "str", "orn, ce or crn (from the follow-up's modality and sequence)"),
    _c("followup_date", "str", "follow-up acquisition date, YYYY-MM-DD"),
    _c("followup_modality", "str", "CT or MR"),
    _c("followup_series_uid", "str", "SeriesInstanceUID of the follow-up scan"),
    _c("planning_date", "str", "planning CT date, YYYY-MM-DD"),
    _c(
        "months_since_rt",
        "float",
        "months from the end of radiotherapy (or the planning CT) to the follow-up",
    ),
    _c("rt_reference", "str", "what months_since_rt counts from: 'treatment end' or 'planning CT'"),
    _c("status", "str", "succeeded or failed"),
    _c(
        "failed_stage",
        "str",
        "stage that failed (assemble, read, register, dose, prompts, infer, export; collect)",
    ),
    _c("error_code", "str", "stable code of the failure"),
    _c("error", "str", "why the follow-up failed, in words"),
    _c("lesion_found", "bool", "the network found lesion voxels inside the high-dose region"),
    _c("lesion_volume_cc", "float", "lesion volume (cc) on the follow-up grid"),
    _c("lesion_components", "int", "26-connected components of the lesion"),
    _c("lesion_centroid_x_mm", "float", "lesion centroid in the planning CT frame (LPS x, mm)"),
    _c("lesion_centroid_y_mm", "float", "lesion centroid in the planning CT frame (LPS y, mm)"),
    _c("lesion_centroid_z_mm", "float", "lesion centroid in the planning CT frame (LPS z, mm)"),
    _c("lesion_dmean_gy", "float", "mean planning dose in the lesion (Gy)"),
    _c("lesion_dmax_gy", "float", "maximum planning dose in the lesion (Gy)"),
    _c("lesion_d98_gy", "float", "dose received by 98 % of the lesion (Gy)"),
    _c("lesion_d2cc_gy", "float", "minimum dose to the hottest 2 cc of the lesion (Gy; empty under 2 cc)"),
    _c("lesion_v50gy_pct", "float", "% of the lesion receiving at least 50 Gy"),
    _c("lesion_v60gy_pct", "float", "% of the lesion receiving at least 60 Gy"),
    _c("lesion_v70gy_pct", "float", "% of the lesion receiving at least 70 Gy"),
    _c("plan_dmax_gy", "float", "maximum of the planning dose carried onto the follow-up (Gy)"),
    _c("tau", "float", "high-dose fraction: the region r is dose >= tau * Dmax"),
    _c("high_dose_threshold_gy", "float", "tau * Dmax (Gy)"),
    _c("high_dose_roi_cc", "float", "volume of the high-dose region r (cc)"),
    _c("registration_method", "str", "identity, reg-object, rigid or rigid+bspline"),
    _c("registration_needs_review", "bool", "a registration QA figure is implausible"),
    _c("registration_metric_before", "float", "image similarity before registration (lower is better)"),
    _c("registration_metric_after", "float", "image similarity after registration (lower is better)"),
    _c("body_overlap_before", "float", "Dice of the body masks before registration"),
    _c("body_overlap_after", "float", "Dice of the body masks after registration"),
    _c("registration_flags", "str", "registration QA flags, ' | '-separated"),
    _c("warnings", "str", "warnings of the job, ' | '-separated"),
    _c("seg_path", "str", "DICOM-SEG, relative to the audit folder"),
    _c("rtstruct_path", "str", "RTSTRUCT, relative to the audit folder"),
    _c("sr_path", "str", "DICOM SR, relative to the audit folder"),
    _c("report_path", "str", "report JSON, relative to the audit folder"),
    _c("preview_path", "str", "preview PNG, relative to the audit folder"),
    _c("model_id", "str", "network that segmented the follow-up"),
    _c("weights_sha256", "str", "SHA-256 of its weights"),
    _c("processed_at", "str", "when the follow-up was processed (UTC, ISO 8601)"),
    _c("run_id", "str", "the audit run that processed it"),
    _c("seconds_total", "float", "wall time of the whole pipeline (s)"),
    _c("seconds_assemble", "float", "assemble stage (s)"),
    _c("seconds_read", "float", "read stage (s)"),
    _c("seconds_register", "float", "register stage (s)"),
    _c("seconds_dose", "float", "dose stage (s)"),
    _c("seconds_prompts", "float", "prompts stage (s)"),
    _c("seconds_infer", "float", "infer stage (s)"),
    _c("seconds_export", "float", "export stage (s)"),
)

COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
#: Stages timed per row, in pipeline order (the ``seconds_<stage>`` columns).
TIMED_STAGES = ("assemble", "read", "register", "dose", "prompts", "infer", "export")
#: Columns that differ between two runs over the same inputs (when and how fast, not what).
VOLATILE_COLUMNS = frozenset(
    {"processed_at", "run_id", "seconds_total", *(f"seconds_{s}" for s in TIMED_STAGES)}
)
#: Columns that identify the patient; written only when the user asks for them.
IDENTIFYING_COLUMNS = frozenset({"patient_id"})


def empty_row() -> dict[str, Any]:
    """A row with every column present and None."""
    return dict.fromkeys(COLUMN_NAMES)


def sort_key(row: dict[str, Any]) -> tuple[str, str, str, str]:
    """Table order: patient, then date, then task and series (ties in date are rare but exist)."""
    return (
        str(row.get("patient_alias") or ""),
        str(row.get("followup_date") or ""),
        str(row.get("task") or ""),
        str(row.get("followup_series_uid") or ""),
    )
