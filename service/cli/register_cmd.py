"""``rtinjury register``: register a follow-up scan to the planning CT and write the transform."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.cli.output import emit_json, say

if TYPE_CHECKING:
    import SimpleITK as sitk

    from worker.stages.register.result import RegistrationResult

#: Image files read with SimpleITK (anything else must be a folder of DICOM files).
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")
#: Below this minimum an image without a Modality is taken for CT in HU (air is -1000).
CT_MINIMUM_HU = -500.0


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "register",
        help="register a follow-up scan (FIXED) to the planning CT (MOVING) and write the transform",
        description=(
            "FIXED and MOVING are folders holding one DICOM image series each, or image files "
            f"({', '.join(IMAGE_SUFFIXES)}). The transform maps follow-up points to planning CT "
            "points (ITK convention), so it resamples the planning dose onto the follow-up as is."
        ),
    )
    parser.add_argument("fixed", type=Path, metavar="FIXED", help="follow-up scan (CT or MR)")
    parser.add_argument("moving", type=Path, metavar="MOVING", help="planning CT")
    parser.add_argument("--out", type=Path, required=True, help="transform file to write (.tfm or .h5)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--deformable", action="store_true", help="always refine with a B-spline")
    mode.add_argument("--rigid-only", action="store_true", help="never refine with a B-spline")
    parser.add_argument(
        "--fixed-modality",
        choices=["CT", "MR"],
        default=None,
        help="modality of FIXED (default: the DICOM Modality, else guessed from the intensities)",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the metric sampling (default 42)")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from worker.errors import InputError, RegistrationError
    from worker.stages.register.intensity import register_images
    from worker.stages.register.transforms import TRANSFORM_SUFFIXES, write_transform

    if args.out.suffix.lower() not in TRANSFORM_SUFFIXES:
        raise InputError(f"--out must end in one of {', '.join(TRANSFORM_SUFFIXES)}: {args.out.name}")
    fixed, fixed_modality = read_volume(args.fixed)
    moving, _ = read_volume(args.moving)
    modality = args.fixed_modality or fixed_modality or guess_modality(fixed)
    deformable = True if args.deformable else (False if args.rigid_only else None)
    try:
        result = register_images(
            fixed, moving, fixed_modality=modality, deformable=deformable, seed=args.seed
        )
    except RegistrationError as exc:
        # The images cannot be brought together at all: a problem with what was given.
        raise InputError(exc.message) from exc
    write_transform(result.transform, args.out)
    report = describe(result, args, modality)
    if args.json:
        emit_json(report)
    else:
        _print_report(report)
    if result.needs_review:
        sys.stderr.write(f"rtinjury: warning: registration needs review ({'; '.join(result.flags)})\n")
    return 0


def read_volume(path: Path) -> tuple[sitk.Image, str | None]:
    """Read an image file or a folder holding one DICOM series; also return its Modality."""
    from worker.errors import InputError

    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_series_folder(path)
    if not path.name.lower().endswith(IMAGE_SUFFIXES):
        raise InputError(
            f"{path.name}: not an image file ({', '.join(IMAGE_SUFFIXES)}) or a folder of DICOM files"
        )
    return _read_image_file(path), None


def _read_series_folder(folder: Path) -> tuple[sitk.Image, str | None]:
    from worker.errors import InputError
    from worker.stages.read.files import read_header
    from worker.stages.read.series import read_image_series

    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise InputError(f"{folder}: the folder holds no files")
    series = {str(read_header(p).get("SeriesInstanceUID", "")) for p in files}
    if len(series) > 1:
        raise InputError(f"{folder}: the folder holds {len(series)} image series; give a folder with one")
    volume = read_image_series(files)
    return volume.image, volume.modality or None


def _read_image_file(path: Path) -> sitk.Image:
    import SimpleITK as sitk

    from worker.errors import InputError

    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path.name}: not a readable image file") from exc


def guess_modality(image: sitk.Image) -> str:
    """CT when the image holds HU-like air values, else MR."""
    import SimpleITK as sitk

    statistics = sitk.MinimumMaximumImageFilter()
    statistics.Execute(image)
    return "CT" if statistics.GetMinimum() < CT_MINIMUM_HU else "MR"


def describe(result: RegistrationResult, args: argparse.Namespace, modality: str) -> dict[str, Any]:
    """The JSON report of one registration."""
    return {
        "fixed": str(args.fixed),
        "moving": str(args.moving),
        "fixed_modality": modality,
        "transform_file": str(args.out),
        "convention": "maps follow-up (fixed) points to planning CT (moving) points",
        "method": result.method.value,
        "qa": asdict(result.qa),
        "needs_review": result.needs_review,
        "flags": list(result.flags),
        "notes": list(result.notes),
    }


def _print_report(report: dict[str, Any]) -> None:
    qa = report["qa"]
    say(f"method       {report['method']} ({report['fixed_modality']} follow-up → planning CT)")
    metric = f"{_num(qa['metric_before'], 4)} → {_num(qa['metric_after'], 4)}"
    say(f"metric       {metric} (Mattes MI, lower is better)")
    say(f"body Dice    {_num(qa['body_overlap_before'], 3)} → {_num(qa['body_overlap_after'], 3)}")
    say(f"rotation     {qa['rotation_degrees']:.2f}°")
    say(f"translation  {qa['translation_mm']:.2f} mm (at the follow-up centre)")
    if qa["jacobian_min"] is not None:
        say(f"Jacobian     {qa['jacobian_min']:.3f} – {qa['jacobian_max']:.3f}")
    say(f"time         {qa['seconds']:.1f} s")
    say(f"transform    {report['transform_file']} ({report['convention']})")
    for note in report["notes"]:
        say(f"note: {note}")
    for flag in report["flags"]:
        say(f"warning: {flag}")


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
