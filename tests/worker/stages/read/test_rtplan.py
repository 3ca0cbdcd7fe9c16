"""RTPLAN facts: prescription (TargetPrescriptionDose, else beam doses x fractions), fractions, label."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.conftest import SHARED_DATA
from tests.factories import SeriesSpec, axial_positions, uid, write_rtplan, write_series
from worker.errors import InputError
from worker.stages.read.rtplan import read_rtplan


def test_prescription_from_target_prescription_dose(tmp_path: Path) -> None:
    plan = read_rtplan(
        write_rtplan(tmp_path / "plan.dcm", sop_uid=uid("p"), prescription_gy=60.0, fractions=30)
    )
    assert plan.prescription_gy == 60.0
    assert plan.prescription_source == "TargetPrescriptionDose"
    assert plan.fractions == 30
    assert (plan.sop_instance_uid, plan.label, plan.date, plan.approval_status) == (
        uid("p"),
        "TESTPLAN",
        "20231201",
        "APPROVED",
    )
    assert plan.referenced_structure_set_uid is None


def test_largest_target_prescription_wins_and_organ_references_are_ignored(tmp_path: Path) -> None:
    path = write_rtplan(tmp_path / "plan.dcm", sop_uid=uid("p"), prescription_gy=50.0)
    ds = pydicom.dcmread(path)
    boost = pydicom.Dataset()
    boost.DoseReferenceNumber, boost.DoseReferenceStructureType = 2, "SITE"
    boost.DoseReferenceType, boost.TargetPrescriptionDose = "TARGET", 66.0
    organ = pydicom.Dataset()
    organ.DoseReferenceNumber, organ.DoseReferenceStructureType = 3, "SITE"
    organ.DoseReferenceType, organ.TargetPrescriptionDose = "ORGAN_AT_RISK", 80.0
    ds.DoseReferenceSequence.extend([boost, organ])
    ds.save_as(path)
    assert read_rtplan(path).prescription_gy == 66.0


def test_prescription_falls_back_to_beam_doses_times_fractions(tmp_path: Path) -> None:
    path = write_rtplan(
        tmp_path / "plan.dcm", sop_uid=uid("p"), prescription_gy=None, fractions=25, beam_doses=(0.8, 1.2)
    )
    plan = read_rtplan(path)
    assert plan.prescription_gy == pytest.approx(50.0)
    assert plan.prescription_source == "BeamDose x NumberOfFractionsPlanned"


def test_no_prescription_at_all(tmp_path: Path) -> None:
    plan = read_rtplan(
        write_rtplan(tmp_path / "plan.dcm", sop_uid=uid("p"), prescription_gy=None, fractions=5)
    )
    assert (plan.prescription_gy, plan.prescription_source, plan.fractions) == (None, "none", 5)


def test_missing_fraction_groups(tmp_path: Path) -> None:
    path = write_rtplan(tmp_path / "plan.dcm", sop_uid=uid("p"), prescription_gy=None, beam_doses=(2.0,))
    ds = pydicom.dcmread(path)
    del ds.FractionGroupSequence
    ds.save_as(path)
    plan = read_rtplan(path)
    assert (plan.fractions, plan.prescription_gy) == (None, None)


def test_an_image_is_not_a_plan(tmp_path: Path) -> None:
    path = write_series(SeriesSpec(positions=axial_positions(1)), tmp_path)[0]
    with pytest.raises(InputError, match=r"series-000\.dcm: not an RT Plan"):
        read_rtplan(path)


def test_dicompyler_plan() -> None:
    plan = read_rtplan(SHARED_DATA / "dicompyler-breast/rtplan.dcm")
    assert plan.label == "B1"
    assert plan.prescription_gy == pytest.approx(14.0)
    assert plan.prescription_source == "TargetPrescriptionDose"
    assert plan.fractions == 7
    assert plan.frame_of_reference_uid == "2.16.840.1.113662.2.12.0.3057.1241703565.36"
    rtss = pydicom.dcmread(SHARED_DATA / "dicompyler-breast/rtss.dcm", stop_before_pixels=True)
    assert plan.referenced_structure_set_uid == rtss.SOPInstanceUID
