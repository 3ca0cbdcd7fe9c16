"""``rtinjury run``: every stage in this process on one patient's folder or zip of DICOM."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from service.cli.output import emit_json, progress_line, say


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "run",
        help="segment and measure the injury on one patient's follow-up (all stages, this process)",
        description=(
            "Reads PATH (a folder or zip with the follow-up scan, the planning CT and the RTDOSE, "
            "plus RTPLAN/RTSTRUCT/REG when present), registers, carries the dose over, derives the "
            "high-dose box, runs the network and writes seg.dcm, rtstruct.dcm, sr.dcm, report.json "
            "and preview.png into OUT. Needs no Redis and no GPU."
        ),
    )
    parser.add_argument("path", type=Path, help="folder or zip of one patient's DICOM")
    add_job_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("rtinjury-out"), help="folder for the outputs")
    parser.set_defaults(handler=run)


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The request options ``run`` and ``demo`` share with the REST API."""
    parser.add_argument("--task", choices=["orn", "ce", "crn"], default=None, help="default: from the scan")
    parser.add_argument("--clinical-text", default=None, help="free-text clinical note for the text prompt")
    parser.add_argument("--tau", type=float, default=0.8, help="high-dose fraction of Dmax (0-1)")
    parser.add_argument("--followup-series-uid", default=None, help="which follow-up, when several")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint or ONNX folder (default: demo)")
    parser.add_argument("--threads", type=int, default=None, help="threads for registration and inference")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from worker.errors import InputError

    if not args.path.exists():
        raise InputError(f"{args.path}: no such file or folder")
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"{args.out}: exists and is not a folder; give --out a folder for the outputs")
    report, seconds = run_case(args.path, args.out, args)
    if args.json:
        emit_json(report)
    else:
        print_summary(report, args.out, seconds)
    return 0


def run_case(source: Path, out: Path, args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    """All stages on ``source``; the outputs are copied into ``out``; returns the report and the
    seconds the stages took (the network's loading not included)."""
    from pydantic import ValidationError

    from worker.errors import InputError
    from worker.jobs.folder import JobFolder
    from worker.jobs.selection import select_case
    from worker.jobs.spec import JobSpec, write_spec
    from worker.settings import WorkerSettings

    try:
        spec = JobSpec(
            task=args.task,
            clinical_text=args.clinical_text,
            tau=args.tau,
            followup_series_uid=args.followup_series_uid,
        )
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise InputError(problems) from None
    settings = WorkerSettings(model=args.model, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="rtinjury-run-") as scratch:
        folder = JobFolder(Path(scratch) / "job", source=source.resolve()).create()
        write_spec(spec, folder.spec_path)
        # Headers only, well under a second: files that make no case are refused before the
        # network takes its seconds to load (the prepare stage checks the same again).
        select_case(folder, spec, settings.role_rules)
        from worker.jobs import pipeline  # the network's imports (torch): after the check
        from worker.jobs.progress import StatusReporter
        from worker.runtime import get_runtime

        say_progress = _progress_printer(args.json)
        say_progress("loading the network")
        runtime = get_runtime(settings)
        reporter = StatusReporter(
            folder, on_change=lambda s: say_progress(f"[{s.progress:3d}%] {s.stage or 'done'}")
        )
        pipeline.run_job(folder, settings, runtime, reporter)
        publish_outputs(folder.outputs, out)
    return _read_report(out), reporter.status.timings_s["total"]


def publish_outputs(produced: Path, out: Path) -> None:
    """Put the outputs into ``out`` so that a failure leaves what it held as it was.

    Everything is first copied into a hidden folder inside ``out`` (where a full disk shows),
    then each file is renamed over its namesake: a rename on one file system cannot fail half way.

    Raises
    ------
    worker.errors.InputError
        ``out`` cannot be created or written (permissions, a full disk); nothing in it changed.
    """
    from worker.errors import InputError

    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".rtinjury-partial-", dir=out))
    except OSError as error:
        raise InputError(f"{out}: cannot be created or written ({error.strerror or error})") from None
    try:
        try:
            for path in produced.iterdir():
                shutil.copy2(path, staging / path.name)
        except OSError as error:
            raise InputError(
                f"{out}: the outputs could not be written ({error.strerror or error}); what the "
                "folder held before is unchanged"
            ) from None
        for path in sorted(staging.iterdir()):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _progress_printer(machine: bool) -> Any:
    shown: set[str] = set()

    def tell(text: str) -> None:
        if text not in shown:  # a stage reports twice (start, warnings); show it once
            shown.add(text)
            progress_line(text, machine=machine)

    return tell


def _read_report(out: Path) -> dict[str, Any]:
    import json

    document: dict[str, Any] = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return document


def print_summary(report: dict[str, Any], out: Path, seconds: float) -> None:
    """A few lines a clinician reads first; the report has everything."""
    lesion = report["lesion"]
    dose = report.get("lesion_dose") or {}
    say(f"{report['finding_label']} — AI-generated, not reviewed")
    if lesion["empty"]:
        say("  no lesion found inside the high-dose region")
    else:
        say(f"  lesion volume {lesion['volume_cc']:.2f} cc in {lesion['components']} component(s)")
    if dose:
        say(f"  dose in lesion: mean {dose['dmean_gy']:.1f} Gy, max {dose['dmax_gy']:.1f} Gy")
    say(f"  registration: {report['registration']['method']}")
    for warning in report.get("warnings", []):
        say(f"  warning: {warning}")
    say(f"  took {seconds:.1f} s")
    say(f"outputs in {out}/: " + ", ".join(sorted(p.name for p in out.iterdir() if p.is_file())))
