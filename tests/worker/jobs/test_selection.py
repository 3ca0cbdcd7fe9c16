"""Which follow-up a job is about, and the clear refusals when that is not one series."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

from tests.worker.jobs.conftest import new_job
from worker.errors import AssemblyError, InputError
from worker.jobs.folder import JobFolder
from worker.jobs.selection import case_files, select_case
from worker.jobs.spec import JobSpec, write_spec


def _followup_uids(folder: JobFolder) -> list[str]:
    uids = set()
    for path in folder.inputs.rglob("*.dcm"):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        if dataset.Modality == "CT" and "follow" in str(dataset.get("SeriesDescription", "")).lower():
            uids.add(dataset.SeriesInstanceUID)
    return sorted(uids)


def test_one_followup_is_selected_with_a_summary_free_of_identifiers(
    orn_patient: Path, tmp_path: Path
) -> None:
    folder = new_job(tmp_path, orn_patient)
    selected = select_case(folder, JobSpec())
    assert selected.case.task == "orn"
    summary = selected.summary
    assert summary["patient_alias"].startswith("pt-")
    patient_id = selected.case.patient_id
    assert patient_id not in str(summary)
    assert summary["followup_modality"] == "CT" and summary["rtdose_objects"] >= 1
    assert selected.notes == []  # case.json is not counted as a stray non-DICOM file


def test_two_followups_need_a_series_uid(two_followup_patient: Path, tmp_path: Path) -> None:
    folder = new_job(tmp_path, two_followup_patient)
    with pytest.raises(AssemblyError, match="2 follow-up series match; name one with followup_series_uid"):
        select_case(folder, JobSpec())
    uids = [c.followup.uid for c in _cases(folder)]
    chosen = select_case(folder, JobSpec(followup_series_uid=uids[1]))
    assert chosen.case.followup.uid == uids[1]
    with pytest.raises(AssemblyError, match="no follow-up series has the requested"):
        select_case(folder, JobSpec(followup_series_uid="1.2.3.4"))


def test_a_task_the_followup_does_not_suit_is_refused(orn_patient: Path, tmp_path: Path) -> None:
    folder = new_job(tmp_path, orn_patient)
    with pytest.raises(AssemblyError, match=r"no follow-up series suits task 'ce'.*orn"):
        select_case(folder, JobSpec(task="ce"))


def test_stray_files_are_reported(orn_patient: Path, tmp_path: Path) -> None:
    folder = new_job(tmp_path, orn_patient)
    (folder.inputs / "notes.txt").write_text("not an image")
    assert "1 file(s) that are not DICOM were ignored" in select_case(folder, JobSpec()).notes


def test_job_ids_cannot_walk_out_of_the_storage_root(tmp_path: Path) -> None:
    for bad in ("../etc", "A" * 32, "0" * 31, "0" * 32 + "/.."):
        with pytest.raises(InputError):
            JobFolder.under(tmp_path, bad)


def _cases(folder: JobFolder) -> list:
    from worker.stages.assemble.case import assemble_cases

    return assemble_cases(folder.inputs, folder.work / "unpacked").cases


def test_a_case_file_a_folder_down_is_not_a_stray_file(orn_patient: Path, tmp_path: Path) -> None:
    folder = JobFolder.under(tmp_path, "3" * 32).create()
    shutil.copytree(orn_patient, folder.inputs / orn_patient.name)  # as a zip of the folder unpacks
    write_spec(JobSpec(), folder.spec_path)
    assert select_case(folder, JobSpec()).notes == []
    assert case_files(folder) == [folder.inputs / orn_patient.name / "case.json"]
