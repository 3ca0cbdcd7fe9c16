"""Finding what an audit has to do in a folder tree: patients, their cases, one item per follow-up.

The archive may be laid out any way. A first pass reads only the PatientID of every file to
group them by patient; then each patient's files are indexed and assembled on their own (the
same rules as a job), so memory grows with the largest patient, not with the archive. A patient
that does not assemble (no RTDOSE, say) becomes one failed item; a damaged file fails the
follow-ups whose series it belongs to, and the rest of the archive goes on.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from worker.errors import AssemblyError, DicomReadError, InputError
from worker.stages.assemble.case import Case, assemble_index, patient_alias
from worker.stages.assemble.index import Series, index_files
from worker.stages.assemble.rules import RoleRules
from worker.stages.clinical import CASE_FILE, read_case_file

_DAYS_PER_MONTH = 30.44


@dataclass(frozen=True)
class Problem:
    """Why an item fails before any stage runs."""

    stage: str
    code: str
    message: str


@dataclass(frozen=True)
class AuditItem:
    """One follow-up scan to audit, or a patient whose files make no case at all."""

    patient_id: str
    files: tuple[Path, ...]
    task: str | None = None
    followup_series_uid: str | None = None
    followup_date: str | None = None
    followup_modality: str | None = None
    planning_date: str | None = None
    months_since_rt: float | None = None
    rt_reference: str | None = None
    case_file: Path | None = None
    #: Set when the item is known to fail (the row says why; the pipeline does not run).
    problem: Problem | None = None

    @property
    def patient_alias(self) -> str:
        return patient_alias(self.patient_id)


@dataclass
class Discovery:
    """Every item of an archive, plus what could not be placed with any patient."""

    items: list[AuditItem] = field(default_factory=list)
    patients: int = 0
    not_dicom: int = 0
    #: Damaged DICOM files whose PatientID cannot be read (relative paths and reasons).
    unplaced: list[tuple[str, str]] = field(default_factory=list)


def discover(
    source: Path,
    rules: RoleRules,
    *,
    exclude: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Discovery:
    """The audit items of every patient under ``source``.

    ``exclude`` is a folder to leave out (the audit's own output folder, when it lies inside
    the archive).

    Raises
    ------
    worker.errors.InputError
        ``source`` is not a folder or holds no DICOM at all.
    """
    if not source.is_dir():
        raise InputError(f"{source}: not a folder")
    found = Discovery()
    by_patient, case_files = _group_by_patient(source, exclude, found)
    if not by_patient:
        raise InputError(f"{source}: no DICOM files found ({found.not_dicom} other file(s))")
    found.patients = len(by_patient)
    folders = {patient: _common_folder(paths) for patient, paths in by_patient.items()}
    for patient_id in sorted(by_patient):
        if progress:
            progress(patient_alias(patient_id))
        case_file = _case_file_for(patient_id, folders, case_files)
        found.items += patient_items(patient_id, by_patient[patient_id], rules, case_file)
    return found


def _walk(source: Path, exclude: Path | None) -> Iterator[Path]:
    skip = exclude.resolve() if exclude else None
    for folder, subfolders, names in os.walk(source):
        here = Path(folder)
        # Sorted and pruned in place: a stable order, and never the audit's own output.
        subfolders[:] = sorted(
            d for d in subfolders if not d.startswith(".") and (skip is None or (here / d).resolve() != skip)
        )
        for name in sorted(names):
            if not name.startswith("."):
                yield here / name


def _group_by_patient(
    source: Path, exclude: Path | None, found: Discovery
) -> tuple[dict[str, list[Path]], list[Path]]:
    by_patient: dict[str, list[Path]] = defaultdict(list)
    case_files: list[Path] = []
    for path in _walk(source, exclude):
        if path.name == CASE_FILE:
            case_files.append(path)
            continue
        patient = _patient_of(path)
        if patient is None:
            if _has_dicom_magic(path):
                found.unplaced.append((str(path.relative_to(source)), "damaged DICOM file: no PatientID"))
            else:
                found.not_dicom += 1
            continue
        by_patient[patient].append(path)
    return by_patient, case_files


def _patient_of(path: Path) -> str | None:
    """The PatientID of a DICOM file (None for anything else); reads only the first elements."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "SOPClassUID"])
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
        return None
    if "SOPClassUID" not in ds:
        return None
    return str(ds.get("PatientID", "") or "")


def _has_dicom_magic(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _common_folder(paths: list[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


def _holds(folder: Path, inner: Path) -> bool:
    return inner == folder or folder in inner.parents


def _case_file_for(patient_id: str, folders: dict[str, Path], case_files: list[Path]) -> Path | None:
    """The deepest ``case.json`` whose folder holds all of this patient's files and no other
    patient's (a patient folder's; one at the top of a whole archive is nobody's)."""
    mine = folders[patient_id]
    owners = [
        c
        for c in case_files
        if _holds(c.parent, mine)
        and not any(_holds(c.parent, theirs) for other, theirs in folders.items() if other != patient_id)
    ]
    return max(owners, key=lambda c: len(c.parts)) if owners else None


def patient_items(
    patient_id: str, paths: list[Path], rules: RoleRules, case_file: Path | None
) -> list[AuditItem]:
    """One item per follow-up of one patient; one failed item when the patient makes no case."""
    damaged: dict[Path, str] = {}

    def set_aside(path: Path, error: DicomReadError) -> None:
        damaged[path] = error.message

    index = index_files(paths, on_error=set_aside)
    try:
        assembly = assemble_index(index, rules) if index.series else None
    except AssemblyError as error:
        return [AuditItem(patient_id, tuple(paths), problem=Problem("assemble", error.code, error.message))]
    if assembly is None:
        reason = "every DICOM file of this patient is damaged: " + _first(damaged)
        return [AuditItem(patient_id, tuple(paths), problem=Problem("read", "truncated-file", reason))]
    treatment_end = _treatment_end(case_file)
    damaged_series = {_series_of(path): reason for path, reason in damaged.items()}
    return [_item(patient_id, case, case_file, treatment_end, damaged_series) for case in assembly.cases]


def _item(
    patient_id: str,
    case: Case,
    case_file: Path | None,
    treatment_end: dt.date | None,
    damaged_series: dict[str | None, str],
) -> AuditItem:
    series = [case.followup, case.planning_ct, *case.rtdose, *case.rtplan, *case.rtstruct, *case.reg]
    files = tuple(path for s in series for path in s.files)
    followup_date = _iso(case.followup.first.date)
    planning_date = _iso(case.planning_ct.first.date)
    months, reference = _months_since_rt(followup_date, treatment_end, planning_date)
    return AuditItem(
        patient_id=patient_id,
        files=files,
        task=case.task,
        followup_series_uid=case.followup.uid,
        followup_date=followup_date,
        followup_modality=case.followup.text("Modality") or None,
        planning_date=planning_date,
        months_since_rt=months,
        rt_reference=reference,
        case_file=case_file,
        problem=_damage_problem(series, damaged_series),
    )


def _damage_problem(series: list[Series], damaged_series: dict[str | None, str]) -> Problem | None:
    if not damaged_series:
        return None
    # A damaged file that cannot even name its series might belong to any of them.
    hit = damaged_series.get(None) or next(
        (damaged_series[s.uid] for s in series if s.uid in damaged_series), None
    )
    if hit is None:
        return None
    return Problem("read", "truncated-file", f"a file of this case is damaged ({hit}); nothing was run on it")


def _series_of(path: Path) -> str | None:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["SeriesInstanceUID"])
        return str(ds.SeriesInstanceUID)
    except Exception:  # a file that broken belongs to no series we can name
        return None


def _first(damaged: dict[Path, str]) -> str:
    return next(iter(damaged.values()), "unreadable")


def _iso(value: str) -> str | None:
    try:
        return dt.datetime.strptime(value[:8], "%Y%m%d").date().isoformat()
    except ValueError:
        return None


def _treatment_end(case_file: Path | None) -> dt.date | None:
    if case_file is None:
        return None
    try:
        content = read_case_file(case_file.parent) or {}
    except InputError:
        return None  # the job itself reports a broken case.json
    value = (content.get("clinical") or {}).get("treatment_end_date")
    try:
        return dt.date.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def _months_since_rt(
    followup: str | None, treatment_end: dt.date | None, planning: str | None
) -> tuple[float | None, str | None]:
    """Months from the end of treatment when a case.json states it, else from the planning CT."""
    if followup is None:
        return None, None
    start, reference = (treatment_end, "treatment end") if treatment_end else (None, None)
    if start is None and planning:
        start, reference = dt.date.fromisoformat(planning), "planning CT"
    if start is None:
        return None, None
    days = (dt.date.fromisoformat(followup) - start).days
    return max(0.0, round(days / _DAYS_PER_MONTH, 1)), reference
