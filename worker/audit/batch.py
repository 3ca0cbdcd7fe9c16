"""A whole audit: discover the archive's follow-ups, run what is not done yet, write the tables.

``run_audit`` is what ``rtinjury audit`` calls once the source is a folder (a PACS source is
retrieved into the audit folder first). The tables and the summary are rebuilt from the
records at the end of every run, interrupted or not, so they always show exactly the finished
follow-ups of the archive as it is now.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

from worker.audit.discovery import AuditItem, Discovery, discover
from worker.audit.items import ItemSettings
from worker.audit.ledger import AuditPaths, FileDigests, Ledger, finished_rows, settings_fingerprint
from worker.audit.rows import FAILED, SUCCEEDED
from worker.audit.runner import (
    Plan,
    RunContext,
    celery_dispatcher,
    make_plan,
    run_celery_items,
    run_local_items,
)
from worker.jobs.spec import JobOptions
from worker.runtime import model_fingerprint
from worker.settings import WorkerSettings
from worker.stages.assemble.rules import load_rules
from worker.stages.prompts import DEFAULT_TAU


@dataclass(frozen=True)
class AuditOptions:
    out: Path
    workers: int = 1
    celery: bool = False
    retry_failed: bool = False
    include_patient_ids: bool = False
    tau: float = DEFAULT_TAU
    job_options: JobOptions = field(default_factory=JobOptions)
    #: Only follow-ups acquired in this range (inclusive) are audited; the planning data may be older.
    followups_from: dt.date | None = None
    followups_to: dt.date | None = None
    #: A line for the summary saying where the data came from (a folder, a PACS).
    source_label: str | None = None


class AuditProgress(Protocol):
    def discovering(self, patient_alias: str) -> None: ...

    def planned(self, plan: Plan) -> None: ...

    def finished(self, row: dict[str, Any]) -> None: ...


@dataclass
class AuditResult:
    discovery: Discovery
    plan: Plan
    rows: list[dict[str, Any]]
    processed: int
    interrupted: bool
    seconds: float
    outputs: list[Path]

    @property
    def succeeded(self) -> int:
        return sum(1 for row in self.rows if row["status"] == SUCCEEDED)

    @property
    def failed(self) -> int:
        return sum(1 for row in self.rows if row["status"] == FAILED)


def software_version() -> str:
    try:
        return version("rtinjury")
    except PackageNotFoundError:
        return "unknown"


def run_audit(
    source: Path, options: AuditOptions, settings: WorkerSettings, progress: AuditProgress | None = None
) -> AuditResult:
    """Audit every follow-up under ``source`` into ``options.out``.

    Raises
    ------
    worker.errors.InputError
        The source holds no DICOM, or Celery mode has no broker.
    models.errors.CheckpointError
        The configured weights are not there.
    """
    started = time.perf_counter()
    if options.celery:
        celery_dispatcher(settings)  # no broker: say so before reading the archive
    paths = AuditPaths(options.out).create()
    ledger = Ledger(paths)
    discovery = discover(
        source,
        load_rules(settings.role_rules),
        exclude=options.out,
        progress=progress.discovering if progress else None,
    )
    discovery.items = [item for item in discovery.items if _in_range(item, options)]
    plan = make_plan(
        discovery,
        ledger,
        FileDigests(paths.state / "file-digests.json"),
        _fingerprint(options, settings),
        retry_failed=options.retry_failed,
    )
    if progress:
        progress.planned(plan)
    run_id = ledger.start_run({"to_run": len(plan.to_run), "items": len(plan.keyed)})
    processed = 0

    def finished(row: dict[str, Any]) -> None:
        nonlocal processed
        processed += 1
        if progress:
            progress.finished(row)

    context = RunContext(paths, ItemSettings(options.tau, options.job_options), settings, run_id)
    interrupted = False
    try:
        if options.celery:
            run_celery_items(plan.to_run, context, max(2, 2 * options.workers), finished)
        else:
            run_local_items(plan.to_run, context, options.workers, finished)
    except KeyboardInterrupt:
        interrupted = True
    rows = _table_rows(ledger, plan, options)
    seconds = time.perf_counter() - started
    outputs = write_outputs(rows, options, discovery, _run_facts(options, settings, plan, processed, seconds))
    ledger.end_run(run_id, {"processed": processed, "interrupted": interrupted})
    return AuditResult(discovery, plan, rows, processed, interrupted, seconds, outputs)


def _in_range(item: AuditItem, options: AuditOptions) -> bool:
    if item.followup_date is None or (options.followups_from is None and options.followups_to is None):
        return True  # a patient-level failure has no date and is always reported
    day = dt.date.fromisoformat(item.followup_date)
    after_start = options.followups_from is None or day >= options.followups_from
    return after_start and (options.followups_to is None or day <= options.followups_to)


def _fingerprint(options: AuditOptions, settings: WorkerSettings) -> str:
    values = {
        "tau": options.tau,
        "options": options.job_options.model_dump(mode="json"),
        "text_encoder": str(settings.text_encoder),
        "role_rules": str(settings.role_rules) if settings.role_rules else None,
    }
    return settings_fingerprint(model_fingerprint(settings), values, software_version())


def _table_rows(ledger: Ledger, plan: Plan, options: AuditOptions) -> list[dict[str, Any]]:
    rows = finished_rows(ledger, plan.keys)
    if options.include_patient_ids:
        patient_of = {key[:16]: item.patient_id for key, item in plan.keyed}
        for row in rows:
            row["patient_id"] = patient_of.get(row["key"])
    return rows


def _run_facts(
    options: AuditOptions, settings: WorkerSettings, plan: Plan, processed: int, seconds: float
) -> dict[str, Any]:
    return {
        "source": options.source_label,
        "model": str(settings.model) if settings.model else "shipped demo model (not for clinical use)",
        "tau": options.tau,
        "follow-ups in the archive": len(plan.keyed),
        "processed by this run": processed,
        "finished before": plan.finished + plan.failed_kept,
        "run time (s)": round(seconds, 1),
        "software": f"rtinjury {software_version()}",
    }


def write_outputs(
    rows: list[dict[str, Any]], options: AuditOptions, discovery: Discovery, facts: dict[str, Any]
) -> list[Path]:
    """audit.csv, audit.parquet, patients.csv, summary.html (and unplaced-files.csv when needed)."""
    from worker.audit.summary import write_summary
    from worker.audit.tables import write_tables
    from worker.audit.trends import patient_trends

    tables = write_tables(rows, options.out, include_patient_ids=options.include_patient_ids)
    trends = patient_trends(rows)
    summary = write_summary(rows, trends, options.out, run_facts=facts)
    written = [tables.audit_csv, tables.audit_parquet, tables.patients_csv, summary]
    if discovery.unplaced:
        written.append(_write_unplaced(discovery, options.out))
    return written


def _write_unplaced(discovery: Discovery, out: Path) -> Path:
    import csv
    import io

    from models.files import write_atomically

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "problem"])
    writer.writerows(discovery.unplaced)
    path = out / "unplaced-files.csv"
    write_atomically(path, buffer.getvalue().encode("utf-8"))
    return path


__all__ = ["AuditOptions", "AuditPaths", "AuditResult", "run_audit", "write_outputs"]
