"""Clinical context for the text prompt: given fields first, then the DICOM headers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.prompt_text import ClinicalContext
from models.synth import write_synthetic_patients
from worker.errors import InputError
from worker.stages.assemble.case import Case, assemble_cases
from worker.stages.clinical import _age, case_context, header_context, read_case_file
from worker.stages.read.case_data import CaseData, read_case


@pytest.fixture(scope="module")
def crn_patient(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Case, CaseData]:
    root = tmp_path_factory.mktemp("clinical")
    write_synthetic_patients(root, task="crn", size="small", seed=31)
    folder = root / "crn-000"
    case = assemble_cases(folder, tmp_path_factory.mktemp("work")).cases[0]
    return folder, case, read_case(case)


def test_headers_give_age_sex_prescription_and_fractions(crn_patient: tuple[Path, Case, CaseData]) -> None:
    folder, case, data = crn_patient
    truth = json.loads((folder / "case.json").read_text())
    context = header_context(case, data)
    assert context.prescription_gy == truth["clinical"]["prescription_gy"]
    assert context.fractions == truth["clinical"]["fractions"]
    assert context.sex == truth["demographics"]["sex"]
    assert context.age is not None and abs(context.age - truth["demographics"]["age"]) <= 5
    assert context.diagnosis is None and context.months_since_rt is None  # not in any header


def test_case_file_fields_win_over_headers(crn_patient: tuple[Path, Case, CaseData]) -> None:
    folder, case, data = crn_patient
    given = read_case_file(folder)
    assert given is not None
    context = case_context(case, data, {**given, "demographics": {"age": 99}})
    assert context.age == 99
    assert context.diagnosis == given["clinical"]["diagnosis"]
    assert context.months_since_rt == given["clinical"]["months_since_rt"]
    assert context.sex == header_context(case, data).sex  # absent in the given fields
    assert case_context(case, data, None) == header_context(case, data)


def test_case_file_absent_or_broken(tmp_path: Path) -> None:
    assert read_case_file(tmp_path) is None
    (tmp_path / "case.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_case_file(tmp_path)
    (tmp_path / "case.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="expected a JSON object"):
        read_case_file(tmp_path)


@pytest.mark.parametrize(
    ("age", "birth", "study", "expected"),
    [
        ("057Y", "", "", 57),
        ("", "19600615", "20200614", 59),
        ("", "19600615", "20200615", 60),
        ("006M", "", "", None),
        ("", "1960", "20200101", None),
    ],
)
def test_age_from_patient_age_or_birth_and_study_dates(
    age: str, birth: str, study: str, expected: int | None
) -> None:
    header = {"PatientBirthDate": birth, "StudyDate": study}
    assert _age(age, header) == expected


def test_merging_keeps_stated_values() -> None:
    stated = ClinicalContext(age=40)
    assert stated.merged_over(ClinicalContext(age=50, sex="F")) == ClinicalContext(age=40, sex="F")
