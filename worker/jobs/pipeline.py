"""The stages of one job as plain functions over its folder.

``prepare`` (assemble → read → register → dose → prompts, CPU), ``infer`` (the network, GPU
when there is one), ``export`` (DICOM-SEG, RTSTRUCT, SR, report, preview; CPU), and ``refine``
(the decoder alone on the saved embedding with the reviewer's clicks). The Celery tasks are thin
wrappers around these; ``rtinjury run`` calls :func:`run_job` in one process. Each stage reads
what it needs from the folder, so any worker may run any stage.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from typing import Any

import SimpleITK as sitk

from models.errors import CodedError, ModelError
from models.files import replace_folder
from models.predictor import Predictor
from models.prompt_text import ClinicalContext, text_prompt
from worker.jobs import handoff
from worker.jobs.folder import JobFolder
from worker.jobs.progress import StatusReporter
from worker.jobs.selection import case_files, select_case
from worker.jobs.spec import ClickSpec, JobSpec, read_spec
from worker.jobs.status import Delivery
from worker.jobs.storage import is_disk_full
from worker.runtime import ModelRuntime
from worker.settings import WorkerSettings
from worker.stages.assemble.case import Case
from worker.stages.clinical import case_context, read_case_file
from worker.stages.deliver import SendOptions, send_files
from worker.stages.export.algorithm import AlgorithmInfo
from worker.stages.export.report import Report
from worker.stages.export.stage import ExportInputs, export_results
from worker.stages.infer import InferenceOptions, InferenceResult, decode_lesion, infer_lesion
from worker.stages.prepare import prepare_case
from worker.stages.prompts import HighDoseRegion
from worker.stages.read.case_data import CaseData, read_case
from worker.stages.read.series import read_image_series
from worker.stages.register.stage import RegistrationOptions
from worker.viewer.layers import build_layers, save_layers


def prepare(folder: JobFolder, settings: WorkerSettings, reporter: StatusReporter) -> None:
    """Everything before the network; leaves the follow-up, the dose on it and the transform."""
    spec = read_spec(folder.spec_path)
    reporter.stage("assemble")
    selected = select_case(folder, spec, settings.role_rules)
    case = selected.case
    reporter.stage("read")
    data = read_case(case)
    registration = RegistrationOptions(deformable=spec.options.deformable, threads=settings.threads)
    prepared = prepare_case(
        case, data, tau=spec.tau, registration=registration, progress=reporter.stage, carry_planning_ct=True
    )
    header = case.followup.first.header
    facts: dict[str, Any] = {
        "task": case.task,
        "patient_alias": case.patient_alias,
        "study_date": str(header.get("StudyDate", "") or "") or None,
        "followup_description": str(header.get("SeriesDescription", "") or "") or None,
        "modality": data.followup.modality,
        "text_prompt": text_prompt(case.task, _clinical_context(folder, spec, case, data)),
        # Warnings of reading; the region's own warnings travel with the prepared case.
        "warnings": [*selected.notes, *data.warnings],
    }
    # The web viewer's layers, while the images are in memory (reading them back takes seconds);
    # before prepared.json, which tells the API that the job's images can be viewed.
    save_layers(folder.work, build_layers(data.followup.image, prepared.dose.image, prepared.planning_ct))
    handoff.save_prepared(folder.work, data.followup.image, prepared, facts)
    reporter.warn([*facts["warnings"], *prepared.warnings])
    reporter.end_stage()


def _clinical_context(folder: JobFolder, spec: JobSpec, case: Case, data: CaseData) -> ClinicalContext:
    """What the request states, over a ``case.json`` among the inputs, over the DICOM headers."""
    found = case_files(folder)
    site = read_case_file(found[0].parent) if found else None
    stated = spec.case_file()
    return ClinicalContext.from_mapping(stated["clinical"], stated["demographics"]).merged_over(
        case_context(case, data, site)
    )


@dataclass
class _InferenceInputs:
    """What the network stages read from the job folder."""

    image: sitk.Image
    region: HighDoseRegion
    prompt: str
    options: InferenceOptions

    @classmethod
    def load(cls, folder: JobFolder) -> _InferenceInputs:
        spec = read_spec(folder.spec_path)
        return cls(
            handoff.load_followup(folder.work),
            handoff.load_prepared(folder.work).region,
            handoff.prepared_facts(folder.work)["text_prompt"],
            InferenceOptions(spec.options.gate_margin_mm, spec.options.min_component_cc),
        )


def infer(folder: JobFolder, runtime: ModelRuntime, reporter: StatusReporter) -> None:
    """The network on the follow-up, prompted by r's box and the text; saves the embedding."""
    reporter.stage("infer")
    inputs = _InferenceInputs.load(folder)
    features = runtime.text_features(inputs.prompt)
    result = infer_lesion(runtime.predictor, inputs.image, inputs.region, features, options=inputs.options)
    handoff.save_embedding(folder.work, runtime.predictor.state_arrays())
    handoff.save_clicks(folder.work, [])
    _save_inference(folder, runtime, result)
    reporter.end_stage()


def refine(
    folder: JobFolder, runtime: ModelRuntime, clicks: list[ClickSpec], reporter: StatusReporter
) -> None:
    """The decoder again with every click so far and the last prediction as the mask prompt."""
    reporter.stage("refine")
    predictor = runtime.predictor
    if not isinstance(predictor, Predictor):
        raise ModelError(f"the {runtime.model.model_id} network takes no clicks; it cannot be refined")
    segmented_by = handoff.inference_facts(folder.work)["model_id"]
    if segmented_by != runtime.model.model_id:
        # The saved embedding is that network's: another one's decoder cannot read it.
        raise ModelError(
            f"the job was segmented by {segmented_by}; this worker runs {runtime.model.model_id}"
        )
    inputs = _InferenceInputs.load(folder)
    predictor.restore_state(handoff.load_embedding(folder.work))
    previous = predictor.prediction_from_low_res(handoff.load_low_res(folder.work))
    all_clicks = [*handoff.load_clicks(folder.work), *clicks]
    result = decode_lesion(
        predictor,
        inputs.image,
        inputs.region,
        runtime.text_features(inputs.prompt),
        clicks=handoff.as_clicks(all_clicks),
        previous=previous,
        options=inputs.options,
    )
    handoff.save_clicks(folder.work, all_clicks)
    _save_inference(folder, runtime, result)
    reporter.end_stage()


def _save_inference(folder: JobFolder, runtime: ModelRuntime, result: InferenceResult) -> None:
    facts = {
        "model_id": runtime.model.model_id,
        "weights_sha256": runtime.model.weights_sha256,
        "encode_seconds": round(result.encode_seconds, 3),
        "decode_seconds": round(result.decode_seconds, 3),
        "gated_voxels": result.gated_voxels,
        "notes": result.prediction.notes,
    }
    handoff.save_inference(folder.work, result.mask, result.prediction, facts)


def export(folder: JobFolder, settings: WorkerSettings, reporter: StatusReporter) -> Report:
    """Write the outputs; a new set replaces the old one whole (after a refinement, say)."""
    spec = read_spec(folder.spec_path)
    reporter.stage("export")
    facts = handoff.prepared_facts(folder.work)
    inferred = handoff.inference_facts(folder.work)
    case = select_case(folder, spec, settings.role_rules).case
    # Source instances and their planes: the objects are written on the series as it was sent.
    followup = read_image_series(case.followup.files)
    inputs = ExportInputs(
        task=facts["task"],
        followup=followup,
        lesion_mask=handoff.load_lesion(folder.work),
        prepared=handoff.load_prepared(folder.work),
        algorithm=AlgorithmInfo(inferred["model_id"], inferred["weights_sha256"]),
        patient_alias=facts["patient_alias"],
        study_date=facts["study_date"],
        followup_description=facts["followup_description"],
        timings={**reporter.status.timings_s},
        warnings=[*facts["warnings"], *inferred["notes"]],
    )
    staging = folder.outputs.with_name(f"{folder.outputs.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        exported = export_results(inputs, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # half a set of outputs; its space is wanted back
        raise
    replace_folder(staging, folder.outputs)
    reporter.end_stage()
    return exported.report


#: What goes to a DICOM destination (the report and preview stay on the API).
DELIVERED_OUTPUTS = ("seg", "rtstruct", "sr")


def deliver(folder: JobFolder, settings: WorkerSettings, reporter: StatusReporter) -> None:
    """Send the DICOM results to every destination of the job; each outcome is recorded in the
    status (a failed send does not fail the job: its results are there to send again)."""
    spec = read_spec(folder.spec_path)
    files = [folder.output(name) for name in DELIVERED_OUTPUTS]
    options = SendOptions(settings.node_ae_title, settings.send_attempts, settings.send_backoff_s)
    for destination in spec.destinations:
        reporter.record_delivery(Delivery(destination=destination.name, state="sending"))
        result = send_files(files, destination, options)
        state = "sent" if result.ok else "failed"
        reporter.record_delivery(
            Delivery(
                destination=destination.name,
                state=state,
                attempts=result.attempts,
                sent=result.sent,
                failed=result.failed,
                error=result.error,
            )
        )


def run_job(
    folder: JobFolder, settings: WorkerSettings, runtime: ModelRuntime, reporter: StatusReporter
) -> Report:
    """Every stage in this process (``rtinjury run``, ``rtinjury demo``, tests).

    Raises whatever the stages raise; the reporter has the job failed by then.
    """
    started = time.perf_counter()
    try:
        prepare(folder, settings, reporter)
        infer(folder, runtime, reporter)
        report = export(folder, settings, reporter)
    except Exception as error:
        code, message = describe_failure(error)
        reporter.failed(code, message)
        raise
    reporter.status.timings_s["total"] = round(time.perf_counter() - started, 3)
    reporter.succeeded()
    return report


def describe_failure(error: BaseException) -> tuple[str, str]:
    """A stable code and a message a user may read: ours for input and model errors, a generic
    one for anything else (details go to the worker's log, never to the user)."""

    if isinstance(error, CodedError):
        return error.code, error.message
    if is_disk_full(error):
        return "storage-full", "the storage root is full (no space left on device); free space, then resend"
    return "internal-error", f"the job failed in the worker ({type(error).__name__}); see the worker log"
