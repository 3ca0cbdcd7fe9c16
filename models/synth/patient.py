"""Write one synthetic patient: planning study, follow-up studies, ground truth, case.json.

Folder layout (``<task>-<index>/``)::

    case.json
    planning/ct/0001.dcm …          planning CT, frame of reference A
    planning/rtplan.dcm
    planning/rtdose.dcm             frame A, references the RT Plan
    followup-1/ct/0001.dcm …        (mr/ for CE and CRN) own study and frame
    ground_truth/followup-1_seg.dcm DICOM-SEG on followup-1
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from .casefile import build_case_json
from .ct import write_ct_series
from .dicom_common import SeriesInfo, StudyInfo, make_uid
from .dose import dose_grid
from .geometry import Grid
from .mr import FLAIR, T1_POST, write_mr_series
from .params import DOSE_SPACING_MM, CaseParams
from .render import render_followup, render_planning_ct
from .rtdose import write_rtdose
from .rtplan import PlanInfo, write_rtplan
from .seg import SERIES_DESCRIPTION, write_seg
from .shapes import vec3

_MR_PROTOCOL = {"ce": FLAIR, "crn": T1_POST}
_CT_FOLLOWUP_DESCRIPTION = "AX HEAD NECK CT"


@dataclass(frozen=True)
class PlanningRecord:
    """Identifiers and results of the planning study."""

    study_uid: str
    frame_of_reference_uid: str
    ct_series_uid: str
    rtplan_uid: str
    rtdose_uid: str
    dose_grid: Grid
    max_dose_gy: float


@dataclass(frozen=True)
class FollowupRecord:
    """Identifiers and ground-truth measurements of one follow-up."""

    name: str
    study: StudyInfo
    series: SeriesInfo
    modality: str
    image_dir: str
    seg_file: str
    seg_series_uid: str
    seg_uid: str
    volume_cc: float
    centroid_mm: tuple[float, float, float]


def _accession(p: CaseParams, study: str) -> str:
    # SH, at most 16 characters: a fake accession derived from the case key.
    return "SYN" + make_uid(p.key, study, "accession")[-10:]


def _plan_info(p: CaseParams) -> PlanInfo:
    label = f"{p.task.upper()}_{p.site[:4].upper()}_1"
    half = np.round(1.1 * p.dose_model.target_semi[:2])
    return PlanInfo(label, p.prescription_gy, p.fractions, p.dose_model.target_centre, half, p.site)


def _series(
    p: CaseParams, role: str, number: int, text: str, day: dt.date, time: str, for_uid: str
) -> SeriesInfo:
    return SeriesInfo(make_uid(p.key, role, "series"), number, text, day, time, for_uid)


def _planning_study(p: CaseParams) -> StudyInfo:
    uid = make_uid(p.key, "planning", "study")
    accession = _accession(p, "planning")
    return StudyInfo(uid, p.planning_date, p.planning_time, "PLAN", accession, "RT planning")


def _write_dose(
    p: CaseParams, study: StudyInfo, for_uid: str, plan_uid: str, folder: Path
) -> tuple[str, Grid, float]:
    grid = dose_grid(p.dose_model, p.planning_grid, DOSE_SPACING_MM[p.size])
    dose_uid = make_uid(p.key, "rtdose", "sop")
    series = _series(p, "rtdose", 3, "RT Dose (plan)", p.plan_date, "120500", for_uid)
    dose_gy = p.dose_model.on_grid(grid)
    args = (plan_uid, dose_uid, p.patient, study, series, folder / "rtdose.dcm")
    _, max_dose = write_rtdose(dose_gy, grid, *args)
    return dose_uid, grid, max_dose


def write_planning(p: CaseParams, folder: Path) -> PlanningRecord:
    """Planning CT, RT Plan and RT Dose: one study on frame of reference A."""
    study = _planning_study(p)
    for_uid = make_uid(p.key, "planning", "frame-of-reference")
    ct = _series(p, "planning-ct", 1, "Planning CT", p.planning_date, p.planning_time, for_uid)
    hu = render_planning_ct(p.planning_grid, p.rng("planning-ct"))
    write_ct_series(hu, p.planning_grid, p.patient, study, ct, folder / "ct")

    plan_uid = make_uid(p.key, "rtplan", "sop")
    plan = _series(p, "rtplan", 2, "RT Plan", p.plan_date, "120000", for_uid)
    write_rtplan(_plan_info(p), plan_uid, p.patient, study, plan, folder / "rtplan.dcm")

    dose_uid, grid, max_dose = _write_dose(p, study, for_uid, plan_uid, folder)
    return PlanningRecord(study.uid, for_uid, ct.uid, plan_uid, dose_uid, grid, max_dose)


def _mask_stats(mask: np.ndarray, grid: Grid) -> tuple[float, tuple[float, float, float]]:
    """Volume (cc) and centroid (patient mm) of a mask on ``grid``."""
    index = np.argwhere(mask)
    if len(index) == 0:
        raise RuntimeError("the ground-truth lesion is empty on the follow-up grid")
    centroid = grid.index_to_patient(index).mean(axis=0)
    return len(index) * grid.voxel_volume_mm3 / 1000.0, vec3(centroid)


def _write_image(
    p: CaseParams, k: int, image: np.ndarray, study: StudyInfo, series: SeriesInfo, folder: Path
) -> list[Dataset]:
    grid = p.followups[k].grid
    if p.task == "orn":
        return write_ct_series(image, grid, p.patient, study, series, folder)
    return write_mr_series(image, grid, _MR_PROTOCOL[p.task], p.patient, study, series, folder)


def _write_truth(
    p: CaseParams, k: int, truth: np.ndarray, sources: list[Dataset], case_dir: Path
) -> tuple[str, str, str]:
    """The SEG of follow-up ``k``; returns (relative file, series UID, SOP instance UID)."""
    name = f"followup-{k + 1}"
    # Annotated two days after the scan, on the scan's frame of reference.
    day = p.followups[k].date + dt.timedelta(days=2)
    for_uid = sources[0].FrameOfReferenceUID
    series = _series(p, f"{name}-seg", 100, SERIES_DESCRIPTION, day, "160000", for_uid)
    seg_file, seg_uid = f"ground_truth/{name}_seg.dcm", make_uid(p.key, name, "seg")
    tracking_uid = make_uid(p.key, "lesion-tracking")  # same lesion across follow-ups
    write_seg(p.task, truth, sources, series, seg_uid, tracking_uid, case_dir / seg_file)
    return seg_file, series.uid, seg_uid


def write_followup(p: CaseParams, k: int, case_dir: Path) -> FollowupRecord:
    """Follow-up ``k`` (0-based): its own study and frame, the image and the ground truth."""
    fu, name = p.followups[k], f"followup-{k + 1}"
    accession = _accession(p, name)
    study = StudyInfo(make_uid(p.key, name, "study"), fu.date, fu.time, f"FU{k + 1}", accession, "Follow-up")
    for_uid = make_uid(p.key, name, "frame-of-reference")
    text = _CT_FOLLOWUP_DESCRIPTION if p.task == "orn" else _MR_PROTOCOL[p.task].description
    series = _series(p, name, 1, text, fu.date, fu.time, for_uid)
    image, truth = render_followup(fu.grid, fu.transform, p.lesion, k, p.rng(f"{name}-image"))
    image_dir = f"{name}/{'ct' if p.task == 'orn' else 'mr'}"
    sources = _write_image(p, k, image, study, series, case_dir / image_dir)
    seg_file, seg_series_uid, seg_uid = _write_truth(p, k, truth, sources, case_dir)
    volume, centroid = _mask_stats(truth, fu.grid)
    modality = "CT" if p.task == "orn" else "MR"
    return FollowupRecord(
        name, study, series, modality, image_dir, seg_file, seg_series_uid, seg_uid, volume, centroid
    )


def write_case(p: CaseParams, case_dir: Path) -> Path:
    """Write every object of one patient and its case.json into ``case_dir``."""
    planning = write_planning(p, case_dir / "planning")
    followups = [write_followup(p, k, case_dir) for k in range(len(p.followups))]
    case = build_case_json(p, planning, followups)
    (case_dir / "case.json").write_text(json.dumps(case, indent=2) + "\n")
    return case_dir
