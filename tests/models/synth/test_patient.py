"""Synthetic patients: identity, dates, frames of reference, headers, determinism, arguments."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pydicom
import pytest

from models.synth import (
    CaseFolderExistsError,
    TrueTransform,
    load_case,
    write_synthetic_patients,
)

TASKS = ("orn", "ce", "crn")


@pytest.fixture(scope="module")
def cases(synth_cases: dict[str, Path]) -> dict[str, dict]:
    return {task: load_case(folder) for task, folder in synth_cases.items()}


def test_layout_and_files_listed_in_case_json(synth_cases, cases) -> None:
    for task in TASKS:
        folder, case = synth_cases[task], cases[task]
        assert case["task"] == task and case["seed"] == 0
        assert (folder / case["planning"]["rtplan_file"]).is_file()
        assert (folder / case["planning"]["rtdose_file"]).is_file()
        assert (
            len(list((folder / "planning" / "ct").glob("*.dcm")))
            == case["planning"]["ct_grid"]["shape_zyx"][0]
        )
        for fu in case["followups"]:
            assert len(list((folder / fu["image_dir"]).glob("*.dcm"))) == fu["grid"]["shape_zyx"][0]
            assert (folder / fu["seg_file"]).is_file()
        assert set(case["clinical"]) >= {
            "diagnosis",
            "prescription_gy",
            "fractions",
            "months_since_rt",
            "treatment_end_date",
        }
        assert set(case["demographics"]) == {"age", "sex"}
        assert TrueTransform.from_dict(case["true_transform"]) is not None


def _all_datasets(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.rglob("*.dcm"))]


def test_one_patient_per_case(synth_cases, cases) -> None:
    ids = set()
    for task in TASKS:
        headers = _all_datasets(synth_cases[task])
        assert {d.PatientID for d in headers} == {cases[task]["patient_id"]}
        assert {str(d.PatientName) for d in headers} == {cases[task]["patient_name"]}
        assert {d.PatientSex for d in headers} == {cases[task]["demographics"]["sex"]}
        assert all(d.Manufacturer == "rtinjury-synth" for d in headers)
        followup = [
            d for d in headers if d.StudyDate == cases[task]["followups"][0]["study_date"].replace("-", "")
        ]
        assert {d.PatientAge for d in followup} == {f"{cases[task]['demographics']['age']:03d}Y"}
        ids.add(cases[task]["patient_id"])
    assert len(ids) == len(TASKS)


def test_dates_are_ordered(synth_cases, cases) -> None:
    for task in TASKS:
        case, folder = cases[task], synth_cases[task]
        planning = pydicom.dcmread(next((folder / "planning" / "ct").glob("*.dcm")), stop_before_pixels=True)
        plan = pydicom.dcmread(folder / "planning" / "rtplan.dcm")
        dates = [planning.StudyDate, plan.RTPlanDate]
        for fu in case["followups"]:
            image = pydicom.dcmread(next((folder / fu["image_dir"]).glob("*.dcm")), stop_before_pixels=True)
            assert image.StudyDate == fu["study_date"].replace("-", "")
            dates.append(image.StudyDate)
        assert dates == sorted(dates) and len(set(dates)) == len(dates)
        assert dates[1] < case["clinical"]["treatment_end_date"].replace("-", "") < dates[2]


def test_frames_of_reference_and_references(synth_cases, cases) -> None:
    for task in TASKS:
        folder, case = synth_cases[task], cases[task]
        ct = pydicom.dcmread(next((folder / "planning" / "ct").glob("*.dcm")), stop_before_pixels=True)
        plan = pydicom.dcmread(folder / "planning" / "rtplan.dcm")
        dose = pydicom.dcmread(folder / "planning" / "rtdose.dcm", stop_before_pixels=True)
        assert dose.FrameOfReferenceUID == plan.FrameOfReferenceUID == ct.FrameOfReferenceUID
        assert dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan.SOPInstanceUID
        seen_for, seen_study = {ct.FrameOfReferenceUID}, {ct.StudyInstanceUID}
        for fu in case["followups"]:
            image = pydicom.dcmread(next((folder / fu["image_dir"]).glob("*.dcm")), stop_before_pixels=True)
            seg = pydicom.dcmread(folder / fu["seg_file"], stop_before_pixels=True)
            assert image.FrameOfReferenceUID not in seen_for and image.StudyInstanceUID not in seen_study
            seen_for.add(image.FrameOfReferenceUID)
            seen_study.add(image.StudyInstanceUID)
            assert seg.FrameOfReferenceUID == image.FrameOfReferenceUID
            assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == image.SeriesInstanceUID
            assert seg.SeriesDescription == "Ground truth (synthetic)"


def test_lesion_follows_its_course(cases) -> None:
    # Two follow-ups of index 0: ORN grows, CE shrinks, CRN's "peaking" needs
    # three follow-ups so it grows too.
    expected = {"orn": "growing", "ce": "shrinking", "crn": "growing"}
    for task in TASKS:
        volumes = [fu["lesion"]["volume_cc"] for fu in cases[task]["followups"]]
        months = [fu["months_since_rt"] for fu in cases[task]["followups"]]
        assert cases[task]["lesion_course"] == expected[task]
        direction = 1 if expected[task] == "growing" else -1
        assert direction * (volumes[1] - volumes[0]) > 0 and months == sorted(months)


def test_mr_headers(synth_cases) -> None:
    flair = pydicom.dcmread(
        next((synth_cases["ce"] / "followup-1" / "mr").glob("*.dcm")), stop_before_pixels=True
    )
    assert "FLAIR" in flair.SeriesDescription and "IR" in flair.ScanningSequence
    assert float(flair.InversionTime) > 0 and "ContrastBolusAgent" not in flair
    t1 = pydicom.dcmread(
        next((synth_cases["crn"] / "followup-1" / "mr").glob("*.dcm")), stop_before_pixels=True
    )
    assert "T1 POST GAD" in t1.SeriesDescription and t1.ContrastBolusAgent
    ct = pydicom.dcmread(
        next((synth_cases["orn"] / "planning" / "ct").glob("*.dcm")), stop_before_pixels=True
    )
    assert "Planning CT" in ct.SeriesDescription and ct.PatientPosition == "HFS"


def test_same_seed_gives_identical_bytes(synth_cases, tmp_path) -> None:
    again = write_synthetic_patients(tmp_path, task="orn", seed=0, followups=2)[0]
    original = synth_cases["orn"]
    files = sorted(p.relative_to(original) for p in original.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(original, again, [str(f) for f in files], shallow=False)
    assert mismatch == [] and errors == []


def test_other_seed_gives_other_patient(synth_cases, tmp_path) -> None:
    other = write_synthetic_patients(tmp_path, task="orn", seed=1)[0]
    first = pydicom.dcmread(synth_cases["orn"] / "planning" / "ct" / "0001.dcm")
    second = pydicom.dcmread(other / "planning" / "ct" / "0001.dcm")
    assert first.PixelData != second.PixelData
    assert first.PatientID != second.PatientID and first.StudyInstanceUID != second.StudyInstanceUID
    assert json.loads((other / "case.json").read_text())["seed"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "brain"}, "task"),
        ({"cases": 0}, "cases"),
        ({"cases": True}, "cases"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"followups": 0}, "followups"),
        ({"size": "huge"}, "size"),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        write_synthetic_patients(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_refuses_to_overwrite_a_case(tmp_path) -> None:
    (tmp_path / "ce-000").mkdir()
    (tmp_path / "ce-000" / "keep.txt").write_text("x")
    with pytest.raises(CaseFolderExistsError, match="ce-000"):
        write_synthetic_patients(tmp_path, task="ce")
