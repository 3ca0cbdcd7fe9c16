"""Read stage at case level: every object of an assembled case read into patient space."""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.stages.assemble.case import Case
from worker.stages.read.dose_sum import total_dose
from worker.stages.read.geometry import GeometryPolicy
from worker.stages.read.rtdose import DoseGrid, read_rtdose
from worker.stages.read.rtplan import PlanInfo, read_rtplan
from worker.stages.read.series import ImageVolume, read_image_series


@dataclass
class CaseData:
    """A case's images, total dose and plan, read and checked."""

    followup: ImageVolume
    planning_ct: ImageVolume
    dose: DoseGrid
    plans: list[PlanInfo]
    warnings: list[str] = field(default_factory=list)

    @property
    def prescription_gy(self) -> float | None:
        return next((p.prescription_gy for p in self.plans if p.prescription_gy), None)


def read_case(case: Case, policy: GeometryPolicy | None = None) -> CaseData:
    """Read the follow-up, the planning CT, the plans and the total planned dose of ``case``.

    Raises
    ------
    worker.errors.InputError
        Any object that cannot be read (see the individual readers).
    """
    plans = [read_rtplan(i.path) for s in case.rtplan for i in s.instances]
    prescription = next((p.prescription_gy for p in plans if p.prescription_gy), None)
    grids = [
        read_rtdose(i.path, prescription_gy=prescription, policy=policy)
        for s in case.rtdose
        for i in s.instances
    ]
    dose = total_dose(grids, plans)
    followup = read_image_series(case.followup.files, policy)
    planning = read_image_series(case.planning_ct.files, policy)
    warnings = [
        *case.warnings,
        *(f"follow-up: {w}" for w in followup.warnings),
        *(f"planning CT: {w}" for w in planning.warnings),
        *(f"dose: {w}" for w in dose.warnings),
    ]
    return CaseData(followup, planning, dose, plans, warnings)
