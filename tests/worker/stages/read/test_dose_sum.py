"""Choosing and combining RTDOSE instances into the total planned dose of a case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.factories import DoseSpec, dose_field, uid, write_rtdose, write_rtplan
from worker.errors import DoseError
from worker.stages.read.dose_sum import total_dose
from worker.stages.read.rtdose import DoseGrid, read_rtdose
from worker.stages.read.rtplan import read_rtplan

PLAN = uid("plan", "A")
OTHER_PLAN = uid("plan", "B")


def _grid(tmp_path: Path, name: str, **spec) -> DoseGrid:
    return read_rtdose(write_rtdose(DoseSpec(name=name, **spec), tmp_path / f"{name}.dcm"))


def _array(grid: DoseGrid) -> np.ndarray:
    return sitk.GetArrayFromImage(grid.image)


def _beam_field(weight: float):
    return lambda p: weight * dose_field(p)


def test_plan_dose_alone_is_the_total(tmp_path: Path) -> None:
    plan = _grid(tmp_path, "plan", plan_uid=PLAN)
    total = total_dose([plan])
    assert total.sop_instance_uid == plan.sop_instance_uid
    np.testing.assert_array_equal(_array(total), _array(plan))
    assert total.warnings == []


def test_plan_dose_is_preferred_over_beams_of_the_same_plan(tmp_path: Path) -> None:
    plan = _grid(tmp_path, "plan", plan_uid=PLAN)
    beam = _grid(tmp_path, "beam", summation_type="BEAM", plan_uid=PLAN, beam_numbers=(1,))
    total = total_dose([beam, plan])
    assert total.sop_instance_uid == plan.sop_instance_uid
    assert "PLAN dose used; 1 partial dose(s) of the same plan ignored" in total.warnings
    np.testing.assert_array_equal(_array(total), _array(plan))


def test_plan_dose_with_doses_of_another_plan_is_refused(tmp_path: Path) -> None:
    plan = _grid(tmp_path, "plan", plan_uid=PLAN)
    beam = _grid(tmp_path, "beam", summation_type="BEAM", plan_uid=OTHER_PLAN, beam_numbers=(1,))
    with pytest.raises(DoseError, match="doses of different plans"):
        total_dose([plan, beam])


def test_two_plan_doses_are_refused(tmp_path: Path) -> None:
    first = _grid(tmp_path, "first", plan_uid=PLAN)
    second = _grid(tmp_path, "second", plan_uid=OTHER_PLAN)
    with pytest.raises(DoseError, match="2 plan-level doses found"):
        total_dose([first, second])


def test_three_beam_doses_of_one_plan_are_summed_exactly(tmp_path: Path) -> None:
    beams = [
        _grid(
            tmp_path,
            f"beam{n}",
            summation_type="BEAM",
            plan_uid=PLAN,
            beam_numbers=(n,),
            field_gy=_beam_field(w),
        )
        for n, w in ((3, 0.2), (1, 0.5), (2, 0.3))
    ]
    total = total_dose(beams)
    assert total.summation_type == "PLAN"
    assert total.referenced_beam_numbers == [1, 2, 3]
    assert total.referenced_plan_uid == PLAN
    assert "total dose summed from 3 BEAM doses" in total.warnings
    np.testing.assert_array_equal(_array(total), _array(beams[0]) + _array(beams[1]) + _array(beams[2]))
    # The weights add up to one, so the sum is the full field (to the stored quantisation).
    index = (2, 3, 4)
    point = np.array(total.image.TransformIndexToPhysicalPoint(index))
    assert total.image.GetPixel(index) == pytest.approx(float(dose_field(point)), abs=3e-4)
    for getter in ("GetOrigin", "GetSpacing", "GetDirection"):
        assert getattr(total.image, getter)() == getattr(beams[0].image, getter)()


def test_two_doses_of_the_same_beam_are_not_summed(tmp_path: Path) -> None:
    a = _grid(tmp_path, "a", summation_type="BEAM", plan_uid=PLAN, beam_numbers=(1,))
    b = _grid(tmp_path, "b", summation_type="BEAM", plan_uid=PLAN, beam_numbers=(2,))
    again = _grid(tmp_path, "again", summation_type="BEAM", plan_uid=PLAN, beam_numbers=(1,))
    with pytest.raises(DoseError, match=r"several BEAM doses for beam number\(s\) \[1\]"):
        total_dose([a, b, again])


def test_beam_doses_of_different_plans_are_refused(tmp_path: Path) -> None:
    a = _grid(tmp_path, "a", summation_type="BEAM", plan_uid=PLAN, beam_numbers=(1,))
    b = _grid(tmp_path, "b", summation_type="BEAM", plan_uid=OTHER_PLAN, beam_numbers=(1,))
    with pytest.raises(DoseError, match="do not all reference one RTPLAN"):
        total_dose([a, b])


def test_beam_doses_without_a_plan_reference_are_refused(tmp_path: Path) -> None:
    a = _grid(tmp_path, "a", summation_type="BEAM")
    b = _grid(tmp_path, "b", summation_type="BEAM")
    with pytest.raises(DoseError, match="do not all reference one RTPLAN"):
        total_dose([a, b])


@pytest.mark.parametrize(
    "other",
    [
        {"origin": (-17.0, -16.0, -10.0)},
        {"pixel_spacing": (2.5, 2.5)},
        {"rows": 9},
        {"offsets": (0, 3, 6, 9)},
    ],
    ids=["origin", "spacing", "size", "frames"],
)
def test_beam_doses_on_different_grids_are_refused(tmp_path: Path, other: dict) -> None:
    a = _grid(tmp_path, "a", summation_type="BEAM", plan_uid=PLAN, beam_numbers=(1,))
    b = _grid(tmp_path, "b", summation_type="BEAM", plan_uid=PLAN, beam_numbers=(2,), **other)
    with pytest.raises(DoseError, match="different grids"):
        total_dose([a, b])


def test_beam_doses_with_different_types_are_refused(tmp_path: Path) -> None:
    a = _grid(tmp_path, "a", summation_type="BEAM", plan_uid=PLAN, beam_numbers=(1,))
    b = _grid(tmp_path, "b", summation_type="BEAM", plan_uid=PLAN, beam_numbers=(2,), dose_type="EFFECTIVE")
    with pytest.raises(DoseError, match="differ in DoseUnits or DoseType"):
        total_dose([a, b])


def test_fraction_dose_is_multiplied_by_the_planned_fractions(tmp_path: Path) -> None:
    plan = read_rtplan(write_rtplan(tmp_path / "plan.dcm", sop_uid=PLAN, prescription_gy=60.0, fractions=30))
    fraction = _grid(tmp_path, "fraction", summation_type="FRACTION", plan_uid=PLAN)
    total = total_dose([fraction], [plan])
    assert total.summation_type == "PLAN"
    assert "FRACTION dose multiplied by 30 planned fractions" in total.warnings
    np.testing.assert_allclose(_array(total), 30.0 * _array(fraction), rtol=1e-12)


def test_fraction_dose_without_its_plan_stays_per_fraction(tmp_path: Path) -> None:
    unrelated = read_rtplan(write_rtplan(tmp_path / "plan.dcm", sop_uid=OTHER_PLAN, fractions=30))
    fraction = _grid(tmp_path, "fraction", summation_type="FRACTION", plan_uid=PLAN)
    total = total_dose([fraction], [unrelated])
    assert total.summation_type == "FRACTION"
    assert any("values are per fraction" in w for w in total.warnings)
    np.testing.assert_array_equal(_array(total), _array(fraction))


def test_fraction_and_beam_doses_are_not_mixed(tmp_path: Path) -> None:
    fraction = _grid(tmp_path, "fraction", summation_type="FRACTION", plan_uid=PLAN)
    beam = _grid(tmp_path, "beam", summation_type="BEAM", plan_uid=PLAN, beam_numbers=(1,))
    with pytest.raises(DoseError, match="mixed DoseSummationType BEAM, FRACTION without a PLAN dose"):
        total_dose([fraction, beam])


def test_two_fraction_doses_are_refused(tmp_path: Path) -> None:
    a = _grid(tmp_path, "a", summation_type="FRACTION", plan_uid=PLAN)
    b = _grid(tmp_path, "b", summation_type="FRACTION", plan_uid=PLAN)
    with pytest.raises(DoseError, match="2 FRACTION doses found"):
        total_dose([a, b])


@pytest.mark.parametrize("summation", ["BRACHY", "CONTROL_POINT", "RECORD"])
def test_unsupported_summation_types_are_refused(tmp_path: Path, summation: str) -> None:
    grid = _grid(tmp_path, "dose", summation_type=summation, plan_uid=PLAN)
    with pytest.raises(DoseError, match=f"DoseSummationType {summation} is not supported"):
        total_dose([grid])


def test_no_dose_is_refused() -> None:
    with pytest.raises(DoseError, match="no RTDOSE in the case"):
        total_dose([])


def test_a_dose_of_zero_everywhere_is_refused_where_it_is_read(tmp_path: Path) -> None:
    # Said by the read stage, not later as "no high-dose region on the follow-up".
    beams = [
        _grid(
            tmp_path, f"b{n}", summation_type="BEAM", plan_uid=PLAN, beam_numbers=[n], field_gy=_beam_field(0)
        )
        for n in (1, 2)
    ]
    with pytest.raises(DoseError, match=r"0 Gy everywhere on its grid \(2 RTDOSE object\(s\)\)"):
        total_dose(beams)
