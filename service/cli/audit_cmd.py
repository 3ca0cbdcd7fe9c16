"""``rtinjury audit``: every follow-up of an archive (a folder tree or a PACS) through the pipeline."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

from service.cli.output import emit_json, say


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "audit",
        help="audit an archive: every follow-up of every patient, one table, trends and a summary",
        description=(
            "Finds every patient, planning CT, RTDOSE and follow-up scan under SOURCE (any folder "
            "layout) or on a PACS (--pacs), runs each follow-up through the pipeline and writes "
            "audit.csv, audit.parquet, patients.csv (trends per patient) and summary.html into OUT. "
            "A re-run skips finished follow-ups (same files, same model and settings)."
        ),
    )
    parser.add_argument("source", type=Path, nargs="?", help="folder tree of DICOM (not with --pacs)")
    parser.add_argument("--out", type=Path, required=True, help="audit folder (tables, outputs, state)")
    parser.add_argument("--workers", type=int, default=1, help="follow-ups processed at once (default 1)")
    parser.add_argument("--celery", action="store_true", help="queue jobs for the Celery workers instead")
    parser.add_argument("--retry-failed", action="store_true", help="run failed follow-ups again")
    parser.add_argument("--tau", type=float, default=0.8, help="high-dose fraction of Dmax (0-1)")
    parser.add_argument(
        "--rigid-only", action="store_true", help="no deformable refinement of the registration (faster)"
    )
    parser.add_argument("--model", type=Path, default=None, help="checkpoint or ONNX folder (default: demo)")
    parser.add_argument("--threads", type=int, default=None, help="threads per worker")
    parser.add_argument(
        "--include-patient-ids", action="store_true", help="add PatientID columns (tables are pseudonymous)"
    )
    parser.add_argument(
        "--since", type=_date, default=None, help="follow-ups acquired on or after YYYY-MM-DD"
    )
    parser.add_argument(
        "--until", type=_date, default=None, help="follow-ups acquired on or before YYYY-MM-DD"
    )
    pacs = parser.add_argument_group("PACS source")
    pacs.add_argument("--pacs", default=None, metavar="AET@HOST:PORT", help="query and retrieve from a PACS")
    pacs.add_argument("--patients", default=None, help="comma-separated PatientIDs to retrieve")
    pacs.add_argument("--patients-file", type=Path, default=None, help="file with one PatientID per line")
    pacs.add_argument("--ae-title", default="RTINJURY_AUDIT", help="our AE title (the C-MOVE destination)")
    pacs.add_argument("--move-port", type=int, default=11113, help="port our C-MOVE receiver listens on")
    pacs.add_argument("--move-host", default="127.0.0.1", help="address our C-MOVE receiver binds")
    pacs.add_argument("--retrieve", choices=["move", "get"], default="move", help="C-MOVE (default) or C-GET")
    parser.add_argument("--json", action="store_true", help="print the run's figures as JSON")
    parser.set_defaults(handler=run)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def run(args: argparse.Namespace) -> int:
    from worker.audit.batch import AuditOptions, run_audit
    from worker.errors import InputError
    from worker.jobs.spec import JobOptions
    from worker.settings import WorkerSettings

    _check_arguments(args)
    settings = WorkerSettings(model=args.model, threads=args.threads or _threads_per_worker(args.workers))
    source, label = _source(args)
    options = AuditOptions(
        out=args.out,
        workers=args.workers,
        celery=args.celery,
        retry_failed=args.retry_failed,
        include_patient_ids=args.include_patient_ids,
        tau=args.tau,
        job_options=JobOptions(deformable=False) if args.rigid_only else JobOptions(),
        followups_from=args.since,
        followups_to=args.until,
        source_label=label,
    )
    if not 0 < args.tau < 1:
        raise InputError("--tau must lie between 0 and 1")
    progress = _Progress(quiet=args.json)
    try:
        result = run_audit(source, options, settings, progress)
    finally:
        progress.close()
    figures = {
        "patients": result.discovery.patients,
        "followups": len(result.rows),
        "succeeded": result.succeeded,
        "failed": result.failed,
        "processed": result.processed,
        "skipped": result.plan.finished + result.plan.failed_kept,
        "interrupted": result.interrupted,
        "seconds": round(result.seconds, 1),
        "outputs": [str(path) for path in result.outputs],
    }
    if args.json:
        emit_json(figures)
    else:
        _print_summary(figures, args.out)
    return 130 if result.interrupted else 0


def _check_arguments(args: argparse.Namespace) -> None:
    from worker.errors import InputError

    if args.pacs and args.source:
        raise InputError("give either SOURCE or --pacs, not both")
    if not args.pacs and not args.source:
        raise InputError("give a SOURCE folder or --pacs AET@HOST:PORT")
    if args.workers < 1:
        raise InputError("--workers must be at least 1")
    if args.source and not args.source.is_dir():
        raise InputError(f"{args.source}: not a folder")


def _threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _source(args: argparse.Namespace) -> tuple[Path, str]:
    """The folder to audit: SOURCE, or the PACS's studies retrieved into the audit folder."""
    if not args.pacs:
        return args.source, f"folder {args.source}"
    from worker.audit.ledger import AuditPaths
    from worker.audit.pacs import PacsPeer, PacsQuery, RetrieveOptions, retrieve
    from worker.errors import InputError

    # pynetdicom logs every association and DIMSE message at INFO, with UIDs: warnings only.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)

    peer = PacsPeer.parse(args.pacs)
    query = PacsQuery(patient_ids=_patient_ids(args), date_from=args.since, date_to=args.until)
    options = RetrieveOptions(
        calling_ae=args.ae_title, move_host=args.move_host, move_port=args.move_port, method=args.retrieve
    )
    destination = AuditPaths(args.out).create().retrieved
    say(f"querying {peer.ae_title} at {peer.host}:{peer.port}")
    retrieval = retrieve(peer, query, destination, options, progress=lambda text: say(f"  {text}"))
    for alias, reason in retrieval.failures:
        say(f"  not retrieved: {alias}: {reason}")
    if not retrieval.studies:
        raise InputError("the PACS query found no study to retrieve")
    reused = sum(1 for study in retrieval.studies if study.reused)
    say(f"{len(retrieval.studies)} stud(ies) ready ({reused} from an earlier run)")
    return destination, f"PACS {peer.ae_title}@{peer.host}:{peer.port}"


def _patient_ids(args: argparse.Namespace) -> tuple[str, ...]:
    from worker.errors import InputError

    ids = [p.strip() for p in (args.patients or "").split(",") if p.strip()]
    if args.patients_file is not None:
        try:
            lines = args.patients_file.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise InputError(f"{args.patients_file}: cannot be read ({error.strerror})") from None
        ids += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return tuple(dict.fromkeys(ids))


class _Progress:
    """A progress bar with ETA on stderr and one line per finished follow-up (aliases only)."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None

    def discovering(self, patient_alias: str) -> None:
        return None

    def planned(self, plan: Any) -> None:
        from tqdm import tqdm

        skipped = plan.finished + plan.failed_kept
        if not self.quiet:
            say(f"{len(plan.keyed)} follow-up(s) found; {skipped} done before, {len(plan.to_run)} to run")
        self.bar = tqdm(total=len(plan.to_run), unit="follow-up", disable=self.quiet, dynamic_ncols=True)

    def finished(self, row: dict[str, Any]) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if not self.quiet:
            self.bar.write(_row_line(row))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _row_line(row: dict[str, Any]) -> str:
    where = (
        f"{row['patient_alias']} {row.get('followup_date') or ''} {(row.get('task') or '').upper()}".strip()
    )
    if row["status"] != "succeeded":
        return f"{where}: failed ({row.get('failed_stage') or '?'}): {row.get('error')}"
    if not row.get("lesion_found"):
        return f"{where}: no lesion in the high-dose region"
    return f"{where}: lesion {row['lesion_volume_cc']:.2f} cc"


def _print_summary(figures: dict[str, Any], out: Path) -> None:
    state = "interrupted; run again to continue" if figures["interrupted"] else "done"
    say(
        f"audit {state}: {figures['followups']} follow-up(s) of {figures['patients']} patient(s), "
        f"{figures['succeeded']} succeeded, {figures['failed']} failed "
        f"({figures['processed']} processed now, {figures['skipped']} from earlier runs)"
    )
    say(f"tables and summary in {out}/: " + ", ".join(Path(p).name for p in figures["outputs"]))
