"""``rtinjury demo``: a synthetic patient made here, run through every stage with the demo model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from service.cli.output import emit_json, progress_line
from service.cli.run_cmd import add_job_arguments, print_summary, run_case

#: One fixed synthetic patient: the same demo on every machine.
DEMO_SEED = 9100


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "demo",
        help="make a synthetic patient and run it end to end (no Redis, no GPU, no downloads)",
        description=(
            "Writes a synthetic head-and-neck patient (planning CT, RTPLAN, RTDOSE, follow-up scan) "
            "into OUT/patient, runs every stage on it with the shipped demo network and writes the "
            "outputs into OUT/results."
        ),
    )
    parser.add_argument(
        "--out", type=Path, default=Path("rtinjury-demo"), help="folder for patient and results"
    )
    parser.add_argument(
        "--injury", choices=["orn", "ce", "crn"], default="orn", help="which injury the patient has"
    )
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="synthetic patient seed")
    add_job_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from models.synth import write_synthetic_patients

    progress_line("writing a synthetic patient", machine=args.json)
    patient = write_synthetic_patients(args.out / "patient", task=args.injury, cases=1, seed=args.seed)[0]
    results = args.out / "results"
    report, seconds = run_case(patient, results, args)
    if args.json:
        emit_json(report)
    else:
        print_summary(report, results, seconds)
    return 0
