"""Small test patients (planning CT, RTPLAN, RTDOSE, follow-ups) built from tests.factories."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tests.factories import (
    DoseSpec,
    SeriesSpec,
    axial_positions,
    uid,
    write_rtdose,
    write_rtplan,
    write_series,
)


@dataclass
class FollowupSpec:
    """A follow-up series of a test patient."""

    modality: str = "MR"
    description: str = "AX T2 FLAIR"
    date: str = "20240301"
    contrast_agent: str | None = None
    image_type: tuple[str, ...] | None = None
    slices: int = 6


@dataclass
class PatientFiles:
    """Where the files of a test patient went and the UIDs that link them."""

    root: Path
    patient_id: str
    planning_for: str
    planning_series: str
    plan_uid: str
    followup_series: list[str] = field(default_factory=list)


def write_patient(
    root: Path,
    *,
    patient_id: str = "TEST001",
    followups: tuple[FollowupSpec, ...] = (FollowupSpec(),),
    with_plan: bool = True,
    dose_for: str | None = None,
) -> PatientFiles:
    """Write a planning CT + RTPLAN + RTDOSE (PLAN) and the given follow-ups under ``root``."""
    tag = f"{root.name}-{patient_id}"
    planning_for = uid(tag, "planning-for")
    planning = SeriesSpec(
        positions=axial_positions(8),
        patient_id=patient_id,
        frame_of_reference_uid=planning_for,
        series_instance_uid=uid(tag, "planning"),
        study_instance_uid=uid(tag, "planning-study"),
        series_description="Planning CT",
        date="20230101",
        name="planning",
    )
    write_series(planning, root / "planning")
    plan_uid = uid(tag, "plan")
    if with_plan:
        write_rtplan(
            root / "rtplan.dcm",
            sop_uid=plan_uid,
            prescription_gy=70.0,
            fractions=35,
            frame_of_reference_uid=planning_for,
            patient_id=patient_id,
        )
    write_rtdose(
        DoseSpec(
            frame_of_reference_uid=dose_for or planning_for,
            plan_uid=plan_uid,
            patient_id=patient_id,
            name=f"{tag}-dose",
        ),
        root / "rtdose.dcm",
    )
    patient = PatientFiles(root, patient_id, planning_for, planning.series_instance_uid, plan_uid)
    for number, followup in enumerate(followups):
        patient.followup_series.append(_write_followup(root, tag, patient_id, number, followup))
    return patient


def _write_followup(root: Path, tag: str, patient_id: str, number: int, spec: FollowupSpec) -> str:
    series = SeriesSpec(
        positions=axial_positions(spec.slices, origin=(-18.0, -14.0, -8.0)),
        modality=spec.modality,
        patient_id=patient_id,
        frame_of_reference_uid=uid(tag, "followup-for", number),
        series_instance_uid=uid(tag, "followup", number),
        study_instance_uid=uid(tag, "fu-study", number),
        series_description=spec.description,
        date=spec.date,
        name=f"followup{number}",
    )
    paths = write_series(series, root / f"followup{number}")
    if spec.contrast_agent is not None or spec.image_type is not None:
        _retag(paths, spec)
    return series.series_instance_uid


def _retag(paths: list[Path], spec: FollowupSpec) -> None:
    import pydicom

    for path in paths:
        ds = pydicom.dcmread(path)
        if spec.contrast_agent is not None:
            ds.ContrastBolusAgent = spec.contrast_agent
        if spec.image_type is not None:
            ds.ImageType = list(spec.image_type)
        ds.save_as(path, enforce_file_format=True)
