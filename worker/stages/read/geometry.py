"""Stacking image frames into a volume with exact LPS geometry.

Frames are sorted by their position projected on the slice normal. The stack is then checked
for duplicate positions, missing slices (gaps), deliberately non-uniform spacing and gantry tilt
(slice positions that drift within the image plane). A regular, orthogonal stack becomes a
SimpleITK image directly; any other stack is either refused or resampled onto a regular
orthogonal grid, by policy, and the report says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from worker.errors import GeometryError
from worker.stages.read.frames import Frame

#: Relative tolerance on slice spacing before a stack counts as non-uniform.
SPACING_TOLERANCE = 0.01
#: Absolute floor of that tolerance (header round-off), in mm.
SPACING_TOLERANCE_MM = 0.005
#: In-plane drift over the whole stack, as a fraction of the pixel size, that counts as tilt.
TILT_DRIFT_FRACTION = 0.1
#: Angle between slice normal and the nearest patient axis above which a stack is oblique.
OBLIQUE_DEGREES = 1.0
#: Resampling may make at most this many slices per received slice (gaps, uneven steps); more
#: means near-duplicate positions, and a grid at their spacing would exhaust memory.
MAX_RESAMPLE_FACTOR = 10


@dataclass(frozen=True)
class GeometryPolicy:
    """What to do with stacks that cannot be represented as a regular grid."""

    resample_nonuniform: bool = True
    resample_tilt: bool = True


@dataclass
class StackReport:
    """Geometry facts about one stack, for the case report and the warnings."""

    slices: int
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    orientation: str
    uniform: bool
    missing_slices: int
    gaps: list[tuple[int, int]] = field(default_factory=list)
    tilt_degrees: float = 0.0
    duplicates_dropped: int = 0
    resampled: bool = False


@dataclass(frozen=True)
class SortedStack:
    """Frames in order along the normal with their measured positions."""

    frames: list[Frame]
    normal: np.ndarray
    distances: np.ndarray
    offsets: np.ndarray


def sort_frames(frames: list[Frame]) -> tuple[SortedStack, int]:
    """Sort frames along the slice normal and drop duplicate positions.

    Returns the sorted stack and the number of duplicate frames dropped (the frame with the
    lowest InstanceNumber is kept at each position).
    """
    normal = frames[0].normal
    origin = frames[0].position
    order = sorted(frames, key=lambda f: (float((f.position - origin) @ normal), f.instance_number))
    kept, dropped = _drop_duplicates(order, normal)
    first = kept[0]
    deltas = np.array([f.position - first.position for f in kept])
    distances = deltas @ normal
    offsets = np.stack([deltas @ first.row_dir, deltas @ first.col_dir], axis=1)
    return SortedStack(kept, normal, distances, offsets), dropped


def _drop_duplicates(order: list[Frame], normal: np.ndarray) -> tuple[list[Frame], int]:
    kept = [order[0]]
    for frame in order[1:]:
        if abs(float((frame.position - kept[-1].position) @ normal)) > SPACING_TOLERANCE_MM:
            kept.append(frame)
    return kept, len(order) - len(kept)


def analyse_stack(stack: SortedStack, slice_thickness: float | None) -> StackReport:
    """Measure spacing, gaps, tilt and orientation of a sorted stack."""
    first = stack.frames[0]
    steps = np.diff(stack.distances)
    spacing, uniform, gaps = _spacing(steps, slice_thickness)
    return StackReport(
        slices=len(stack.frames),
        rows=first.rows,
        cols=first.cols,
        pixel_spacing=first.pixel_spacing,
        slice_spacing=spacing,
        orientation=orientation_label(stack.normal),
        uniform=uniform,
        missing_slices=sum(n for _, n in gaps),
        gaps=gaps,
        tilt_degrees=_tilt_degrees(stack),
    )


def _spacing(steps: np.ndarray, thickness: float | None) -> tuple[float, bool, list[tuple[int, int]]]:
    if steps.size == 0:
        # A single slice has no measurable spacing; its thickness is the best extent we have.
        return float(thickness or 1.0), True, []
    smallest = float(steps.min())
    tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE * smallest)
    uniform = bool(np.all(np.abs(steps - smallest) <= tolerance))
    spacing = float(steps.mean()) if uniform else smallest
    gaps = [
        (int(i), round(step / smallest) - 1)
        for i, step in enumerate(steps)
        if round(step / smallest) >= 2 and abs(step - round(step / smallest) * smallest) <= tolerance * 2
    ]
    return spacing, uniform, gaps


def _tilt_degrees(stack: SortedStack) -> float:
    if len(stack.frames) < 2:
        return 0.0
    extent = float(stack.distances[-1] - stack.distances[0])
    # Least-squares drift of the in-plane offset per mm along the normal.
    slope = np.linalg.lstsq(stack.distances[:, None], stack.offsets, rcond=None)[0][0]
    drift = float(np.linalg.norm(slope)) * extent
    if drift <= TILT_DRIFT_FRACTION * min(stack.frames[0].pixel_spacing):
        return 0.0
    return float(np.degrees(np.arctan(np.linalg.norm(slope))))


def orientation_label(normal: np.ndarray) -> str:
    """'axial', 'coronal', 'sagittal', or 'oblique (nearest …)' from the slice normal."""
    axis = int(np.argmax(np.abs(normal)))
    name = ("sagittal", "coronal", "axial")[axis]
    angle = float(np.degrees(np.arccos(min(1.0, abs(float(normal[axis]))))))
    return name if angle <= OBLIQUE_DEGREES else f"oblique (nearest {name}, {angle:.1f}°)"


def build_image(
    pixels: np.ndarray, stack: SortedStack, report: StackReport, policy: GeometryPolicy
) -> sitk.Image:
    """A SimpleITK image in LPS from pixels of shape (slices, rows, cols) in stack order.

    Raises
    ------
    worker.errors.GeometryError
        The stack is non-uniform or tilted and the policy refuses resampling, or its closest
        slices are so close that the regular grid would be more than ten times larger.
    """
    tilted = report.tilt_degrees > 0.0
    if not report.uniform and not policy.resample_nonuniform:
        raise GeometryError(_nonuniform_message(report))
    if tilted and not policy.resample_tilt:
        raise GeometryError(f"gantry tilt / sheared stack ({report.tilt_degrees:.2f}°) refused by policy")
    if not report.uniform or tilted:
        count = _grid_slices(stack.distances, report.slice_spacing)
        if count > MAX_RESAMPLE_FACTOR * report.slices:
            raise GeometryError(
                f"slices only {report.slice_spacing:.3g} mm apart (near-duplicate positions?); a regular "
                f"grid at that spacing would need {count} slices for {report.slices} received"
            )
        pixels = regularise(pixels, stack, report.slice_spacing)
        report.resampled = True
    return _to_sitk(pixels, stack, report)


def _nonuniform_message(report: StackReport) -> str:
    if report.missing_slices:
        return (
            f"{report.missing_slices} missing slice(s) in the series (gaps after sorted "
            f"slice(s) {[i + 1 for i, _ in report.gaps]}); resampling refused by policy"
        )
    return "slice spacing is not uniform; resampling refused by policy"


def regularise(pixels: np.ndarray, stack: SortedStack, spacing: float) -> np.ndarray:
    """Resample a stack onto a regular orthogonal grid anchored at its first frame.

    Each frame is first shifted in-plane to undo its drift from the normal through the first
    frame (tilt), then output slices every ``spacing`` mm are linearly interpolated between the
    two nearest frames along the normal (gaps and uneven spacing).

    Parameters
    ----------
    pixels: numpy.ndarray, shape (N, rows, cols)
    stack: SortedStack
    spacing: float
        Output slice spacing in mm.

    Returns
    -------
    numpy.ndarray, shape (M, rows, cols), same dtype as ``pixels``
    """
    row_spacing, col_spacing = stack.frames[0].pixel_spacing
    background = float(pixels.min())
    shifted = np.empty_like(pixels)
    for k, (along_row, along_col) in enumerate(stack.offsets):
        # Content of frame k sits (along_col / row_spacing) rows and (along_row / col_spacing)
        # columns away from where the orthogonal grid expects it.
        shift = (along_col / row_spacing, along_row / col_spacing)
        if np.allclose(shift, 0.0, atol=1e-3):
            shifted[k] = pixels[k]
        else:
            shifted[k] = ndimage.shift(pixels[k], shift, order=1, mode="constant", cval=background)
    return _interpolate_along_normal(shifted, stack.distances, spacing)


def _grid_slices(distances: np.ndarray, spacing: float) -> int:
    """Slices of a regular grid from the first to (at most) the last distance."""
    return int(np.floor((distances[-1] - distances[0]) / spacing + 1e-6)) + 1


def _interpolate_along_normal(slices: np.ndarray, distances: np.ndarray, spacing: float) -> np.ndarray:
    targets = distances[0] + spacing * np.arange(_grid_slices(distances, spacing))
    lower = np.clip(np.searchsorted(distances, targets, side="right") - 1, 0, len(distances) - 2)
    weight = (targets - distances[lower]) / (distances[lower + 1] - distances[lower])
    weight = np.clip(weight, 0.0, 1.0).astype(slices.dtype)[:, None, None]
    return (1.0 - weight) * slices[lower] + weight * slices[lower + 1]


def _to_sitk(pixels: np.ndarray, stack: SortedStack, report: StackReport) -> sitk.Image:
    first = stack.frames[0]
    image = sitk.GetImageFromArray(np.ascontiguousarray(pixels))
    image.SetOrigin(tuple(float(v) for v in first.position))
    # SimpleITK index axes are (column, row, slice): their directions are the columns below.
    direction = np.column_stack([first.row_dir, first.col_dir, stack.normal])
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    image.SetSpacing((first.pixel_spacing[1], first.pixel_spacing[0], report.slice_spacing))
    return image
