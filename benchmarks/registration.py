"""Benchmark: our registration against plastimatch on synthetic head pairs with a known transform.

Writes two synthetic patients (``rtinjury synth --size full``): a CRN case whose contrast-T1 MR
follow-up is resampled onto a 256×256×160 grid (CT→MR), and an ORN case with a CT follow-up
(CT→CT). On each pair it runs, in one process and with the same thread count:

- ours, rigid only and rigid + B-spline (``register_images``);
- ``plastimatch register`` with comparable stages (rigid Mattes MI at ~4 then ~2 mm; B-spline
  MI, 64 mm control grid, at ~4 then ~2 mm, 10 iterations per level), starting from the
  identity (the synthetic scanner coordinates are within 15 mm, so it needs no start search),
  its output vector field read back to measure its error on the same points;

and prints the wall time of each (median of ``--rounds`` runs), the target registration error
(mean / max over 200 points inside the follow-up body, against the full true transform,
deformation included), the time ratio ours / plastimatch, and the cost of resampling the
planning dose onto the follow-up grid through the rigid + B-spline transform against through
its 2 mm displacement field. It prints the targets and whether they were met; it asserts
nothing.

    python benchmarks/registration.py [--threads 2] [--rounds 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.synth import TrueTransform, load_case, write_synthetic_patients
from worker.stages.read.rtdose import read_rtdose
from worker.stages.read.series import read_image_series
from worker.stages.register.intensity import register_images
from worker.stages.register.transforms import to_displacement_field

T = TypeVar("T")

POINTS = 200
MR_GRID = (256, 256, 160)
TARGETS = {"rigid CT→MR": 5.0, "deformable": 15.0, "dose resampling": 2.0}


@dataclass
class Pair:
    """One benchmark pair and the points where its error is measured."""

    name: str
    fixed: sitk.Image
    moving: sitk.Image
    modality: str
    truth: TrueTransform
    points: np.ndarray
    dose: sitk.Image


@dataclass
class Run:
    """One registration: wall time and the error at the pair's points."""

    label: str
    seconds: float
    tre_mean: float
    tre_max: float
    transform: sitk.Transform | None = None
    detail: str = ""


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for both tools (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per tool, median shown (default 3)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the images and plastimatch files here")
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="rtinjury-bench-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    try:
        say(f"machine: {os.cpu_count()} cores, {args.threads} threads for both tools; load {_load()}")
        pairs = _make_pairs(work)
        results = {
            pair.name: _benchmark_pair(pair, work / pair.name.split()[0], args.threads, args.rounds)
            for pair in pairs
        }
        _print_targets(results)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _make_pairs(work: Path) -> list[Pair]:
    started = time.perf_counter()
    crn = write_synthetic_patients(work / "synth", task="crn", size="full")[0]
    orn = write_synthetic_patients(work / "synth", task="orn", size="full")[0]
    say(f"synthetic patients written in {time.perf_counter() - started:.0f} s (not timed below)")
    mr_pair = _pair("CT→MR (CRN: contrast-T1 MR follow-up, planning CT)", crn, resample_to=MR_GRID)
    ct_pair = _pair("CT→CT (ORN: CT follow-up, planning CT)", orn)
    return [mr_pair, ct_pair]


def _pair(name: str, folder: Path, resample_to: tuple[int, int, int] | None = None) -> Pair:
    case = load_case(folder)
    followup = read_image_series(_files(folder / case["followups"][0]["image_dir"]))
    planning = read_image_series(_files(folder / "planning" / "ct"))
    fixed = followup.image if resample_to is None else _regrid(followup.image, resample_to)
    dose = read_rtdose(folder / case["planning"]["rtdose_file"]).image
    truth = TrueTransform.from_dict(case["true_transform"])
    return Pair(name, fixed, planning.image, followup.modality, truth, _body_points(fixed), dose)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _regrid(image: sitk.Image, size: tuple[int, int, int]) -> sitk.Image:
    """The same field of view on a ``size`` grid (the follow-up truth is unchanged by this)."""
    extent = np.array(image.GetSize()) * np.array(image.GetSpacing())
    spacing = extent / np.array(size)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    corner = np.array(image.GetOrigin()) - direction @ (np.array(image.GetSpacing()) / 2)
    origin = corner + direction @ (spacing / 2)
    return sitk.Resample(
        image,
        list(size),
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        spacing.tolist(),
        image.GetDirection(),
    )


def _body_points(image: sitk.Image, seed: int = 0) -> np.ndarray:
    values = sitk.GetArrayFromImage(image)
    threshold = -400.0 if values.min() < -500 else 0.2 * float(np.percentile(values, 99))
    inside = np.argwhere(values > threshold)
    chosen = inside[np.random.default_rng(seed).choice(len(inside), POINTS, replace=False)]
    return np.array([image.TransformIndexToPhysicalPoint([int(v) for v in zyx[::-1]]) for zyx in chosen])


def _errors(transform: sitk.Transform, pair: Pair) -> np.ndarray:
    mapped = np.array([transform.TransformPoint([float(v) for v in p]) for p in pair.points])
    return np.linalg.norm(mapped - pair.truth.apply(pair.points), axis=1)


def _benchmark_pair(pair: Pair, folder: Path, threads: int, rounds: int) -> dict[str, Run]:
    size = "x".join(str(v) for v in pair.fixed.GetSize())
    spacing = "x".join(f"{v:.2f}" for v in pair.fixed.GetSpacing())
    before = _errors(sitk.Transform(3, sitk.sitkIdentity), pair)
    say()
    say(f"pair {pair.name}")
    say(f"  follow-up {size} at {spacing} mm, planning CT {'x'.join(str(v) for v in pair.moving.GetSize())}")
    say(f"  {POINTS} points in the follow-up body; error before {before.mean():.2f} / {before.max():.2f} mm")
    runs = {
        "ours rigid": _median(lambda: _ours(pair, False, threads), rounds),
        "ours rigid+bspline": _median(lambda: _ours(pair, True, threads), rounds),
    }
    folder.mkdir(parents=True, exist_ok=True)
    _write_inputs(pair, folder)
    runs["plastimatch rigid"] = _median(lambda: _plastimatch(pair, folder, threads, bspline=False), rounds)
    runs["plastimatch rigid+bspline"] = _median(
        lambda: _plastimatch(pair, folder, threads, bspline=True), rounds
    )
    for run in runs.values():
        say(
            f"  {run.label:<27} {run.seconds:6.2f} s   TRE mean {run.tre_mean:.2f} max {run.tre_max:.2f} mm"
            + (f"   ({run.detail})" if run.detail else "")
        )
    for kind in ("rigid", "rigid+bspline"):
        ours, theirs = runs[f"ours {kind}"], runs[f"plastimatch {kind}"]
        say(
            f"  ratio ours/plastimatch, {kind}: time {ours.seconds / theirs.seconds:.2f}x, "
            f"mean TRE {ours.tre_mean:.2f} vs {theirs.tre_mean:.2f} mm"
        )
    transform = runs["ours rigid+bspline"].transform
    if transform is not None:
        runs.update(_dose_resampling(pair, transform))
    return runs


def _median(run: Callable[[], Run], rounds: int) -> Run:
    """Run ``rounds`` times (the machine may be shared); the last run with the median time."""
    runs = [run() for _ in range(rounds)]
    last = runs[-1]
    last.seconds = statistics.median(r.seconds for r in runs)
    if rounds > 1:
        spread = f"{min(r.seconds for r in runs):.2f}–{max(r.seconds for r in runs):.2f} s"
        last.detail = f"median of {rounds}: {spread}; " + last.detail
    return last


def _ours(pair: Pair, deformable: bool, threads: int) -> Run:
    started, cpu = time.perf_counter(), time.process_time()
    result = register_images(
        pair.fixed, pair.moving, fixed_modality=pair.modality, deformable=deformable, threads=threads
    )
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    errors = _errors(result.transform, pair)
    label = "ours rigid+bspline" if deformable else "ours rigid"
    detail = f"cpu {cpu_seconds:.1f} s, QA included, flags: {'; '.join(result.flags) or 'none'}"
    return Run(label, seconds, float(errors.mean()), float(errors.max()), result.transform, detail)


def _write_inputs(pair: Pair, folder: Path) -> None:
    # Written once and outside the timing: both tools start from images already decoded.
    sitk.WriteImage(sitk.Cast(pair.fixed, sitk.sitkFloat32), str(folder / "fixed.mha"))
    sitk.WriteImage(sitk.Cast(pair.moving, sitk.sitkFloat32), str(folder / "moving.mha"))


def _plastimatch(pair: Pair, folder: Path, threads: int, *, bspline: bool) -> Run:
    name = "bspline" if bspline else "rigid"
    command = folder / f"{name}.txt"
    command.write_text(_command_file(pair.fixed, folder, name, bspline))
    environment = os.environ | {
        "OMP_NUM_THREADS": str(threads),
        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads),
    }
    started = time.perf_counter()
    finished = subprocess.run(
        ["plastimatch", "register", str(command)],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    seconds = time.perf_counter() - started
    (folder / f"{name}.log").write_text(finished.stdout + finished.stderr)
    label = f"plastimatch {'rigid+bspline' if bspline else 'rigid'}"
    if finished.returncode != 0:
        return Run(label, seconds, float("nan"), float("nan"), detail=f"failed: exit {finished.returncode}")
    field = sitk.ReadImage(str(folder / f"{name}_vf.mha"))
    errors = _errors(sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64)), pair)
    own = re.search(r"Run:\s+([\d.]+)", finished.stdout)
    detail = (
        f"its own 'Run' time {float(own.group(1)):.2f} s; wall includes loading and writing the field"
        if own
        else ""
    )
    return Run(label, seconds, float(errors.mean()), float(errors.max()), detail=detail)


def _command_file(fixed: sitk.Image, folder: Path, name: str, bspline: bool) -> str:
    """Stages comparable to ours: Mattes MI rigid at ~4 then ~2 mm; MI B-spline at ~4 then ~2 mm."""
    coarse, fine = _res(fixed, 4.0), _res(fixed, 2.0)
    lines = [
        "[GLOBAL]",
        f"fixed={folder / 'fixed.mha'}",
        f"moving={folder / 'moving.mha'}",
        f"vf_out={folder / f'{name}_vf.mha'}",
        "",
        "[STAGE]",
        "xform=rigid",
        "impl=itk",
        "optim=versor",
        "metric=mattes",
        "mi_histogram_bins=32",
        "mi_num_spatial_samples=10000",
        "max_its=100",
        f"res={coarse}",
        "",
        "[STAGE]",
        f"res={fine}",
    ]
    if bspline:
        lines += [
            "",
            "[STAGE]",
            "xform=bspline",
            "impl=plastimatch",
            "optim=lbfgsb",
            "metric=mi",
            "mi_histogram_bins=32",
            "grid_spac=64 64 64",
            "max_its=10",
            f"res={coarse}",
            "",
            "[STAGE]",
            f"res={fine}",
        ]
    return "\n".join(lines) + "\n"


def _res(image: sitk.Image, target_mm: float) -> str:
    """plastimatch's subsampling (whole voxels per axis) that comes closest to ``target_mm``."""
    return " ".join(str(max(1, round(target_mm / s))) for s in image.GetSpacing())


def _dose_resampling(pair: Pair, transform: sitk.Transform) -> dict[str, Run]:
    """Planning dose onto the follow-up grid: through the B-spline composite and through a 2 mm field."""
    exact, through_spline = _timed(lambda: _resample(pair.dose, pair.fixed, transform))
    field, build = _timed(lambda: to_displacement_field(transform, pair.fixed, 2.0))
    fast, through_field = _timed(lambda: _resample(pair.dose, pair.fixed, field))
    difference = np.abs(sitk.GetArrayFromImage(exact) - sitk.GetArrayFromImage(fast))
    large = np.argwhere(difference > 0.1)
    at_edge = sum(_on_dose_grid_edge(pair.dose, pair.fixed, transform, zyx) for zyx in large)
    dose_size = "x".join(str(v) for v in pair.dose.GetSize())
    say(
        f"  dose {dose_size} at {pair.dose.GetSpacing()[0]:g} mm onto the follow-up grid: "
        f"through rigid+bspline {through_spline:.2f} s; 2 mm field built in {build:.2f} s, "
        f"through it {through_field:.2f} s (total {build + through_field:.2f} s)"
    )
    say(
        f"    field vs exact: p99 |difference| {np.percentile(difference, 99):.4f} Gy, "
        f"{len(large)} of {difference.size} voxels differ by > 0.1 Gy (max {difference.max():.1f} Gy), "
        f"{at_edge} of them map onto the dose grid's outer boundary (inside for one, outside for the other)"
    )
    return {
        "dose through bspline": Run("dose through bspline", through_spline, 0.0, 0.0),
        "dose through field": Run("dose through field", build + through_field, 0.0, 0.0),
    }


def _on_dose_grid_edge(
    dose: sitk.Image, grid: sitk.Image, transform: sitk.Transform, zyx: np.ndarray
) -> bool:
    point = transform.TransformPoint(grid.TransformIndexToPhysicalPoint([int(v) for v in zyx[::-1]]))
    index = np.array(dose.TransformPhysicalPointToContinuousIndex(point))
    edges = np.concatenate([np.abs(index + 0.5), np.abs(index - (np.array(dose.GetSize()) - 0.5))])
    return bool(edges.min() < 0.01)


def _resample(dose: sitk.Image, grid: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    return sitk.Resample(dose, grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def _print_targets(results: dict[str, dict[str, Run]]) -> None:
    mr, ct = (results[name] for name in results)
    say()
    say("targets")
    _target("rigid CT→MR 256x256x160", mr["ours rigid"].seconds, TARGETS["rigid CT→MR"])
    for name, runs in results.items():
        _target(
            f"rigid+bspline, {name.split()[0]}", runs["ours rigid+bspline"].seconds, TARGETS["deformable"]
        )
        _target(
            f"dose through rigid+bspline, {name.split()[0]}",
            runs["dose through bspline"].seconds,
            TARGETS["dose resampling"],
        )
        _target(
            f"dose through its 2 mm field, {name.split()[0]}",
            runs["dose through field"].seconds,
            TARGETS["dose resampling"],
        )
    for name, runs in {"CT→MR": mr, "CT→CT": ct}.items():
        for kind in ("rigid", "rigid+bspline"):
            ours, theirs = runs[f"ours {kind}"], runs[f"plastimatch {kind}"]
            faster = ours.seconds <= theirs.seconds
            as_good = ours.tre_mean <= theirs.tre_mean + 0.05
            verdict = "met" if faster and as_good else "NOT met"
            say(
                f"  ours not slower than plastimatch at equal or better TRE, {name} {kind}: {verdict} "
                f"({ours.seconds:.2f} vs {theirs.seconds:.2f} s, "
                f"{ours.tre_mean:.2f} vs {theirs.tre_mean:.2f} mm)"
            )


def _target(name: str, seconds: float, limit: float) -> None:
    say(f"  {name} <= {limit:g} s: {seconds:.2f} s, {'met' if seconds <= limit else 'NOT met'}")


if __name__ == "__main__":
    main()
