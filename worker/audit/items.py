"""One audit item through the pipeline, and its table row.

The item becomes an ordinary job folder whose ``inputs/`` holds links to the item's files in the
archive (nothing is copied), so the stages run exactly as they do for an upload, in this process
(local workers) or on the Celery workers. The finished job's outputs are copied into the
audit's ``followups/`` folder and its report is flattened into one row.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.audit.discovery import AuditItem
from worker.audit.ledger import AuditPaths, Ledger, now_iso
from worker.audit.rows import FAILED, SUCCEEDED, TIMED_STAGES, empty_row
from worker.jobs import handoff
from worker.jobs.folder import JobFolder
from worker.jobs.spec import ClinicalFields, JobOptions, JobSpec, write_spec
from worker.jobs.status import JobState, JobStatus, read_status, write_status
from worker.stages.export.files import OUTPUT_FILES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemSettings:
    """What every job of an audit is asked, besides its own follow-up."""

    tau: float
    options: JobOptions

    def spec_for(self, item: AuditItem) -> JobSpec:
        return JobSpec.model_validate(
            {
                "task": item.task,
                "followup_series_uid": item.followup_series_uid,
                "tau": self.tau,
                "options": self.options,
                # The follow-up's own interval since RT (a case.json states the first follow-up's).
                "clinical": ClinicalFields(months_since_rt=item.months_since_rt),
            }
        )


def prepare_job(item: AuditItem, folder: JobFolder, settings: ItemSettings) -> None:
    """A fresh job folder for ``item``: links to its files under ``inputs/`` and its spec."""
    folder.remove()
    folder.create()
    for number, path in enumerate(item.files):
        # Numbered names: two series may use the same file names in different folders.
        (folder.inputs / f"{number:06d}-{path.name}").symlink_to(path.resolve())
    if item.case_file is not None:
        (folder.inputs / item.case_file.name).symlink_to(item.case_file.resolve())
    write_spec(settings.spec_for(item), folder.spec_path)
    # Queued from now on: a re-run that finds this status watches the job instead of queuing it again.
    write_status(JobStatus(), folder.status_path)


def run_local(
    item: AuditItem, key: str, paths: AuditPaths, settings: ItemSettings, run_id: str, worker_settings: Any
) -> dict[str, Any]:
    """Run ``item`` in this process and record it; returns its row."""
    from worker.jobs import pipeline
    from worker.jobs.progress import StatusReporter
    from worker.runtime import get_runtime

    ledger = Ledger(paths)
    if item.problem is not None:
        row = known_failure_row(item, key, run_id)
    else:
        folder = JobFolder(paths.work / key[:32])
        prepare_job(item, folder, settings)
        reporter = StatusReporter(folder)
        try:
            pipeline.run_job(folder, worker_settings, get_runtime(worker_settings), reporter)
        except Exception:  # the reporter holds the failure; the batch goes on
            logger.warning("audit item %s failed", key[:16], exc_info=logger.isEnabledFor(logging.DEBUG))
        row = collect_row(item, key, folder, paths, run_id)
        folder.remove()
    ledger.write(key, row)
    return row


def known_failure_row(item: AuditItem, key: str, run_id: str) -> dict[str, Any]:
    """The row of an item that fails before any stage (a patient without a case, a damaged file)."""
    assert item.problem is not None
    row = _base_row(item, key, run_id)
    row.update(
        status=FAILED,
        failed_stage=item.problem.stage,
        error_code=item.problem.code,
        error=item.problem.message,
    )
    return row


def collect_row(
    item: AuditItem, key: str, folder: JobFolder, paths: AuditPaths, run_id: str
) -> dict[str, Any]:
    """The row of a finished job; its outputs are copied into the audit folder first. A job whose
    results cannot be kept (a full disk, say) is a failed row, never the end of the batch."""
    try:
        return _finished_row(item, key, folder, paths, run_id)
    except Exception as error:
        logger.warning("audit item %s: results not kept (%s)", key[:16], type(error).__name__)
        row = _base_row(item, key, run_id)
        row.update(
            status=FAILED,
            failed_stage="collect",
            error_code="internal-error",
            error=f"the results could not be kept in the audit folder ({type(error).__name__})",
        )
        return row


def _finished_row(
    item: AuditItem, key: str, folder: JobFolder, paths: AuditPaths, run_id: str
) -> dict[str, Any]:
    status = read_status(folder.status_path)
    row = _base_row(item, key, run_id)
    _add_timings(row, status)
    if status.state != JobState.SUCCEEDED:
        error = status.error
        row.update(
            status=FAILED,
            failed_stage=status.stage,
            error_code=error.code if error else "internal-error",
            error=error.message if error else f"the job ended {status.state.value}",
        )
        return row
    report = handoff.read_json(folder.output("report"))
    destination = _keep_outputs(item, key, folder, paths)
    row["status"] = SUCCEEDED
    _add_report(row, report)
    _add_centroid(row, report, folder)
    for name, file in OUTPUT_FILES.items():
        produced = destination / file
        row[f"{name}_path"] = produced.relative_to(paths.root).as_posix() if produced.is_file() else None
    return row


def _base_row(item: AuditItem, key: str, run_id: str) -> dict[str, Any]:
    row = empty_row()
    row.update(
        key=key[:16],
        patient_alias=item.patient_alias,
        # Records keep no identifier; the tables add PatientIDs only when asked to.
        patient_id=None,
        task=item.task,
        followup_date=item.followup_date,
        followup_modality=item.followup_modality,
        followup_series_uid=item.followup_series_uid,
        planning_date=item.planning_date,
        months_since_rt=item.months_since_rt,
        rt_reference=item.rt_reference,
        processed_at=now_iso(),
        run_id=run_id,
    )
    return row


def _add_timings(row: dict[str, Any], status: JobStatus) -> None:
    timings = status.timings_s
    for stage in TIMED_STAGES:
        row[f"seconds_{stage}"] = timings.get(stage)
    row["seconds_total"] = timings.get("total") or (round(sum(timings.values()), 3) if timings else None)


def _keep_outputs(item: AuditItem, key: str, folder: JobFolder, paths: AuditPaths) -> Path:
    name = f"{item.followup_date or 'undated'}_{item.task}_{key[:8]}"
    destination = paths.followups / item.patient_alias / name
    staging = destination.with_name(f"{name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(folder.outputs, staging)
    shutil.rmtree(destination, ignore_errors=True)
    staging.rename(destination)
    return destination


def _add_report(row: dict[str, Any], report: dict[str, Any]) -> None:
    lesion, prompt, registration = report["lesion"], report["prompt"], report["registration"]
    dose = report.get("lesion_dose") or {}
    qa = registration.get("qa") or {}
    v_percent = dose.get("v_percent") or {}
    row.update(
        task=report["task"],
        lesion_found=not lesion["empty"],
        lesion_volume_cc=lesion["volume_cc"],
        lesion_components=lesion["components"],
        lesion_dmean_gy=dose.get("dmean_gy"),
        lesion_dmax_gy=dose.get("dmax_gy"),
        lesion_d98_gy=dose.get("d98_gy"),
        lesion_d2cc_gy=dose.get("d2cc_gy"),
        lesion_v50gy_pct=v_percent.get("V50Gy"),
        lesion_v60gy_pct=v_percent.get("V60Gy"),
        lesion_v70gy_pct=v_percent.get("V70Gy"),
        plan_dmax_gy=prompt["dmax_gy"],
        tau=prompt["tau"],
        high_dose_threshold_gy=prompt["threshold_gy"],
        high_dose_roi_cc=prompt["high_dose_roi_volume_cc"],
        registration_method=registration["method"],
        registration_needs_review=registration["needs_review"],
        registration_metric_before=qa.get("metric_before"),
        registration_metric_after=qa.get("metric_after"),
        body_overlap_before=qa.get("body_overlap_before"),
        body_overlap_after=qa.get("body_overlap_after"),
        registration_flags=" | ".join(registration.get("flags") or []) or None,
        warnings=" | ".join(report.get("warnings") or []) or None,
        model_id=report["model"]["model_id"],
        weights_sha256=report["model"]["weights_sha256"],
    )


def _add_centroid(row: dict[str, Any], report: dict[str, Any], folder: JobFolder) -> None:
    """The lesion centroid in the planning CT's frame: every follow-up of a patient is registered
    to that one CT, so positions compare over time (each follow-up has a frame of its own)."""
    centroid = report["lesion"].get("centroid_mm")
    if not centroid:
        return
    planning = handoff.load_transform(folder.work).TransformPoint(tuple(float(v) for v in centroid))
    row["lesion_centroid_x_mm"], row["lesion_centroid_y_mm"], row["lesion_centroid_z_mm"] = (
        round(float(v), 2) for v in planning
    )
