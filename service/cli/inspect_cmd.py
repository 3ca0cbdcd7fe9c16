"""``rtinjury inspect``: show the cases the assembler finds in a folder, zip or files."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from service.cli.output import emit_json, say


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "inspect", help="show roles, geometry, dose and warnings of the cases in PATH"
    )
    parser.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="folder, zip, or DICOM files")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.add_argument(
        "--rules",
        type=Path,
        default=None,
        help="site role-rules YAML (default: $RTINJURY_ROLE_RULES, else the packaged rules)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from service.config import get_settings
    from worker.stages.assemble.case import assemble_cases
    from worker.stages.assemble.rules import load_rules
    from worker.stages.inspect import describe_assembly
    from worker.stages.read.case_data import read_case

    rules = load_rules(args.rules or get_settings().role_rules)
    with tempfile.TemporaryDirectory(prefix="rtinjury-inspect-") as workdir:
        assembly = assemble_cases(args.paths, Path(workdir), rules)
        report = describe_assembly(assembly, [read_case(c) for c in assembly.cases])
    if args.json:
        emit_json(report)
    else:
        _print_report(report)
    return 0


def _print_report(report: dict[str, Any]) -> None:
    cases = report["cases"]
    for number, case in enumerate(cases, start=1):
        say(
            f"Case {number} of {len(cases)}: task {case['task'].upper()} "
            f"(follow-up {case['followup_kind']}), patient {case['patient_alias']}"
        )
        say(_image_line("follow-up", case["followup"]))
        say(_image_line("planning CT", case["planning_ct"]))
        dose = case["rtdose"]
        say(
            f"  {'RTDOSE':<12} {dose['instances']} instance(s), {dose['summation_type']}, "
            f"Dmax {dose['max_gy']:.2f} Gy, grid {_size(dose)} at {_spacing(dose)} mm, "
            f"offsets {dose['offsets_form']}, FoR {_short(dose['frame_of_reference_uid'])}"
        )
        plan = case["rtplan"]
        say(
            f"  {'RTPLAN':<12} "
            + (
                "none"
                if plan is None
                else f"'{plan['label']}', prescription {_gy(plan['prescription_gy'])} in "
                f"{plan['fractions'] or '?'} fraction(s), {plan['approval_status'] or 'no approval status'}"
            )
        )
        say(
            f"  {'other':<12} RTSTRUCT {case['rtstruct']}, REG {case['reg']}, SEG {case['seg']}; "
            f"registration {'needed' if case['registration_needed'] else 'not needed (same FoR)'}"
        )
        for warning in case["warnings"]:
            say(f"  warning: {warning}")
    for item in report["ignored"]:
        say(f"ignored: {item}")
    if report["not_dicom_files"]:
        say(f"ignored: {report['not_dicom_files']} file(s) that are not DICOM")


def _image_line(role: str, image: dict[str, Any]) -> str:
    return (
        f"  {role:<12} {image['modality']} '{image['description']}' {_size(image)} at "
        f"{_spacing(image)} mm, {image['orientation']}, {image['patient_position'] or '?'}, "
        f"date {image['date'] or '?'}, FoR {_short(image['frame_of_reference_uid'])}"
    )


def _size(item: dict[str, Any]) -> str:
    return "x".join(str(v) for v in item["size"])


def _spacing(item: dict[str, Any]) -> str:
    return "x".join(f"{v:g}" for v in item["spacing_mm"])


def _short(uid: str) -> str:
    return "…" + uid[-12:] if len(uid) > 14 else uid


def _gy(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g} Gy"
