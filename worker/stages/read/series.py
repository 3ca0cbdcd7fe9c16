"""Read stage: one CT or MR image series → a SimpleITK image with exact LPS geometry.

Inputs: the files of one series (classic single-frame or enhanced multi-frame).
Output: :class:`ImageVolume` — the image (float32, rescaled: HU for CT), the SOP instances in
stack order, a geometry report and warnings for everything that was dropped or resampled.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk
from pydicom.dataset import Dataset

from worker.errors import DicomReadError, GeometryError, InputError
from worker.stages.read.files import malformed_values, read_header
from worker.stages.read.frames import Frame, frames_from_dataset
from worker.stages.read.geometry import (
    GeometryPolicy,
    StackReport,
    analyse_stack,
    build_image,
    sort_frames,
)
from worker.stages.read.pixels import decode_frames


@dataclass
class ImageVolume:
    """An image series read into patient space."""

    image: sitk.Image
    modality: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: list[str]
    report: StackReport
    received: int
    decoded: int
    patient_position: str
    warnings: list[str] = field(default_factory=list)
    #: The planes read, in stack order (their files and exact geometry): outputs that reference
    #: the source instances (SEG, RTSTRUCT) are written on these, whatever ``image`` was resampled to.
    frames: list[Frame] = field(default_factory=list)


def read_image_series(paths: Sequence[Path], policy: GeometryPolicy | None = None) -> ImageVolume:
    """Read the files of one image series into an :class:`ImageVolume`.

    Parameters
    ----------
    paths: Sequence[pathlib.Path]
        Files of a single series (SeriesInstanceUID); order does not matter.
    policy: GeometryPolicy, optional
        Whether non-uniform and tilted stacks are resampled (default) or refused.

    Raises
    ------
    worker.errors.InputError
        Unreadable or truncated files, several series, missing geometry, 4D data, frames that
        cannot be decoded, or a stack the policy refuses.
    """
    if not paths:
        raise InputError("no image files given")
    headers = [(Path(p), read_header(Path(p))) for p in paths]
    first, first_series_uid = _check_single_series(headers)
    with malformed_values(headers[0][0]):
        thickness = _float_or_none(first.get("SliceThickness"))
        identity = {k: str(first.get(k, "")) for k in ("Modality", "FrameOfReferenceUID", "PatientPosition")}
    warnings: list[str] = []
    frames = _select_frames(_all_frames(headers), warnings)
    stack, duplicates = sort_frames(frames)
    if duplicates:
        warnings.append(f"{duplicates} frame(s) at duplicate positions dropped")
    report = analyse_stack(stack, thickness)
    report.duplicates_dropped = duplicates
    decoded = decode_frames(stack.frames)
    if decoded.failures:
        raise DicomReadError(_decode_failure_message(decoded.decoded, decoded.received, decoded.failures))
    image = build_image(decoded.pixels, stack, report, policy or GeometryPolicy())
    warnings.extend(_geometry_warnings(report))
    return ImageVolume(
        image=image,
        modality=identity["Modality"],
        series_instance_uid=first_series_uid,
        frame_of_reference_uid=identity["FrameOfReferenceUID"],
        sop_instance_uids=[f.sop_instance_uid for f in stack.frames],
        report=report,
        received=decoded.received,
        decoded=decoded.decoded,
        patient_position=identity["PatientPosition"],
        warnings=warnings,
        frames=list(stack.frames),
    )


def _check_single_series(headers: list[tuple[Path, Dataset]]) -> tuple[Dataset, str]:
    """The first file's dataset and the series' SeriesInstanceUID."""
    series = {_series_uid(path, ds) for path, ds in headers}
    if len(series) != 1:
        raise InputError(f"{len(series)} image series given where one was expected")
    path, first = headers[0]
    with malformed_values(path):
        if "PixelData" not in first and "Rows" not in first:
            raise InputError(f"{path.name}: not an image (Modality {first.get('Modality', '?')})")
        if int(first.get("SamplesPerPixel", 1)) != 1:
            raise InputError("colour images are not supported (SamplesPerPixel is not 1)")
    return first, series.pop()


def _series_uid(path: Path, ds: Dataset) -> str:
    with malformed_values(path):
        return str(ds.get("SeriesInstanceUID", ""))


def _all_frames(headers: list[tuple[Path, Dataset]]) -> list[Frame]:
    return [frame for path, ds in headers for frame in frames_from_dataset(ds, path)]


def _select_frames(frames: list[Frame], warnings: list[str]) -> list[Frame]:
    """Drop localizers and off-stack frames; refuse several volumes at the same positions."""
    kept = [f for f in frames if not f.is_localizer]
    if len(kept) < len(frames):
        warnings.append(f"{len(frames) - len(kept)} localizer image(s) dropped")
    if not kept:
        raise GeometryError("the series holds only localizer images")
    groups = Counter(_plane_grid(f) for f in kept)
    main, count = groups.most_common(1)[0]
    if count < len(kept):
        warnings.append(
            f"{len(kept) - count} image(s) with another orientation, pixel spacing or matrix size dropped"
        )
    kept = [f for f in kept if _plane_grid(f) == main]
    stacks = {f.stack_key for f in kept}
    if len(stacks) > 1:
        raise GeometryError(
            f"the series holds {len(stacks)} volumes at the same positions (echoes, temporal "
            "positions or b-values); a 4D series needs a role rule that selects one"
        )
    return kept


def _plane_grid(frame: Frame) -> tuple[object, ...]:
    # Every frame of the volume is placed with the first frame's pixel grid, so frames must
    # agree on orientation, matrix size and pixel spacing to be stacked.
    return (frame.orientation_key, frame.rows, frame.cols, tuple(round(v, 4) for v in frame.pixel_spacing))


def _decode_failure_message(decoded: int, received: int, failures: list[str]) -> str:
    shown = "; ".join(failures[:3]) + (" …" if len(failures) > 3 else "")
    return f"decoded {decoded} of {received} image frames; {len(failures)} failed: {shown}"


def _geometry_warnings(report: StackReport) -> list[str]:
    warnings = []
    if report.missing_slices:
        warnings.append(f"{report.missing_slices} missing slice(s) detected")
    elif not report.uniform:
        warnings.append("non-uniform slice spacing")
    if report.tilt_degrees:
        warnings.append(f"gantry tilt / sheared stack of {report.tilt_degrees:.2f}°")
    if report.resampled:
        warnings.append(f"resampled to a regular {report.slice_spacing:.3g} mm orthogonal grid")
    return warnings


def _float_or_none(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
