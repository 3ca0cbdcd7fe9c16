"""Training cases from DICOM: the service's stages, 1 mm arrays, reuse, failures, the split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from models.predictor import PatientBox, working_crops
from models.synth import write_synthetic_patients
from worker.stages.assemble.case import assemble_cases
from worker.stages.export.algorithm import AlgorithmInfo
from worker.stages.export.rtstruct import write_rtstruct
from worker.stages.export.seg import Finding
from worker.stages.export.source import source_series
from worker.stages.prepare import prepare_case
from worker.stages.read.case_data import read_case
from worker.training.cases import (
    CachedCase,
    CacheOptions,
    CacheReport,
    build_cache,
    ground_truth,
    load_arrays,
    load_index,
    split_cases,
)


def _case(report: CacheReport, task: str) -> CachedCase:
    return next(c for c in report.cases if c.task == task)


def test_every_annotated_followup_becomes_a_case_with_its_prompt(
    training_cache: tuple[Path, CacheReport],
) -> None:
    cache, report = training_cache
    assert report.failures == {} and report.reused == 0
    assert sorted(c.task for c in report.cases) == ["ce", "crn", "orn"]
    ce = _case(report, "ce")
    assert ce.prompt.startswith("Segment cerebral edema of the temporal lobe on a follow-up T2-FLAIR MR.")
    assert " Gy in " in ce.prompt and "year-old" in ce.prompt
    cases, data_hash = load_index(cache)
    assert [c.case_id for c in cases] == [c.case_id for c in report.cases] and data_hash == report.data_hash


@pytest.mark.parametrize("task", ["orn", "ce", "crn"])
def test_cached_lesion_matches_the_ground_truth_and_lies_in_r(
    training_cache: tuple[Path, CacheReport], training_patients: Path, task: str
) -> None:
    cache, report = training_cache
    case = _case(report, task)
    truth = json.loads((training_patients / f"{task}-000" / "case.json").read_text())
    true_cc = truth["lesion"]["volume_cc"]
    assert case.lesion_cc == pytest.approx(true_cc, rel=0.12)  # SEG voxels on the follow-up grid
    arrays = load_arrays(cache, case)
    assert arrays["image"].dtype == np.float16 and list(arrays["image"].shape) == case.shape
    # 1 mm resampling of a 1–2 cc blob: within a fifth of the follow-up's own count.
    assert arrays["lesion"].sum() / 1000.0 == pytest.approx(case.lesion_cc, rel=0.2)
    lesion, roi = arrays["lesion"] > 0, arrays["roi"] > 0
    assert np.count_nonzero(lesion & roi) / np.count_nonzero(lesion) > 0.98
    where = np.argwhere(roi)
    assert np.allclose(where.min(axis=0), case.box_lo, atol=1.5)
    assert np.allclose(where.max(axis=0), case.box_hi, atol=1.5)


def test_cached_image_has_the_voxels_the_predictor_sees(
    training_cache: tuple[Path, CacheReport], training_patients: Path, tmp_path: Path
) -> None:
    cache, report = training_cache
    cached = _case(report, "ce")
    case = assemble_cases(training_patients / "ce-000", tmp_path).cases[0]
    data = read_case(case)
    region = prepare_case(case, data).region
    grid, volume, _, pad = working_crops(data.followup.image, PatientBox(np.asarray(region.corners_mm)), 64)
    image = load_arrays(cache, cached)["image"].astype(np.float32)
    # Both grids are parts of the same 1 mm working grid: the box's low corner sits at
    # ``box_lo`` in the cache and at ``low`` in the predictor's grid.
    low, _ = PatientBox(np.asarray(region.corners_mm)).on_grid(grid)
    offset = np.round(low - np.asarray(cached.box_lo)).astype(int)  # cache index 0 in grid indices
    lo = np.maximum(offset, 0)
    hi = np.minimum(offset + image.shape, volume.shape)
    assert np.all(hi - lo > 32)
    ours = volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    theirs = image[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, offset, strict=True))]
    assert np.abs(ours - theirs).max() < 0.02  # float16 storage
    assert cached.pad_value == pytest.approx(pad)


def test_a_second_build_reuses_every_case_and_other_settings_rebuild(
    training_cache: tuple[Path, CacheReport], training_patients: Path, tmp_path: Path
) -> None:
    cache, report = training_cache
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    again = build_cache(training_patients, copy)
    assert again.reused == 3 and again.data_hash == report.data_hash
    wider = build_cache(training_patients, copy, CacheOptions(margin_mm=40))
    assert wider.reused == 0 and wider.data_hash != report.data_hash
    assert _case(wider, "ce").shape[0] == _case(report, "ce").shape[0] - 16


def test_a_broken_patient_is_reported_and_the_others_are_cached(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_synthetic_patients(data, task="ce", size="small", seed=22, cases=2)
    (data / "ce-001" / "planning" / "rtdose.dcm").unlink()
    report = build_cache(data, tmp_path / "cache")
    assert len(report.cases) == 1
    assert list(report.failures) == ["ce-001"]
    assert "RTDOSE" in report.failures["ce-001"]


def test_rtstruct_ground_truth_is_read_when_there_is_no_seg(training_patients: Path, tmp_path: Path) -> None:
    patient = tmp_path / "patient"
    shutil.copytree(training_patients / "crn-000", patient)
    case = assemble_cases(patient, tmp_path / "work").cases[0]
    data = read_case(case)
    seg_truth = ground_truth(case, data)
    mask = sitk.GetImageFromArray(seg_truth.astype(np.uint8))
    mask.CopyInformation(data.followup.image)
    algorithm = AlgorithmInfo(model_id="manual", weights_sha256="0" * 64)
    structure_set = write_rtstruct(source_series(data.followup), [Finding("crn", mask)], algorithm)
    shutil.rmtree(patient / "ground_truth")
    structure_set.save_as(patient / "lesion_rtstruct.dcm", enforce_file_format=True)
    case = assemble_cases(patient, tmp_path / "work2").cases[0]
    assert not case.seg and case.rtstruct
    from_rtstruct = ground_truth(case, read_case(case))
    dice = 2 * np.count_nonzero(from_rtstruct & seg_truth) / (from_rtstruct.sum() + seg_truth.sum())
    assert dice > 0.9


def _cases(patients_per_task: int) -> list[CachedCase]:
    return [
        CachedCase(f"{t}-p{p}-{k}", t, f"pt-{t}{p}", "", [0, 0, 0], [1, 1, 1], 0.0, [2, 2, 2], 1.0, 1.0, "h")
        for t in ("orn", "ce", "crn")
        for p in range(patients_per_task)
        for k in range(2)
    ]


def test_split_is_by_patient_about_four_to_one_within_each_task_and_stable() -> None:
    cases = _cases(10)
    train, validation = split_cases(cases)
    assert len(train) == 48 and len(validation) == 12
    patient = {c.case_id: c.patient_alias for c in cases}
    assert not {patient[i] for i in train} & {patient[i] for i in validation}
    for task in ("orn", "ce", "crn"):
        assert sum(i.startswith(task) for i in validation) == 4
    assert split_cases(cases) == (train, validation)
    assert split_cases(cases, seed=1) != (train, validation)
