"""A follow-up's report (``report.json``) as the figures of its audit page.

The same figures, labels and units as the job page shows for a job (``static/viewer.js``), read
from the copy the audit kept. A damaged report, or one of another format, is a message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.web.audits import AuditNotFound, output_file
from worker.audit.trends import finite_float
from worker.stages.export.files import OUTPUT_FILES


@dataclass(frozen=True)
class ReportLine:
    """One figure of a follow-up's report: a stable field name, a label and the value in words."""

    field: str
    label: str
    value: str


#: Largest report.json read for the page (ours are a few kB).
MAX_REPORT_BYTES = 1024**2


def read_report(folder: Path) -> tuple[list[ReportLine], str | None]:
    """The figures of ``report.json`` in a follow-up folder, or none and why."""
    try:
        path = output_file(folder, OUTPUT_FILES["report"])
    except AuditNotFound:
        return [], "This follow-up has no report."
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            return [], "The report is too large to show; download it instead."
        report = json.loads(path.read_text("utf-8"))
        return report_lines(report), None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return [], "The report cannot be read (damaged or of another format)."


def report_lines(report: Mapping[str, Any]) -> list[ReportLine]:
    """The figures the job page shows, in the same order and units."""
    lesion, dose = report.get("lesion") or {}, report.get("lesion_dose") or {}
    prompt, registration = report.get("prompt") or {}, report.get("registration") or {}
    qa, v_percent = registration.get("qa") or {}, dose.get("v_percent") or {}
    review = " — needs review" if registration.get("needs_review") else ""
    lines = [
        ReportLine("lesion_volume_cc", "Lesion volume", _fixed(lesion.get("volume_cc"), 2, "cc")),
        ReportLine("lesion_components", "Components", _fixed(lesion.get("components"), 0)),
        ReportLine("lesion_dmean_gy", "Lesion Dmean", _fixed(dose.get("dmean_gy"), 1, "Gy")),
        ReportLine("lesion_dmax_gy", "Lesion Dmax", _fixed(dose.get("dmax_gy"), 1, "Gy")),
        ReportLine("lesion_d98_gy", "Lesion D98", _fixed(dose.get("d98_gy"), 1, "Gy")),
        ReportLine("lesion_d2cc_gy", "Lesion D2cc", _fixed(dose.get("d2cc_gy"), 1, "Gy")),
        ReportLine(
            "lesion_v_gy",
            "Lesion V50 / V60 / V70",
            " / ".join(_fixed(v_percent.get(k), 0, "%") for k in ("V50Gy", "V60Gy", "V70Gy")),
        ),
        ReportLine("plan_dmax_gy", "Plan Dmax on follow-up", _fixed(prompt.get("dmax_gy"), 1, "Gy")),
        ReportLine(
            "high_dose",
            "High-dose region (τ)",
            f"{_fixed(prompt.get('high_dose_roi_volume_cc'), 1, 'cc')} ≥ "
            f"{_fixed(prompt.get('threshold_gy'), 1, 'Gy')} (τ {_fixed(prompt.get('tau'), 2)})",
        ),
        ReportLine("registration", "Registration", f"{registration.get('method') or '–'}{review}"),
        ReportLine(
            "body_overlap",
            "Body overlap before → after",
            f"{_fixed(qa.get('body_overlap_before'), 3)} → {_fixed(qa.get('body_overlap_after'), 3)}",
        ),
        ReportLine("model", "Model", str((report.get("model") or {}).get("model_id") or "–")),
        ReportLine("notice", "Status", str(report.get("notice") or "")),
    ]
    lines += [
        ReportLine("registration_flag", "Registration flag", str(f)) for f in registration.get("flags") or []
    ]
    lines += [ReportLine("warning", "Warning", str(w)) for w in report.get("warnings") or []]
    return lines


def _fixed(value: Any, decimals: int, unit: str = "") -> str:
    number = finite_float(value)
    if number is None:
        return "–"
    return f"{number:.{decimals}f}{f' {unit}' if unit else ''}"
