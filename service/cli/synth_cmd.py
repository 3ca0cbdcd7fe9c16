"""``rtinjury synth``: write synthetic head-and-neck patients as DICOM."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from service.cli.output import say


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "synth",
        help="write synthetic DICOM-RT patients (planning CT, RTPLAN, RTDOSE, follow-up, ground truth)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per case)")
    parser.add_argument("--task", choices=["orn", "ce", "crn", "all"], default="all")
    parser.add_argument("--cases", type=int, default=1, help="cases per task (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files")
    parser.add_argument(
        "--followups",
        type=int,
        default=1,
        help="follow-up scans per patient; from 2 on, the lesion grows, shrinks or peaks by construction",
    )
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from models.synth import write_synthetic_patients

    try:
        folders = write_synthetic_patients(
            args.out,
            task=args.task,
            cases=args.cases,
            seed=args.seed,
            followups=args.followups,
            size=args.size,
        )
    except ValueError as exc:
        from worker.errors import InputError

        raise InputError(str(exc)) from exc
    for folder in folders:
        say(str(folder))
    return 0
