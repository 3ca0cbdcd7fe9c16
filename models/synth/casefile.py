"""case.json: the answers a test or a training loop needs about one synthetic patient.

Coordinates are DICOM patient coordinates (LPS, mm). ``true_transform`` maps
follow-up (fixed) points to planning (moving) points; the top-level copy and
the top-level ``lesion`` describe the first follow-up, every follow-up has its
own under ``followups``. ``demographics.age`` is the age at the first follow-up.

With two or more follow-ups, ``lesion_course`` ("growing", "shrinking" or
"peaking") names the order of the follow-ups' ``lesion.volume_cc``, which
holds strictly (successive volumes differ by a factor of about 1.6 or more).
With one follow-up the key is absent, so those case.json files stay as they
were before courses existed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .dose import HIGH_DOSE_FRACTION
from .geometry import Grid
from .seg import SEGMENT_CODES

if TYPE_CHECKING:
    from .params import CaseParams
    from .patient import FollowupRecord, PlanningRecord

SCHEMA_VERSION = 1


def _r(values: Any, digits: int = 4) -> Any:
    if isinstance(values, float):
        return round(values, digits)
    return [round(float(v), digits) for v in values]


def _grid(grid: Grid) -> dict[str, Any]:
    return {"origin_mm": list(grid.origin), "spacing_mm": list(grid.spacing), "shape_zyx": list(grid.shape)}


def _codes(task: str) -> dict[str, Any]:
    spec = SEGMENT_CODES[task]
    as_list = [spec.category, spec.property_type, spec.anatomic_region]
    names = ("category", "property_type", "anatomic_region")
    return {"label": spec.label} | {
        n: {"value": c.value, "scheme": c.scheme_designator, "meaning": c.meaning}
        for n, c in zip(names, as_list, strict=True)
    }


def _followup(p: CaseParams, k: int, rec: FollowupRecord) -> dict[str, Any]:
    fu = p.followups[k]
    return {
        "index": k + 1,
        "study_date": fu.date.isoformat(),
        "months_since_rt": fu.months_since_rt,
        "modality": rec.modality,
        "series_description": rec.series.description,
        "study_instance_uid": rec.study.uid,
        "series_instance_uid": rec.series.uid,
        "frame_of_reference_uid": rec.series.frame_of_reference_uid,
        "image_dir": rec.image_dir,
        "grid": _grid(fu.grid),
        "seg_file": rec.seg_file,
        "seg_series_instance_uid": rec.seg_series_uid,
        "seg_sop_instance_uid": rec.seg_uid,
        "lesion": {
            "volume_cc": _r(rec.volume_cc),
            "analytic_volume_cc": _r(p.lesion_fit.volumes_cc[k]),
            "centroid_followup_mm": _r(rec.centroid_mm),
            "centroid_planning_mm": _r(p.lesion_fit.centroids_mm[k]),
        },
        "true_transform": fu.transform.to_dict(),
    }


def _planning(p: CaseParams, rec: PlanningRecord) -> dict[str, Any]:
    return {
        "study_date": p.planning_date.isoformat(),
        "study_instance_uid": rec.study_uid,
        "frame_of_reference_uid": rec.frame_of_reference_uid,
        "ct_series_instance_uid": rec.ct_series_uid,
        "ct_dir": "planning/ct",
        "ct_grid": _grid(p.planning_grid),
        "rtplan_file": "planning/rtplan.dcm",
        "rtplan_sop_instance_uid": rec.rtplan_uid,
        "rtdose_file": "planning/rtdose.dcm",
        "rtdose_sop_instance_uid": rec.rtdose_uid,
    }


def build_case_json(
    p: CaseParams, planning: PlanningRecord, followups: list[FollowupRecord]
) -> dict[str, Any]:
    """The case.json content (JSON-ready dict)."""
    entries = [_followup(p, k, rec) for k, rec in enumerate(followups)]
    first = entries[0]
    course = {} if p.lesion_course is None else {"lesion_course": p.lesion_course}
    return {
        "schema_version": SCHEMA_VERSION,
        "task": p.task,
        "patient_id": p.patient.patient_id,
        "patient_name": p.patient.name,
        "seed": p.seed,
        "index": p.index,
        "size": p.size,
        "clinical": {
            "diagnosis": p.diagnosis,
            "treatment_site": p.site,
            "laterality": "left" if p.side > 0 else "right",
            "prescription_gy": p.prescription_gy,
            "fractions": p.fractions,
            "months_since_rt": first["months_since_rt"],
            "treatment_end_date": p.treatment_end.isoformat(),
        },
        "demographics": {"age": p.patient.age_on(p.followups[0].date), "sex": p.patient.sex},
        "true_transform": first["true_transform"],
        **course,
        "lesion": first["lesion"] | {"shape": p.lesion.to_dict(), "segment": _codes(p.task)},
        "dose": {
            "max_gy": _r(planning.max_dose_gy),
            "high_dose_fraction": HIGH_DOSE_FRACTION,
            "high_dose_threshold_gy": _r(HIGH_DOSE_FRACTION * planning.max_dose_gy),
            "grid": _grid(planning.dose_grid),
        },
        "planning": _planning(p, planning),
        "followups": entries,
    }


def load_case(case_dir: Path) -> dict[str, Any]:
    """Read ``case_dir/case.json``."""
    return json.loads((Path(case_dir) / "case.json").read_text())
