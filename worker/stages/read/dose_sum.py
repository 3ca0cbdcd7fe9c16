"""Choosing and combining RTDOSE instances into the one total planned dose of a case.

The high-dose prompt must come from the whole plan, not from one beam or one fraction:
a PLAN dose is preferred; BEAM doses of one plan are summed; a FRACTION dose is multiplied by the
plan's number of fractions. Several plans (re-plans, several courses) or mixed summation types
are refused with a message that says what was found, never guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import SimpleITK as sitk

from worker.errors import DoseError
from worker.stages.read.rtdose import DoseGrid
from worker.stages.read.rtplan import PlanInfo

WHOLE_PLAN_TYPES = ("PLAN", "MULTI_PLAN")
SUPPORTED_TYPES = (*WHOLE_PLAN_TYPES, "BEAM", "FRACTION")
#: Grids whose origins/spacings differ by less than this (mm) are the same grid.
GRID_TOLERANCE_MM = 1e-3


def total_dose(grids: Sequence[DoseGrid], plans: Sequence[PlanInfo] = ()) -> DoseGrid:
    """The total planned dose of a case from its RTDOSE instances.

    Parameters
    ----------
    grids: Sequence[DoseGrid]
        Every RTDOSE of the case.
    plans: Sequence[PlanInfo]
        The case's RTPLANs, used for the number of fractions of a FRACTION dose.

    Raises
    ------
    worker.errors.DoseError
        No dose, unsupported or mixed DoseSummationType, doses of several plans, BEAM doses on
        different grids, mixed units/types, or a total that is zero everywhere.
    """
    total = _combined(grids, plans)
    if not total.max_gy > 0:
        # Said here, where it is known, rather than as "no high-dose region on the follow-up"
        # after a registration that could not have changed it.
        raise DoseError(
            f"the planned dose is 0 Gy everywhere on its grid ({len(grids)} RTDOSE object(s)); "
            "there is no high-dose region to look in"
        )
    return total


def _combined(grids: Sequence[DoseGrid], plans: Sequence[PlanInfo]) -> DoseGrid:
    if not grids:
        raise DoseError("no RTDOSE in the case")
    for grid in grids:
        if grid.summation_type not in SUPPORTED_TYPES:
            raise DoseError(
                f"DoseSummationType {grid.summation_type or '(empty)'} is not supported; "
                f"expected one of {', '.join(SUPPORTED_TYPES)}"
            )
    whole = [g for g in grids if g.summation_type in WHOLE_PLAN_TYPES]
    if whole:
        return _whole_plan_dose(whole, grids)
    types = sorted({g.summation_type for g in grids})
    if types == ["BEAM"]:
        return _sum_beams(list(grids))
    if types == ["FRACTION"]:
        return _fraction_dose(list(grids), plans)
    raise DoseError(f"mixed DoseSummationType {', '.join(types)} without a PLAN dose; refusing to combine")


def _whole_plan_dose(whole: list[DoseGrid], grids: Sequence[DoseGrid]) -> DoseGrid:
    if len(whole) > 1:
        raise DoseError(
            f"{len(whole)} plan-level doses found (re-plan or several courses); "
            "send the one that applies or a MULTI_PLAN sum"
        )
    chosen = whole[0]
    others = [g for g in grids if g is not chosen]
    foreign = [g for g in others if g.referenced_plan_uid != chosen.referenced_plan_uid]
    if foreign:
        raise DoseError(
            "doses of different plans mixed with the plan dose; refusing to guess which course applies"
        )
    warnings = list(chosen.warnings)
    if others:
        warnings.append(f"PLAN dose used; {len(others)} partial dose(s) of the same plan ignored")
    return replace(chosen, warnings=warnings)


def _sum_beams(beams: list[DoseGrid]) -> DoseGrid:
    plans = {g.referenced_plan_uid for g in beams}
    if len(plans) != 1 or None in plans:
        raise DoseError("BEAM doses do not all reference one RTPLAN; refusing to sum them")
    _check_consistent(beams)
    numbers = [n for g in beams for n in g.referenced_beam_numbers]
    repeated = sorted({n for n in numbers if numbers.count(n) > 1})
    if repeated:
        # Two doses of one beam (a recalculation, a re-export) would count that beam twice.
        raise DoseError(f"several BEAM doses for beam number(s) {repeated}; refusing to sum them")
    total = sum((sitk.GetArrayFromImage(g.image) for g in beams), np.zeros(1))
    image = sitk.GetImageFromArray(np.asarray(total, dtype=np.float64))
    image.CopyInformation(beams[0].image)
    warnings = [w for g in beams for w in g.warnings]
    warnings.append(f"total dose summed from {len(beams)} BEAM doses")
    return replace(
        beams[0],
        image=image,
        summation_type="PLAN",
        warnings=warnings,
        referenced_beam_numbers=sorted(n for g in beams for n in g.referenced_beam_numbers),
    )


def _check_consistent(beams: list[DoseGrid]) -> None:
    first = beams[0]
    for other in beams[1:]:
        if (other.units, other.dose_type) != (first.units, first.dose_type):
            raise DoseError("BEAM doses differ in DoseUnits or DoseType; refusing to sum them")
        if not _same_grid(first.image, other.image):
            raise DoseError("BEAM doses lie on different grids; refusing to sum them")


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=GRID_TOLERANCE_MM)
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=GRID_TOLERANCE_MM)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    )


def _fraction_dose(fractions: list[DoseGrid], plans: Sequence[PlanInfo]) -> DoseGrid:
    if len(fractions) > 1:
        raise DoseError(f"{len(fractions)} FRACTION doses found; refusing to guess how they combine")
    grid = fractions[0]
    plan = next((p for p in plans if p.sop_instance_uid == grid.referenced_plan_uid), None)
    if plan is None or not plan.fractions:
        return replace(
            grid,
            warnings=[
                *grid.warnings,
                "FRACTION dose used as is: its RTPLAN (number of fractions) is missing, so dose "
                "values are per fraction; the high-dose region is unaffected",
            ],
        )
    image = sitk.Cast(grid.image, sitk.sitkFloat64) * float(plan.fractions)
    return replace(
        grid,
        image=image,
        summation_type="PLAN",
        warnings=[*grid.warnings, f"FRACTION dose multiplied by {plan.fractions} planned fractions"],
    )
