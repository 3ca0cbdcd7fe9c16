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
    parser.add_argument(
        "--prompt",
        action="store_true",
        help="also register each follow-up, carry the dose over and show the high-dose region and box",
    )
    parser.add_argument("--tau", type=float, default=0.8, help="high-dose fraction of Dmax (default 0.8)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from service.config import get_settings
    from worker.stages.assemble.case import assemble_cases
    from worker.stages.assemble.rules import load_rules
    from worker.stages.inspect import describe_assembly
    from worker.stages.prepare import prepare_case
    from worker.stages.read.case_data import read_case

    rules = load_rules(args.rules or get_settings().role_rules)
    with tempfile.TemporaryDirectory(prefix="rtinjury-inspect-") as workdir:
        assembly = assemble_cases(args.paths, Path(workdir), rules)
        data = [read_case(c) for c in assembly.cases]
        prepared = (
            [prepare_case(c, d, tau=args.tau) for c, d in zip(assembly.cases, data, strict=True)]
            if args.prompt
            else None
        )
        report = describe_assembly(assembly, data, prepared)
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
        if "prompt" in case:
            _print_prompt(case["prompt"])
        for warning in case["warnings"]:
            say(f"  warning: {warning}")
    for item in report["ignored"]:
        say(f"ignored: {item}")
    if report["not_dicom_files"]:
        say(f"ignored: {report['not_dicom_files']} file(s) that are not DICOM")


def _print_prompt(prompt: dict[str, Any]) -> None:
    reg, region, dose = prompt["registration"], prompt["high_dose_region"], prompt["region_dose"]
    say(
        f"  {'registration':<12} {reg['method']}, rotation {reg['rotation_degrees']:.2f}°, translation "
        f"{reg['translation_mm']:.2f} mm, {reg['seconds']:.1f} s"
        + ("" if reg["body_overlap_after"] is None else f", body overlap {reg['body_overlap_after']:.3f}")
    )
    for flag in reg["flags"]:
        say(f"  warning: registration needs review: {flag}")
    say(
        f"  {'high dose':<12} dose ≥ {region['tau']:g}·Dmax = {region['threshold_gy']:.2f} Gy: "
        f"{region['volume_cc']:.1f} cc, box {region['box_corner_min_mm']} → {region['box_corner_max_mm']} mm "
        f"(voxels {region['box_index_min']} → {region['box_index_max']}); dose covers "
        f"{prompt['dose_coverage_percent']:.0f}% of the follow-up"
    )
    say(
        f"  {'region dose':<12} Dmean {dose['mean_gy']:.2f} Gy, D98 {dose['d98_gy']:.2f} Gy, "
        f"D2 {dose['d2_gy']:.2f} Gy, V60Gy {dose['V60Gy']:.1f}%"
    )
    for warning in prompt["warnings"]:
        say(f"  warning: {warning}")


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
