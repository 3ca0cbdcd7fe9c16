"""Finding patients and follow-ups in an archive of any layout, damaged files included."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest

from worker.audit.discovery import discover
from worker.errors import InputError
from worker.stages.assemble.case import patient_alias
from worker.stages.assemble.rules import load_rules


def _copy(patient: Path, target: Path) -> Path:
    shutil.copytree(patient, target)
    return target


def _flatten(patient: Path, target: Path) -> None:
    """Every file of a patient in one folder under meaningless names (as some exports do)."""
    target.mkdir(parents=True)
    for number, path in enumerate(sorted(p for p in patient.rglob("*") if p.is_file())):
        shutil.copy(path, target / (path.name if path.name == "case.json" else f"IM{number:05d}"))


def test_patients_in_any_layout_give_one_item_per_followup(
    two_followup_patient: Path, orn_patient: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    _flatten(two_followup_patient, archive / "export" / "batch-1")
    _copy(orn_patient, archive / "site" / "orn")
    found = discover(archive, load_rules())
    assert found.patients == 2 and found.unplaced == []
    two = json.loads((two_followup_patient / "case.json").read_text())
    mine = [i for i in found.items if i.patient_alias == patient_alias(two["patient_id"])]
    assert [i.followup_series_uid for i in mine] == [f["series_instance_uid"] for f in two["followups"]]
    assert [i.followup_date for i in mine] == [f["study_date"] for f in two["followups"]]
    assert all(i.task == "orn" and i.problem is None and i.followup_modality == "CT" for i in mine)
    # Flattened, the case.json lies among everything else: it still belongs to that patient.
    assert all(i.case_file is not None and i.case_file.parent == archive / "export" / "batch-1" for i in mine)
    assert [i.months_since_rt for i in mine] == pytest.approx(
        [f["months_since_rt"] for f in two["followups"]], abs=0.05
    )
    assert {i.rt_reference for i in mine} == {"treatment end"}
    # Each item's files: its follow-up, the planning CT, RTDOSE and RTPLAN; not the other follow-up.
    other = {str(p) for p in mine[1].files} - {str(p) for p in mine[0].files}
    assert len(other) == len(list((two_followup_patient / "followup-2").rglob("*.dcm")))


def test_a_patient_without_dose_is_one_failed_item(orn_patient: Path, tmp_path: Path) -> None:
    patient = _copy(orn_patient, tmp_path / "archive" / "p1")
    (patient / "planning" / "rtdose.dcm").unlink()
    (item,) = discover(tmp_path / "archive", load_rules()).items
    assert item.problem is not None and item.problem.stage == "assemble"
    assert "RTDOSE" in item.problem.message and item.task is None and len(item.files) > 10


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 500])


def test_a_damaged_followup_slice_fails_that_followup_only(
    two_followup_patient: Path, tmp_path: Path
) -> None:
    patient = _copy(two_followup_patient, tmp_path / "archive" / "p")
    _truncate(sorted((patient / "followup-2" / "ct").glob("*.dcm"))[3])
    first, second = discover(tmp_path / "archive", load_rules()).items
    assert first.problem is None
    assert second.problem is not None and second.problem.code == "truncated-file"
    assert "truncated" in second.problem.message


def test_a_damaged_planning_slice_fails_every_followup(two_followup_patient: Path, tmp_path: Path) -> None:
    patient = _copy(two_followup_patient, tmp_path / "archive" / "p")
    _truncate(sorted((patient / "planning" / "ct").glob("*.dcm"))[0])
    items = discover(tmp_path / "archive", load_rules()).items
    assert len(items) == 2 and all(i.problem and i.problem.stage == "read" for i in items)


def test_unplaceable_and_foreign_files_are_counted_not_fatal(orn_patient: Path, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    _copy(orn_patient, archive / "p")
    (archive / "notes.txt").write_text("not DICOM")
    header = bytes(128) + b"DICM" + b"\x02\x00"  # a DICOM preamble, then nothing usable
    (archive / "broken.dcm").write_bytes(header)
    found = discover(archive, load_rules())
    assert found.not_dicom == 1 and found.unplaced == [("broken.dcm", "damaged DICOM file: no PatientID")]
    assert len(found.items) == 1 and found.items[0].problem is None


def test_the_audit_folder_inside_the_archive_is_left_out(orn_patient: Path, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    _copy(orn_patient, archive / "p")
    _copy(orn_patient / "planning", archive / "audit" / "copy")  # outputs of an earlier audit, say
    found = discover(archive, load_rules(), exclude=archive / "audit")
    assert len(found.items) == 1 and found.items[0].problem is None
    assert not any("audit" in str(f.relative_to(archive)).split("/")[0] for f in found.items[0].files)


def test_second_patient_in_one_folder_is_its_own_patient(orn_patient: Path, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    _copy(orn_patient, archive / "p")
    renamed = _copy(orn_patient, archive / "q")
    for path in renamed.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.PatientID = "OTHER-42"
        ds.save_as(path)
    found = discover(archive, load_rules())
    original = json.loads((orn_patient / "case.json").read_text())["patient_id"]
    assert found.patients == 2
    assert {i.patient_alias for i in found.items} == {patient_alias(original), patient_alias("OTHER-42")}
    assert all(i.problem is None for i in found.items)


def test_no_dicom_at_all_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(InputError, match="no DICOM files found"):
        discover(tmp_path, load_rules())
    with pytest.raises(InputError, match="not a folder"):
        discover(tmp_path / "a.txt", load_rules())


def test_a_case_file_over_several_patients_belongs_to_none(
    orn_patient: Path, two_followup_patient: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    _copy(orn_patient, archive / "p")
    _copy(two_followup_patient, archive / "q")
    shutil.copy(orn_patient / "case.json", archive / "case.json")  # at the top: nobody's
    found = discover(archive, load_rules())
    assert {i.case_file for i in found.items} == {archive / "p" / "case.json", archive / "q" / "case.json"}
    (archive / "p" / "case.json").unlink()
    found = discover(archive, load_rules())
    assert {
        i.case_file for i in found.items if i.case_file is None or i.case_file.parent != archive / "q"
    } == {None}
