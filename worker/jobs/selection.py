"""Which case of a job's inputs the job is about: one follow-up series of one patient.

The API calls :func:`select_case` before it queues a job (so a missing dose or a second patient
is a 422, not a failed job), and every stage calls it again to find its series: assembly is
deterministic and takes well under a second for a study.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from worker.errors import AssemblyError
from worker.jobs.folder import JobFolder
from worker.jobs.spec import JobSpec
from worker.stages.assemble.case import Case, assemble_cases
from worker.stages.assemble.rules import load_rules
from worker.stages.clinical import CASE_FILE


@dataclass
class SelectedCase:
    case: Case
    #: What assembly set aside (other SOP classes, non-DICOM files), said to the user as warnings.
    notes: list[str] = field(default_factory=list)

    @property
    def summary(self) -> dict[str, object]:
        """What the API may show: no patient identifiers, only the alias."""
        case = self.case
        return {
            "patient_alias": case.patient_alias,
            "task": case.task,
            "followup_modality": case.followup.text("Modality"),
            "followup_instances": len(case.followup.instances),
            "planning_ct_instances": len(case.planning_ct.instances),
            "rtdose_objects": sum(len(s.instances) for s in case.rtdose),
        }


def case_files(folder: JobFolder) -> list[Path]:
    """The ``case.json`` files among the inputs (a zip may put one a folder down), shallowest first."""
    if not folder.inputs.is_dir():
        return []
    return sorted(folder.inputs.rglob(CASE_FILE), key=lambda path: (len(path.parts), path))


def select_case(folder: JobFolder, spec: JobSpec, rules_path: Path | None = None) -> SelectedCase:
    """The one case of ``folder``'s inputs that ``spec`` names.

    Raises
    ------
    worker.errors.InputError
        The inputs do not make a case (see assembly), or not exactly one follow-up matches.
    """
    assembly = assemble_cases(folder.inputs, folder.work / "unpacked", load_rules(rules_path))
    candidates = assembly.cases
    if spec.followup_series_uid:
        candidates = [c for c in candidates if c.followup.uid == spec.followup_series_uid]
        if not candidates:
            raise AssemblyError("no follow-up series has the requested followup_series_uid")
    if spec.task:
        matching = [c for c in candidates if c.task == spec.task]
        if not matching:
            found = ", ".join(sorted({f"{c.task} ({c.followup_kind})" for c in candidates})) or "none"
            raise AssemblyError(
                f"no follow-up series suits task {spec.task!r}; the follow-ups found suit: {found}"
            )
        candidates = matching
    if not candidates:
        raise AssemblyError("no follow-up scan found besides the planning CT")
    if len(candidates) > 1:
        raise AssemblyError(
            f"{len(candidates)} follow-up series match; name one with followup_series_uid "
            "(or send one follow-up per job)"
        )
    notes = list(assembly.ignored)
    # A case.json among the files holds clinical fields (read by the prepare stage), not images.
    not_dicom = assembly.not_dicom - len(case_files(folder))
    if not_dicom > 0:
        notes.append(f"{not_dicom} file(s) that are not DICOM were ignored")
    return SelectedCase(candidates[0], notes)
