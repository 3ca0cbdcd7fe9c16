"""A job through every stage in one process, as ``rtinjury run`` does it; then a refinement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from models.predictor import Predictor
from tests.worker.jobs.conftest import new_job
from worker.errors import AssemblyError
from worker.jobs import handoff, pipeline
from worker.jobs.folder import JobFolder
from worker.jobs.progress import StatusReporter
from worker.jobs.spec import ClickSpec, JobSpec
from worker.jobs.status import STAGES, JobState, JobStatus, read_status
from worker.runtime import ModelRuntime, get_runtime
from worker.settings import WorkerSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runtime() -> ModelRuntime:
    return get_runtime(WorkerSettings())


@pytest.fixture(scope="module")
def finished(
    tmp_path_factory: pytest.TempPathFactory, orn_patient: Path, runtime: ModelRuntime
) -> tuple[JobFolder, list[JobStatus]]:
    """One ORN job run to the end, with every status it went through."""
    root = tmp_path_factory.mktemp("store")
    settings = WorkerSettings(storage_root=root)
    folder = new_job(root, orn_patient)
    seen: list[JobStatus] = []
    reporter = StatusReporter(folder, on_change=lambda s: seen.append(s.model_copy(deep=True)))
    pipeline.run_job(folder, settings, runtime, reporter)
    return folder, seen


def test_stages_run_in_order_and_progress_only_grows(finished: tuple[JobFolder, list[JobStatus]]) -> None:
    _, seen = finished
    stages = list(dict.fromkeys(s.stage for s in seen if s.stage))
    assert stages == list(STAGES)
    progress = [s.progress for s in seen]
    assert progress == sorted(progress)
    assert seen[-1].state is JobState.SUCCEEDED and seen[-1].progress == 100


def test_status_file_has_every_stage_timed(finished: tuple[JobFolder, list[JobStatus]]) -> None:
    folder, _ = finished
    status = read_status(folder.status_path)
    assert status.state is JobState.SUCCEEDED
    assert set(STAGES) <= set(status.timings_s)
    assert all(seconds >= 0 for seconds in status.timings_s.values())
    assert status.timings_s["total"] >= status.timings_s["register"]


def test_outputs_name_the_found_lesion_near_the_truth(finished: tuple[JobFolder, list[JobStatus]]) -> None:
    folder, _ = finished
    report = json.loads(folder.output("report").read_text())
    truth = json.loads((folder.inputs / "case.json").read_text())["followups"][0]["lesion"]
    assert not report["lesion"]["empty"]
    centroid = np.asarray(report["lesion"]["centroid_mm"])
    assert np.linalg.norm(centroid - np.asarray(truth["centroid_followup_mm"])) < 5.0
    assert report["lesion"]["volume_cc"] == pytest.approx(truth["volume_cc"], rel=0.5)
    followup = next(p for p in (folder.inputs / "followup-1").rglob("*") if p.is_file())
    for name in ("seg", "rtstruct", "sr"):
        assert pydicom.dcmread(folder.output(name)).PatientID == pydicom.dcmread(followup).PatientID


def test_handoff_gives_back_what_prepare_computed(
    finished: tuple[JobFolder, list[JobStatus]], orn_patient: Path, tmp_path: Path
) -> None:
    from worker.jobs.selection import select_case
    from worker.stages.prepare import prepare_case
    from worker.stages.read.case_data import read_case

    folder, _ = finished
    loaded = handoff.load_prepared(folder.work)
    case = select_case(folder, JobSpec()).case
    fresh = prepare_case(case, read_case(case))
    assert loaded.registration.method == fresh.registration.method
    np.testing.assert_array_equal(loaded.region.mask, fresh.region.mask)
    np.testing.assert_allclose(np.asarray(loaded.region.corners_mm), np.asarray(fresh.region.corners_mm))
    dose = sitk.GetArrayFromImage(loaded.dose.image)
    np.testing.assert_allclose(dose, sitk.GetArrayFromImage(fresh.dose.image), atol=1e-3)


def test_refinement_reuses_the_embedding_and_replaces_the_outputs(
    finished: tuple[JobFolder, list[JobStatus]], runtime: ModelRuntime, tmp_path: Path
) -> None:
    source, _ = finished
    folder = JobFolder(tmp_path / "job")
    shutil.copytree(source.root, folder.root)
    before = json.loads(folder.output("report").read_text())["lesion"]
    seg_uid = pydicom.dcmread(folder.output("seg")).SeriesInstanceUID
    assert isinstance(runtime.predictor, Predictor)
    runtime.predictor.reset()  # what a worker that never saw this job holds
    settings = WorkerSettings(storage_root=tmp_path)
    reporter = StatusReporter(folder)
    # Negative clicks all over the lesion: the decoder must take the lesion back.
    clicks = [ClickSpec(point_mm=tuple(before["centroid_mm"]), positive=False)]
    pipeline.refine(folder, runtime, clicks, reporter)
    pipeline.export(folder, settings, reporter)
    after = json.loads(folder.output("report").read_text())["lesion"]
    assert after["volume_cc"] < before["volume_cc"]
    assert pydicom.dcmread(folder.output("seg")).SeriesInstanceUID != seg_uid
    assert [c.positive for c in handoff.load_clicks(folder.work)] == [False]
    pipeline.refine(folder, runtime, [ClickSpec(point_mm=(0.0, 0.0, 0.0), positive=True)], reporter)
    assert [c.positive for c in handoff.load_clicks(folder.work)] == [False, True]
    assert "refine" in reporter.status.timings_s


def test_a_case_without_dose_fails_with_the_reason(
    orn_patient: Path, tmp_path: Path, runtime: ModelRuntime
) -> None:
    folder = new_job(tmp_path, orn_patient)
    for dose in (folder.inputs / "planning").rglob("*"):
        if dose.is_file() and pydicom.dcmread(dose, stop_before_pixels=True).Modality == "RTDOSE":
            dose.unlink()
    reporter = StatusReporter(folder)
    with pytest.raises(AssemblyError):
        pipeline.run_job(folder, WorkerSettings(storage_root=tmp_path), runtime, reporter)
    status = read_status(folder.status_path)
    assert status.state is JobState.FAILED
    assert status.error is not None and status.error.code == "invalid-study"
    assert "dose" in status.error.message.lower()
    assert not any(folder.outputs.iterdir())


def test_the_text_prompt_layers_request_over_case_file_over_headers(
    orn_patient: Path, tmp_path: Path
) -> None:
    from worker.jobs.spec import ClinicalFields

    case_file = json.loads((orn_patient / "case.json").read_text())
    spec = JobSpec(clinical_text="Jaw pain.", clinical=ClinicalFields(months_since_rt=99))
    folder = new_job(tmp_path, orn_patient, spec)
    pipeline.prepare(folder, WorkerSettings(storage_root=tmp_path), StatusReporter(folder))
    prompt = handoff.prepared_facts(folder.work)["text_prompt"]
    assert "ended 99 months ago" in prompt  # the request wins over case.json
    assert f"{case_file['clinical']['diagnosis']}" in prompt  # case.json fills what the request left out
    assert prompt.endswith("Jaw pain.")


def test_a_refinement_on_another_network_is_refused(
    finished: tuple[JobFolder, list[JobStatus]], runtime: ModelRuntime, tmp_path: Path
) -> None:
    from models.errors import ModelError

    folder = JobFolder(tmp_path / "job")
    shutil.copytree(finished[0].root, folder.root)
    facts = handoff.inference_facts(folder.work)
    handoff.write_json(folder.work / handoff.INFERENCE, {**facts, "model_id": "small@000000000000"})
    with pytest.raises(ModelError, match="segmented by small@000000000000; this worker runs"):
        pipeline.refine(folder, runtime, [], StatusReporter(folder))
