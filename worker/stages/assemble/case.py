"""Assemble stage: DICOM instances → one :class:`Case` per follow-up scan.

Inputs: a folder, a zip or a list of files holding one patient's planning CT, RTDOSE(s),
RTPLAN, RTSTRUCT, REG, SEG and follow-up scans, in any layout.
Output: :class:`Assembly` — the cases (sorted by follow-up date) and what was set aside.

Roles come from the rules file (:mod:`worker.stages.assemble.rules`); the links that decide
geometry are fixed: the RTDOSE must share the planning CT's FrameOfReferenceUID, and all
instances must belong to one patient.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from worker.errors import AssemblyError
from worker.stages.assemble.extent import dose_extent, image_extent
from worker.stages.assemble.index import Series, StudyIndex, index_files, referenced_images
from worker.stages.assemble.rules import RoleRules, SequenceRule, load_rules
from worker.stages.assemble.sources import ZipLimits, collect_files


@dataclass
class Case:
    """Everything one job needs about one follow-up scan of one patient."""

    patient_id: str
    task: str
    followup_kind: str
    followup: Series
    planning_ct: Series
    rtdose: list[Series]
    rtplan: list[Series] = field(default_factory=list)
    rtstruct: list[Series] = field(default_factory=list)
    reg: list[Series] = field(default_factory=list)
    seg: list[Series] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def patient_alias(self) -> str:
        """A short stable pseudonym of the patient, safe for logs and listings."""
        return patient_alias(self.patient_id)

    @property
    def same_frame_of_reference(self) -> bool:
        """Follow-up and planning CT share coordinates (no registration needed)."""
        return self.followup.first.frame_of_reference_uid == self.planning_ct.first.frame_of_reference_uid


def patient_alias(patient_id: str) -> str:
    """The patient's pseudonym (the DICOM node files by the same formula)."""
    return "pt-" + hashlib.sha256(patient_id.encode()).hexdigest()[:10]


@dataclass
class Assembly:
    """The cases found in a set of files and what was set aside."""

    cases: list[Case]
    ignored: list[str] = field(default_factory=list)
    not_dicom: int = 0


def assemble_cases(
    source: Path | Sequence[Path],
    workdir: Path,
    rules: RoleRules | None = None,
    zip_limits: ZipLimits | None = None,
) -> Assembly:
    """Find the cases in ``source``.

    Parameters
    ----------
    source: pathlib.Path or Sequence[pathlib.Path]
        A folder, a zip archive, a file, or a list of these.
    workdir: pathlib.Path
        Scratch folder for unpacked archives; it must outlive the returned cases.
    rules: RoleRules, optional
        Role rules; the packaged defaults when omitted.

    Raises
    ------
    worker.errors.InputError
        No DICOM found, several patients, no usable dose or planning CT, or no follow-up.
    """
    index = index_files(collect_files(source, workdir, zip_limits))
    return assemble_index(index, rules or load_rules())


def assemble_index(index: StudyIndex, rules: RoleRules) -> Assembly:
    """Cases from an already built :class:`StudyIndex` (the DICOM node's path)."""
    if not index.series:
        raise AssemblyError(f"no DICOM instances found ({len(index.not_dicom)} other file(s) ignored)")
    patient_id = _single_patient(index)
    doses = index.of("rtdose")
    planning = _planning_ct(index, doses, rules)
    ignored: list[str] = [f"{len(index.other)} instance(s) of other SOP classes"] if index.other else []
    followups = _followups(index, planning, rules, ignored)
    cases = [
        _case(patient_id, series, rule.task, rule.kind, planning, doses, index) for series, rule in followups
    ]
    return Assembly(cases=cases, ignored=ignored, not_dicom=len(index.not_dicom))


def _single_patient(index: StudyIndex) -> str:
    patients = index.patient_ids
    if len(patients) > 1:
        raise AssemblyError(
            f"instances of {len(patients)} different patients (PatientID) were sent together; "
            "one job takes one patient"
        )
    return patients.pop()


def _planning_ct(index: StudyIndex, doses: list[Series], rules: RoleRules) -> Series:
    if not doses:
        raise AssemblyError("no RTDOSE found; the planning dose is required")
    frames = {d.first.frame_of_reference_uid for d in doses}
    if len(frames) > 1:
        raise AssemblyError(f"RTDOSE instances lie in {len(frames)} different frames of reference")
    frame = frames.pop()
    candidates = [
        s
        for s in index.of("image")
        if s.first.frame_of_reference_uid == frame
        and s.text("Modality").upper() in rules.planning_ct.modality
        and not rules.is_excluded(s)
    ]
    if not candidates:
        raise AssemblyError(
            "no planning CT shares the RTDOSE frame of reference (FrameOfReferenceUID); "
            "the dose cannot be placed on the patient"
        )
    planning = _preferred_planning(candidates, index, rules)
    _check_dose_on_planning(doses, planning)
    return planning


def _check_dose_on_planning(doses: list[Series], planning: Series) -> None:
    """Refuse a dose grid that lies wholly outside the planning CT (from headers: cheap)."""
    ct = image_extent(planning.instances)
    for dose in (d.first for d in doses):
        grid = dose_extent(dose)
        if ct is not None and grid is not None and not grid.overlaps(ct):
            raise AssemblyError(
                f"the RTDOSE grid ({grid}) lies wholly outside the planning CT ({ct}) of its frame "
                "of reference; the dose cannot be placed on the patient"
            )


def _preferred_planning(candidates: list[Series], index: StudyIndex, rules: RoleRules) -> Series:
    structured = {uid for s in index.of("rtstruct") for i in s.instances for uid in i.referenced_series}
    # Prefer the CT the structure set was drawn on, then a planning-like description, then
    # the most slices, then the earliest.
    return min(
        candidates,
        key=lambda s: (s.uid not in structured, not rules.planning_preference(s), -s.frames, s.first.date),
    )


def _followups(
    index: StudyIndex, planning: Series, rules: RoleRules, ignored: list[str]
) -> list[tuple[Series, SequenceRule]]:
    found = []
    for series in index.of("image"):
        if series is planning:
            continue
        reason = _followup_refusal(series, planning, rules)
        rule = None if reason else rules.sequence_of(series)
        if rule is None:
            ignored.append(
                f"{series.text('Modality')} series '{series.text('SeriesDescription')}': "
                f"{reason or 'no sequence rule matched'}"
            )
            continue
        found.append((series, rule))
    if not found:
        raise AssemblyError(
            "no follow-up scan found: no CT or MR series besides the planning CT matches the role rules"
        )
    return sorted(found, key=lambda item: item[0].first.date)


def _followup_refusal(series: Series, planning: Series, rules: RoleRules) -> str | None:
    if rules.is_excluded(series):
        return "excluded (localizer/scout)"
    if series.text("Modality").upper() not in rules.followup.modality:
        return "modality not used for follow-up"
    if series.frames < rules.followup.min_frames:
        return f"only {series.frames} slice(s)"
    before = series.first.date and planning.first.date and series.first.date < planning.first.date
    if rules.followup.not_before_planning and before:
        return "acquired before the planning CT"
    return None


def _case(
    patient_id: str,
    followup: Series,
    task: str,
    kind: str,
    planning: Series,
    doses: list[Series],
    index: StudyIndex,
) -> Case:
    planning_frame = planning.first.frame_of_reference_uid
    followup_frame = followup.first.frame_of_reference_uid
    case = Case(
        patient_id=patient_id,
        task=task,
        followup_kind=kind,
        followup=followup,
        planning_ct=planning,
        rtdose=doses,
        rtplan=_plans(index, planning_frame, doses),
        rtstruct=[
            s
            for s in index.of("rtstruct")
            if {planning_frame, followup_frame} & set(s.first.referenced_frames_of_reference)
        ],
        reg=[
            s
            for s in index.of("reg")
            if {planning_frame, followup_frame} <= set(s.first.referenced_frames_of_reference)
        ],
        seg=[s for s in index.of("seg") if followup.uid in s.first.referenced_series],
    )
    _link_warnings(case)
    return case


def _plans(index: StudyIndex, planning_frame: str, doses: list[Series]) -> list[Series]:
    # The Frame of Reference module is optional in an RTPLAN, so a dose's reference counts too.
    referenced = {d.first.referenced_plan for d in doses}
    return [
        s
        for s in index.of("rtplan")
        if s.first.frame_of_reference_uid == planning_frame or s.first.sop_instance_uid in referenced
    ]


def _link_warnings(case: Case) -> None:
    plan_uids = {i.sop_instance_uid for s in case.rtplan for i in s.instances}
    for dose in case.rtdose:
        referenced = dose.first.referenced_plan
        if referenced and referenced not in plan_uids:
            case.warnings.append("an RTDOSE references an RTPLAN that was not sent")
    if not case.rtplan:
        case.warnings.append("no RTPLAN: prescription and fractions unknown")
    for role, series in (("planning CT", case.planning_ct), ("follow-up", case.followup)):
        _missing_image_warning(case, role, series)


def _missing_image_warning(case: Case, role: str, series: Series) -> None:
    present = {i.sop_instance_uid for i in series.instances}
    for structure_set in case.rtstruct:
        listed = referenced_images(structure_set.first.header, series.uid)
        missing = listed - present
        if missing:
            case.warnings.append(
                f"{role}: {len(missing)} of {len(listed)} images listed by the RTSTRUCT are "
                "missing (slices not sent)"
            )
