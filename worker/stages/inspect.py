"""A JSON-ready description of assembled and read cases (``rtinjury inspect``, job records)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import SimpleITK as sitk

from worker.stages.assemble.case import Assembly, Case
from worker.stages.assemble.index import Series
from worker.stages.prepare import PreparedCase
from worker.stages.read.case_data import CaseData
from worker.stages.read.series import ImageVolume


def describe_assembly(
    assembly: Assembly, data: list[CaseData], prepared: list[PreparedCase] | None = None
) -> dict[str, Any]:
    """Every case with its roles, geometry, dose and warnings (and its prompt, when prepared)."""
    cases = [describe_case(c, d) for c, d in zip(assembly.cases, data, strict=True)]
    for case, ready in zip(cases, prepared or [], strict=False):
        case["prompt"] = describe_prepared(ready)
    return {"cases": cases, "ignored": assembly.ignored, "not_dicom_files": assembly.not_dicom}


def describe_prepared(prepared: PreparedCase) -> dict[str, Any]:
    """Registration QA, dose coverage, the high-dose region with its box, and the dose in it."""
    registration, region, stats = prepared.registration, prepared.region, prepared.region_dose
    return {
        "registration": {
            "method": str(registration.method),
            **{k: _rounded(v) for k, v in asdict(registration.qa).items()},
            "flags": registration.flags,
            "notes": registration.notes,
        },
        "dose_coverage_percent": round(prepared.dose.coverage_percent, 2),
        "high_dose_region": {
            "tau": region.tau,
            "dmax_gy": round(region.dmax_gy, 3),
            "threshold_gy": round(region.threshold_gy, 3),
            "volume_cc": round(region.volume_cc, 3),
            "components": region.components,
            "box_index_min": list(region.index_min),
            "box_index_max": list(region.index_max),
            "box_corner_min_mm": [round(v, 2) for v in region.corner_min_mm],
            "box_corner_max_mm": [round(v, 2) for v in region.corner_max_mm],
        },
        "region_dose": {
            "mean_gy": round(stats.mean_gy, 3),
            "d98_gy": round(stats.d98_gy, 3),
            "d2_gy": round(stats.d2_gy, 3),
            **{k: round(v, 2) for k, v in stats.v_percent.items()},
        },
        "warnings": prepared.warnings,
    }


def _rounded(value: object) -> object:
    return round(value, 4) if isinstance(value, float) else value


def describe_case(case: Case, data: CaseData) -> dict[str, Any]:
    """One case: roles, sizes, spacing, frames of reference, dose, prescription, warnings."""
    plan = data.plans[0] if data.plans else None
    return {
        "patient_alias": case.patient_alias,
        "task": case.task,
        "followup_kind": case.followup_kind,
        "followup": _image(case.followup, data.followup),
        "planning_ct": _image(case.planning_ct, data.planning_ct),
        "registration_needed": not case.same_frame_of_reference,
        "rtdose": {
            "instances": sum(len(s.instances) for s in case.rtdose),
            "summation_type": data.dose.summation_type,
            "dose_type": data.dose.dose_type,
            "offsets_form": data.dose.offsets_form,
            "max_gy": round(data.dose.max_gy, 3),
            **_grid(data.dose.image),
            "frame_of_reference_uid": data.dose.frame_of_reference_uid,
        },
        "rtplan": None
        if plan is None
        else {
            "label": plan.label,
            "date": plan.date,
            "prescription_gy": plan.prescription_gy,
            "prescription_source": plan.prescription_source,
            "fractions": plan.fractions,
            "approval_status": plan.approval_status,
        },
        "rtstruct": len(case.rtstruct),
        "reg": len(case.reg),
        "seg": len(case.seg),
        "warnings": data.warnings,
    }


def _image(series: Series, volume: ImageVolume) -> dict[str, Any]:
    report = volume.report
    return {
        "modality": volume.modality,
        "description": series.text("SeriesDescription"),
        "date": series.first.date,
        "series_instance_uid": volume.series_instance_uid,
        "frame_of_reference_uid": volume.frame_of_reference_uid,
        "patient_position": volume.patient_position,
        "orientation": report.orientation,
        "instances_received": volume.received,
        "frames_decoded": volume.decoded,
        "missing_slices": report.missing_slices,
        "tilt_degrees": round(report.tilt_degrees, 3),
        "resampled": report.resampled,
        **_grid(volume.image),
    }


def _grid(image: sitk.Image) -> dict[str, Any]:
    return {
        "size": list(image.GetSize()),
        "spacing_mm": [round(s, 4) for s in image.GetSpacing()],
        "origin_mm": [round(o, 3) for o in image.GetOrigin()],
    }
