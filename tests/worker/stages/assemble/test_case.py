"""Assembly of a patient's instances into cases: roles, links, and refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from tests.factories import DoseSpec, SeriesSpec, axial_positions, uid, write_rtdose, write_series
from tests.patients import FollowupSpec, write_patient
from worker.errors import AssemblyError, DicomReadError
from worker.stages.assemble.case import assemble_cases
from worker.stages.read.case_data import read_case


def test_each_followup_becomes_a_case_with_its_task(tmp_path: Path) -> None:
    patient = write_patient(
        tmp_path / "p",
        followups=(
            FollowupSpec("CT", "Head neck follow-up", "20240601"),
            FollowupSpec("MR", "AX T2 FLAIR", "20240301"),
        ),
    )
    assembly = assemble_cases(tmp_path / "p", tmp_path / "work")
    assert [(c.task, c.followup_kind) for c in assembly.cases] == [("ce", "flair"), ("orn", "ct")]
    for case in assembly.cases:
        assert case.planning_ct.uid == patient.planning_series
        assert [s.first.sop_instance_uid for s in case.rtplan] == [patient.plan_uid]
        assert len(case.rtdose) == 1
        assert not case.same_frame_of_reference
        assert case.patient_alias.startswith("pt-") and patient.patient_id not in case.patient_alias


def test_read_case_gives_images_dose_and_prescription(tmp_path: Path) -> None:
    write_patient(tmp_path / "p")
    case = assemble_cases(tmp_path / "p", tmp_path / "work").cases[0]
    data = read_case(case)
    assert data.followup.image.GetSize() == (20, 16, 6)
    assert data.planning_ct.image.GetSize() == (20, 16, 8)
    assert data.prescription_gy == pytest.approx(70.0)
    assert data.dose.summation_type == "PLAN"
    assert data.dose.max_gy > 25.0


@pytest.mark.parametrize(
    ("spec", "task", "kind"),
    [
        (FollowupSpec("MR", "AX T1 POST GAD"), "crn", "t1c"),
        (FollowupSpec("MR", "T1 MPRAGE", contrast_agent="Gadobutrol"), "crn", "t1c"),
        (FollowupSpec("MR", "Ax T2 TSE"), "ce", "t2"),
        (FollowupSpec("MR", "sag 3D FLAIR"), "ce", "flair"),
        (FollowupSpec("CT", "CT neck"), "orn", "ct"),
    ],
)
def test_sequence_kind_from_role_rules(tmp_path: Path, spec: FollowupSpec, task: str, kind: str) -> None:
    write_patient(tmp_path / "p", followups=(spec,))
    case = assemble_cases(tmp_path / "p", tmp_path / "work").cases[0]
    assert (case.task, case.followup_kind) == (task, kind)


def test_unmatched_localizer_and_early_series_are_ignored_with_reasons(tmp_path: Path) -> None:
    write_patient(
        tmp_path / "p",
        followups=(
            FollowupSpec("MR", "AX T2 FLAIR"),
            FollowupSpec("MR", "T1 MPRAGE"),  # no contrast, no post-contrast words: no rule
            FollowupSpec("CT", "Topogram", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
            FollowupSpec("MR", "AX T2 FLAIR", date="20221201"),  # before planning
        ),
    )
    assembly = assemble_cases(tmp_path / "p", tmp_path / "work")
    assert len(assembly.cases) == 1
    reasons = " | ".join(assembly.ignored)
    assert "no sequence rule matched" in reasons
    assert "excluded (localizer/scout)" in reasons
    assert "acquired before the planning CT" in reasons


def test_second_patient_is_refused(tmp_path: Path) -> None:
    write_patient(tmp_path / "a", patient_id="PAT-A")
    write_patient(tmp_path / "b", patient_id="PAT-B")
    with pytest.raises(AssemblyError, match="2 different patients") as error:
        assemble_cases(tmp_path, tmp_path / "work")
    assert "PAT-A" not in str(error.value) and "PAT-B" not in str(error.value)


def test_dose_in_another_frame_of_reference_is_refused(tmp_path: Path) -> None:
    write_patient(tmp_path / "p", dose_for=uid("somewhere else"))
    with pytest.raises(AssemblyError, match="no planning CT shares the RTDOSE frame of reference"):
        assemble_cases(tmp_path / "p", tmp_path / "work")


def test_missing_dose_is_refused(tmp_path: Path) -> None:
    write_patient(tmp_path / "p")
    (tmp_path / "p" / "rtdose.dcm").unlink()
    with pytest.raises(AssemblyError, match="no RTDOSE found"):
        assemble_cases(tmp_path / "p", tmp_path / "work")


def test_doses_on_two_frames_of_reference_are_refused(tmp_path: Path) -> None:
    write_patient(tmp_path / "p")
    write_rtdose(DoseSpec(frame_of_reference_uid=uid("other"), name="second"), tmp_path / "p" / "d2.dcm")
    with pytest.raises(AssemblyError, match="2 different frames of reference"):
        assemble_cases(tmp_path / "p", tmp_path / "work")


def test_missing_followup_is_refused(tmp_path: Path) -> None:
    write_patient(tmp_path / "p", followups=())
    with pytest.raises(AssemblyError, match="no follow-up scan found"):
        assemble_cases(tmp_path / "p", tmp_path / "work")


def test_no_dicom_at_all(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(AssemblyError, match=r"no DICOM instances found \(1 other file"):
        assemble_cases(tmp_path, tmp_path / "work")


def test_non_dicom_files_are_counted_and_duplicates_kept_once(tmp_path: Path) -> None:
    write_patient(tmp_path / "p")
    (tmp_path / "p" / "README.txt").write_text("scanner export notes")
    shutil.copytree(tmp_path / "p" / "followup0", tmp_path / "p" / "resent")
    assembly = assemble_cases(tmp_path / "p", tmp_path / "work")
    assert assembly.not_dicom == 1
    assert len(assembly.cases[0].followup.instances) == 6


def test_truncated_instance_stops_assembly_with_its_name(tmp_path: Path) -> None:
    write_patient(tmp_path / "p")
    victim = sorted((tmp_path / "p" / "followup0").iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:-300])
    with pytest.raises(DicomReadError, match=f"{victim.name}: file is truncated"):
        assemble_cases(tmp_path / "p", tmp_path / "work")


def test_a_list_of_files_assembles_like_a_folder(tmp_path: Path) -> None:
    write_patient(tmp_path / "p")
    files = sorted(p for p in (tmp_path / "p").rglob("*.dcm"))
    assembly = assemble_cases(files, tmp_path / "work")
    assert len(assembly.cases) == 1 and len(assembly.cases[0].followup.instances) == 6


def test_rtstruct_listing_absent_planning_slices_is_reported(tmp_path: Path) -> None:
    """dicompyler-breast: the RTSTRUCT lists 98 CT images, only one was exported."""
    breast = SHARED_DATA / "dicompyler-breast"
    for name in ("ct.0.dcm", "rtdose.dcm", "rtplan.dcm", "rtss.dcm"):
        shutil.copy(breast / name, tmp_path / name)
    followup = SeriesSpec(
        positions=axial_positions(6),
        modality="MR",
        patient_id="123456",
        date="20100101",
        series_description="AX T2 FLAIR",
        name="fu",
    )
    write_series(followup, tmp_path / "followup")
    case = assemble_cases(tmp_path, tmp_path / "work").cases[0]
    assert (
        "planning CT: 97 of 98 images listed by the RTSTRUCT are missing (slices not sent)" in case.warnings
    )
    data = read_case(case)
    assert data.dose.max_gy == pytest.approx(14.68, abs=0.01)
    assert data.prescription_gy == pytest.approx(14.0)
    assert data.planning_ct.image.GetSize() == (512, 512, 1)


def _move_dose(folder: Path, dz: float) -> None:
    import pydicom

    ds = pydicom.dcmread(folder / "rtdose.dcm")
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z + dz]
    ds.save_as(folder / "rtdose.dcm")


def test_a_dose_grid_wholly_outside_the_planning_ct_is_refused(tmp_path: Path) -> None:
    # Planning CT z -10…4 (+/- 1 mm), dose z -10…2 (+/- 1.5 mm): 30 mm up, they no longer meet.
    write_patient(tmp_path / "p")
    _move_dose(tmp_path / "p", 30.0)
    with pytest.raises(AssemblyError, match=r"RTDOSE grid \(x -22…8, y -18…6, z 18…34 mm\) lies wholly"):
        assemble_cases(tmp_path / "p", tmp_path / "work")


def test_a_dose_grid_that_overlaps_the_planning_ct_in_part_is_taken(tmp_path: Path) -> None:
    write_patient(tmp_path / "p")
    _move_dose(tmp_path / "p", 12.0)
    assert len(assemble_cases(tmp_path / "p", tmp_path / "work").cases) == 1


def test_an_empty_file_among_the_instances_is_refused(tmp_path: Path) -> None:
    # Ignoring it as "not DICOM" would leave a hole in a series that resampling then fills.
    write_patient(tmp_path / "p")
    victim = sorted((tmp_path / "p" / "followup0").glob("*.dcm"))[2]
    victim.write_bytes(b"")
    with pytest.raises(DicomReadError, match=f"{victim.name}: empty file \\(0 bytes\\)") as caught:
        assemble_cases(tmp_path / "p", tmp_path / "work")
    assert caught.value.code == "truncated-file"
