"""A JSON-ready description of assembled and read cases (``rtinjury inspect``, job records)."""

from __future__ import annotations

from typing import Any

import SimpleITK as sitk

from worker.stages.assemble.case import Assembly, Case
from worker.stages.assemble.index import Series
from worker.stages.read.case_data import CaseData
from worker.stages.read.series import ImageVolume


def describe_assembly(assembly: Assembly, data: list[CaseData]) -> dict[str, Any]:
    """Every case with its roles, geometry, dose and warnings."""
    return {
        "cases": [describe_case(c, d) for c, d in zip(assembly.cases, data, strict=True)],
        "ignored": assembly.ignored,
        "not_dicom_files": assembly.not_dicom,
    }


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
