"""Export stage: a preview PNG of the finding, for a look at a glance (ticket, e-mail, worklist).

Three panels — axial, sagittal, coronal — through the lesion centroid (through the high-dose
region, the dose maximum or the image centre when there is no lesion; the picture says which).
Drawn on top of the follow-up: the lesion outline in the task's colour, isodose lines at 50, 80
and 95 % of the dose maximum, the high-dose region dashed, a scale bar, and the notice that the
result is AI-generated and not reviewed.

Orientation follows the radiological convention PACS viewers use, whatever the scanner did:

- axial: patient right on the image left, anterior up (seen from the feet);
- coronal: patient right on the image left, superior up (seen from the front);
- sagittal: anterior on the image left, superior up (seen from the patient's left).

Each panel's edges carry their letters (R/L, A/P, S/I). To get there for any follow-up grid —
oblique, feet-first, non-square pixels, thick slices — each plane is resampled from the
follow-up onto an axis-aligned, isotropic LPS grid before anything is drawn, so aspect and
orientation come from the patient coordinates, never from the stored voxel order. All three
panels share one scale (mm per pixel), so sizes compare across panels.

Rendering uses matplotlib's Agg canvas directly, not pyplot: no global backend switch, no
global figure registry, so concurrent workers can render side by side. matplotlib is imported
inside :func:`render_preview`, keeping this module cheap to import.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from models.files import write_atomically
from models.tasks import TASKS
from worker.stages.export.algorithm import UNREVIEWED
from worker.stages.export.report import index_to_physical, lesion_summary

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Point = tuple[float, float, float]

WIDTH_PX, HEIGHT_PX, DPI = 1500, 600, 100
PANEL_PX = 470
PANEL_GAP_PX = 20
LEGEND_PX = 50
BACKGROUND = "#0b0b0b"
TEXT = "#f2f2f2"
LETTERS = "#ffd27a"
#: Isodose levels (% of the dose maximum) and their colours: chosen apart from every task colour
#: (orange ORN, light blue CE, crimson CRN) and from grey, so no line can be mistaken for another.
ISODOSE_COLOURS = {95: "#ffee00", 80: "#3ddc3d", 50: "#b388ff"}
REGION_COLOUR = "#e6e6e6"
#: Longest side of a resampled plane, in samples; beyond this the screen cannot show more.
MAX_SAMPLES = 640
#: Windows (level, width) for CT; ORN is read in a bone window.
CT_WINDOWS = {"orn": (400.0, 2000.0)}
CT_SOFT_TISSUE = (40.0, 400.0)
MR_PERCENTILES = (1.0, 99.0)


@dataclass(frozen=True)
class PreviewInfo:
    """What was rendered, and where the panels lie in the PNG.

    ``slices_mm`` gives each panel's plane position: the LPS z of the axial plane, x of the
    sagittal and y of the coronal. ``panels_px`` gives each panel's (left, top, right, bottom)
    pixel box in the PNG (right and bottom exclusive).
    """

    path: Path
    width: int
    height: int
    centre_mm: Point
    centred_on: str
    slices_mm: dict[str, float]
    panels_px: dict[str, tuple[int, int, int, int]]
    header: tuple[str, ...]


@dataclass(frozen=True)
class _View:
    """One panel: which LPS axis runs left→right, which top→bottom, and the plane's axis."""

    name: str
    across: int
    down: int
    #: +1 when the down axis grows downwards on screen (y: posterior down), -1 when it shrinks
    #: (z: superior up).
    down_sign: int
    through: int
    letters: tuple[str, str, str, str]  # left, right, top, bottom


VIEWS = (
    _View("axial", across=0, down=1, down_sign=1, through=2, letters=("R", "L", "A", "P")),
    _View("sagittal", across=1, down=2, down_sign=-1, through=0, letters=("A", "P", "S", "I")),
    _View("coronal", across=0, down=2, down_sign=-1, through=1, letters=("R", "L", "S", "I")),
)
_AXIS_NAMES = ("x", "y", "z")


@dataclass(frozen=True)
class _Layers:
    """The volumes drawn, each on its own grid in the follow-up's frame of reference."""

    image: sitk.Image
    lesion: sitk.Image
    dose: sitk.Image | None
    region: sitk.Image | None
    #: Image value outside the scan (its minimum: air on CT, background on MR).
    background: float


@dataclass
class _Plane:
    """Resampled planes of one view, arrays (rows, cols) ready to show with origin='upper'."""

    view: _View
    image: np.ndarray
    lesion: np.ndarray
    dose: np.ndarray | None
    region: np.ndarray | None
    #: Sample (col, row) of the centre of the image's extent: the panel is centred there.
    extent_centre_px: tuple[float, float]
    #: LPS coordinate of the plane along its normal axis, mm.
    position_mm: float


def render_preview(
    *,
    image: sitk.Image,
    lesion_mask: sitk.Image,
    dose: sitk.Image | None,
    task: str,
    out_path: Path,
    title_lines: Sequence[str] = (),
    region_mask: sitk.Image | None = None,
    modality: str | None = None,
) -> PreviewInfo:
    """Render the three-panel preview of ``lesion_mask`` on ``image`` to ``out_path`` (PNG).

    Parameters
    ----------
    image: SimpleITK.Image
        The follow-up scan (HU for CT).
    lesion_mask, region_mask: SimpleITK.Image
        Non-zero voxels are the lesion / the high-dose region; any grid in the same frame of
        reference (normally the follow-up's).
    dose: SimpleITK.Image, optional
        Planning dose in Gy on any grid in the follow-up's frame of reference.
    task: str
        "orn", "ce" or "crn": the outline colour, the label, and (with ``modality``) the window.
    title_lines: Sequence[str]
        Extra lines for the top right (e.g. alias and study date — never a patient name or ID).
    modality: str, optional
        "CT" or "MR"; the task's usual modality when omitted.

    Returns
    -------
    PreviewInfo
        The file, its size, the centre and plane positions used, and the panel boxes.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    summary = lesion_summary(lesion_mask)
    centre, centred_on = _centre(image, lesion_mask, summary.centroid_mm, region_mask, dose)
    spacing, low, high = _display_grid(image)
    layers = _Layers(image, lesion_mask, dose, region_mask, float(sitk.GetArrayViewFromImage(image).min()))
    planes = [_resample_view(view, layers, centre, spacing, low, high) for view in VIEWS]
    level, width = _window(image, task, modality or TASKS[task].modality)
    dose_max = float(sitk.GetArrayViewFromImage(dose).max()) if dose is not None else 0.0
    header = _header_lines(task, summary.volume_cc, summary.components, summary.empty, centred_on)
    legend = _Legend(task, summary.empty, _isodose_levels(dose_max), region_mask is not None)
    figure, boxes = _draw(planes, level, width, spacing, legend, header, title_lines)
    _save(figure, Path(out_path))
    return PreviewInfo(
        path=Path(out_path),
        width=WIDTH_PX,
        height=HEIGHT_PX,
        centre_mm=centre,
        centred_on=centred_on,
        slices_mm={v.name: round(centre[v.through], 2) for v in VIEWS},
        panels_px=boxes,
        header=tuple(header),
    )


# --- where to look ------------------------------------------------------------------------


def _centre(
    image: sitk.Image,
    lesion: sitk.Image,
    centroid: Point | None,
    region: sitk.Image | None,
    dose: sitk.Image | None,
) -> tuple[Point, str]:
    """The point the three planes go through, and what it is."""
    if centroid is not None:
        point, moved = _inside(lesion, centroid)
        return point, "lesion voxel nearest its centroid" if moved else "lesion centroid"
    if region is not None:
        region_centroid = lesion_summary(region).centroid_mm
        if region_centroid is not None:
            return _inside(region, region_centroid)[0], "high-dose region"
    if dose is not None and float(sitk.GetArrayViewFromImage(dose).max()) > 0:
        hottest = np.unravel_index(int(np.argmax(sitk.GetArrayViewFromImage(dose))), dose.GetSize()[::-1])
        return _as_point(dose.TransformIndexToPhysicalPoint([int(i) for i in hottest[::-1]])), "dose maximum"
    middle = [(n - 1) / 2.0 for n in image.GetSize()]
    return _as_point(image.TransformContinuousIndexToPhysicalPoint(middle)), "image centre"


def _inside(mask: sitk.Image, point: Point) -> tuple[Point, bool]:
    """``point`` if the planes through it cut the structure, else the nearest structure voxel.

    The flag says whether the point was moved.

    The centroid of a curved or thin structure (a crescent of necrosis along the mandible) can
    lie outside it; the planes would then miss it. A voxel centre is always cut: the displayed
    planes have a sample exactly at the centre point, where the interpolated mask is 1.
    """
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkFloat32)
    index = binary.TransformPhysicalPointToContinuousIndex(point)
    within = all(-0.5 <= i <= n - 0.5 for i, n in zip(index, binary.GetSize(), strict=True))
    if within and binary.EvaluateAtPhysicalPoint(point, sitk.sitkLinear) >= 0.5:
        return point, False
    positions = index_to_physical(mask, np.argwhere(sitk.GetArrayViewFromImage(binary) > 0)[:, ::-1])
    nearest = positions[int(np.argmin(np.sum((positions - np.asarray(point)) ** 2, axis=1)))]
    return _as_point(nearest), True


def _as_point(values: Sequence[float] | np.ndarray) -> Point:
    x, y, z = (float(v) for v in values)
    return (x, y, z)


# --- resampling ---------------------------------------------------------------------------


def _display_grid(image: sitk.Image) -> tuple[float, np.ndarray, np.ndarray]:
    """Isotropic sample spacing and the LPS box (low, high corners) the image covers."""
    size = image.GetSize()
    corners = np.array(
        [
            image.TransformContinuousIndexToPhysicalPoint((i, j, k))
            for i in (-0.5, size[0] - 0.5)
            for j in (-0.5, size[1] - 0.5)
            for k in (-0.5, size[2] - 0.5)
        ]
    )
    low, high = corners.min(axis=0), corners.max(axis=0)
    # The finest spacing keeps in-plane detail; capped so a huge field of view stays cheap.
    spacing = max(min(image.GetSpacing()), float((high - low).max()) / MAX_SAMPLES)
    return spacing, low, high


def _resample_view(
    view: _View,
    layers: _Layers,
    centre: Point,
    spacing: float,
    low: np.ndarray,
    high: np.ndarray,
) -> _Plane:
    """Sample every input on the view's axis-aligned plane through ``centre``."""
    grid, centre_px = _plane_grid(view, centre, spacing, low, high)
    middle = (low + high) / 2.0
    extent_centre = (
        centre_px[0] + (middle[view.across] - centre[view.across]) / spacing,
        centre_px[1] + view.down_sign * (middle[view.down] - centre[view.down]) / spacing,
    )
    return _Plane(
        view=view,
        image=_sample(layers.image, grid, layers.background),
        lesion=_sample(sitk.NotEqual(layers.lesion, 0), grid, 0.0),
        dose=None if layers.dose is None else _sample(layers.dose, grid, 0.0),
        region=None if layers.region is None else _sample(sitk.NotEqual(layers.region, 0), grid, 0.0),
        extent_centre_px=extent_centre,
        position_mm=centre[view.through],
    )


def _plane_grid(
    view: _View, centre: Point, spacing: float, low: np.ndarray, high: np.ndarray
) -> tuple[sitk.Image, tuple[float, float]]:
    """A one-slice grid whose array rows/cols are the screen's, with a node at ``centre``.

    Its first axis is the LPS axis shown left→right, its second the one shown top→bottom
    (negated for z, so superior is up); the nodes sit at ``centre`` + k·spacing, so the
    centre is sampled exactly.
    """
    c = np.asarray(centre, dtype=float)
    across, down = np.zeros(3), np.zeros(3)
    across[view.across], down[view.down] = 1.0, float(view.down_sign)
    # Nodes before/after the centre along each screen axis, enough to cover the image's box.
    span = {}
    for axis, unit in ((view.across, across), (view.down, down)):
        ends = sorted(((low[axis] - c[axis]) * unit[axis], (high[axis] - c[axis]) * unit[axis]))
        span[axis] = (int(np.floor(ends[0] / spacing)), int(np.ceil(ends[1] / spacing)))
    first_across, last_across = span[view.across]
    first_down, last_down = span[view.down]
    grid = sitk.Image([last_across - first_across + 1, last_down - first_down + 1, 1], sitk.sitkUInt8)
    grid.SetSpacing((spacing, spacing, spacing))
    grid.SetDirection(
        tuple(float(v) for v in np.column_stack([across, down, np.cross(across, down)]).ravel())
    )
    grid.SetOrigin(tuple(float(v) for v in c + first_across * spacing * across + first_down * spacing * down))
    return grid, (float(-first_across), float(-first_down))


def _sample(image: sitk.Image, grid: sitk.Image, default: float) -> np.ndarray:
    # Linear for masks too: the 0.5 contour of an interpolated mask is a smooth outline.
    resampled = sitk.Resample(
        image, grid, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, default, sitk.sitkFloat32
    )
    return sitk.GetArrayFromImage(resampled)[0]


def _window(image: sitk.Image, task: str, modality: str) -> tuple[float, float]:
    """(level, width): a fixed CT window for the task, MR from the 1st–99th percentile."""
    if modality.upper() == "CT":
        return CT_WINDOWS.get(task, CT_SOFT_TISSUE)
    values = sitk.GetArrayViewFromImage(image).ravel()
    # A strided subset is enough for percentiles and keeps big volumes fast.
    values = values[:: max(1, values.size // 2_000_000)]
    low, high = (float(v) for v in np.percentile(values, MR_PERCENTILES))
    return (low + high) / 2.0, max(high - low, 1e-6)


# --- drawing ------------------------------------------------------------------------------


def _header_lines(task: str, volume_cc: float, components: int, empty: bool, centred_on: str) -> list[str]:
    label = TASKS[task].codes.label
    if empty:
        return [f"{label} — {UNREVIEWED}", f"No lesion found — views through the {centred_on}"]
    plural = "" if components == 1 else "s"
    return [
        f"{label} — {UNREVIEWED}",
        f"Lesion {volume_cc:.2f} cc, {components} component{plural} — views through the {centred_on}",
    ]


@dataclass(frozen=True)
class _Legend:
    """What the overlays mean: the finding's outline, the region, the isodose levels."""

    task: str
    empty: bool
    #: (percent, Gy, colour), lowest first.
    levels: list[tuple[int, float, str]]
    with_region: bool

    @property
    def colour(self) -> str:
        return _hex(TASKS[self.task].colour)


def _draw(
    planes: Sequence[_Plane],
    level: float,
    width: float,
    spacing: float,
    legend: _Legend,
    header: Sequence[str],
    title_lines: Sequence[str],
) -> tuple[Figure, dict[str, tuple[int, int, int, int]]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, facecolor=BACKGROUND)
    # One field of view for every panel: the longest side of the image's box, in samples.
    side = max(max(p.image.shape) for p in planes)
    boxes: dict[str, tuple[int, int, int, int]] = {}
    total = len(planes) * PANEL_PX + (len(planes) - 1) * PANEL_GAP_PX
    for number, plane in enumerate(planes):
        left = (WIDTH_PX - total) // 2 + number * (PANEL_PX + PANEL_GAP_PX)
        axes = figure.add_axes(
            (left / WIDTH_PX, LEGEND_PX / HEIGHT_PX, PANEL_PX / WIDTH_PX, PANEL_PX / HEIGHT_PX)
        )
        top = HEIGHT_PX - LEGEND_PX - PANEL_PX
        boxes[plane.view.name] = (left, top, left + PANEL_PX, top + PANEL_PX)
        _draw_panel(axes, plane, level, width, spacing, side, legend)
    _draw_titles(figure, header, title_lines)
    _draw_legend(figure, legend)
    return figure, boxes


def _isodose_levels(dose_max: float) -> list[tuple[int, float, str]]:
    """(percent, Gy, colour), lowest first; none without a positive dose."""
    if dose_max <= 0:
        return []
    return [(p, p / 100.0 * dose_max, ISODOSE_COLOURS[p]) for p in sorted(ISODOSE_COLOURS)]


def _draw_panel(
    axes: Axes,
    plane: _Plane,
    level: float,
    width: float,
    spacing: float,
    side: int,
    legend: _Legend,
) -> None:
    axes.set_facecolor("black")
    axes.imshow(
        plane.image,
        cmap="gray",
        vmin=level - width / 2.0,
        vmax=level + width / 2.0,
        interpolation="bilinear",
        origin="upper",
    )
    if plane.dose is not None:
        _contours(axes, plane.dose, [(gy, c) for _, gy, c in legend.levels], linewidth=1.3)
    if plane.region is not None:
        _contours(axes, plane.region, [(0.5, REGION_COLOUR)], linewidth=1.1, dashed=True)
    if plane.lesion.max() >= 0.5:
        axes.contourf(plane.lesion, levels=[0.5, 2.0], colors=[legend.colour], alpha=0.25)
        _contours(axes, plane.lesion, [(0.5, legend.colour)], linewidth=2.5)
    cx, cy = plane.extent_centre_px
    axes.set_xlim(cx - side / 2.0, cx + side / 2.0)
    axes.set_ylim(cy + side / 2.0, cy - side / 2.0)
    axes.set_axis_off()
    _orientation_letters(axes, plane.view)
    _scale_bar(axes, spacing, side, cx - side / 2.0, cy + side / 2.0)
    name = f"{plane.view.name.capitalize()}  {_AXIS_NAMES[plane.view.through]} = {plane.position_mm:.1f} mm"
    axes.text(0.015, 0.985, name, transform=axes.transAxes, color=TEXT, fontsize=11, va="top", ha="left")


def _contours(
    axes: Axes,
    values: np.ndarray,
    levels: Sequence[tuple[float, str]],
    linewidth: float,
    dashed: bool = False,
) -> None:
    """Contour lines at the levels the plane actually crosses (matplotlib warns otherwise)."""
    low, high = float(values.min()), float(values.max())
    crossed = [(v, c) for v, c in levels if low < v < high]
    if crossed:
        axes.contour(
            values,
            levels=[v for v, _ in crossed],
            colors=[c for _, c in crossed],
            linewidths=linewidth,
            linestyles="dashed" if dashed else "solid",
        )


def _orientation_letters(axes: Axes, view: _View) -> None:
    left, right, top, bottom = view.letters
    for x, y, letter, ha, va in (
        (0.012, 0.5, left, "left", "center"),
        (0.988, 0.5, right, "right", "center"),
        (0.5, 0.988, top, "center", "top"),
        (0.5, 0.012, bottom, "center", "bottom"),
    ):
        axes.text(
            x,
            y,
            letter,
            transform=axes.transAxes,
            color=LETTERS,
            fontsize=13,
            fontweight="bold",
            ha=ha,
            va=va,
        )


def _scale_bar(axes: Axes, spacing: float, side: int, x_left: float, y_bottom: float) -> None:
    """A bar of 10 mm (50 mm on a field of view over 200 mm) in the lower left corner."""
    length_mm = 10.0 if side * spacing <= 200.0 else 50.0
    length = length_mm / spacing
    x0, y0 = x_left + 0.05 * side, y_bottom - 0.05 * side
    axes.plot([x0, x0 + length], [y0, y0], color=TEXT, linewidth=3, solid_capstyle="butt")
    axes.text(x0 + length / 2.0, y0 - 0.015 * side, f"{length_mm:g} mm", color=TEXT, fontsize=10, ha="center")


def _draw_titles(figure: Figure, header: Sequence[str], title_lines: Sequence[str]) -> None:
    top = 1.0 - 10 / HEIGHT_PX
    step = 24 / HEIGHT_PX
    for row, line in enumerate(header):
        figure.text(
            0.017,
            top - row * step,
            line,
            color=TEXT,
            fontsize=15 if row == 0 else 13,
            fontweight="bold" if row == 0 else "normal",
            va="top",
        )
    for row, line in enumerate(title_lines[:3]):
        figure.text(0.983, top - row * step, line, color=TEXT, fontsize=12, ha="right", va="top")


def _draw_legend(figure: Figure, legend: _Legend) -> None:
    from matplotlib.lines import Line2D

    label = f"{TASKS[legend.task].codes.label} (AI)" + (": none found" if legend.empty else "")
    handles = [Line2D([], [], color=legend.colour, linewidth=2.5, label=label)]
    if legend.with_region:
        handles.append(
            Line2D([], [], color=REGION_COLOUR, linewidth=1.3, linestyle="--", label="high-dose region")
        )
    # Highest first, the word "isodose" once: the row reads "isodose 95%: 66.5 Gy, 80%: …".
    handles += [
        Line2D([], [], color=c, linewidth=2.0, label=("isodose " if n == 0 else "") + f"{p}%: {gy:.1f} Gy")
        for n, (p, gy, c) in enumerate(reversed(legend.levels))
    ]
    figure.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 4 / HEIGHT_PX),
        ncol=len(handles),
        frameon=False,
        labelcolor=TEXT,
        fontsize=12,
        handlelength=2.5,
        columnspacing=2.0,
    )


def _hex(rgb: Sequence[int]) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def _save(figure: Figure, path: Path) -> None:
    """Write an RGB PNG atomically, through Pillow with no metadata: equal inputs, equal bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    # The figure is opaque: RGB, no alpha channel, suits every viewer and mail client.
    pixels = np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="PNG")
    write_atomically(path, encoded.getvalue())
