"""The figures of the audit page (:mod:`worker.audit.summary`): volumes over time, dose, per task.

Each figure is drawn from the audit rows (and the patients' trends) and comes back as PNG bytes,
or None when there is nothing to plot; writing the files, and saying on the page why one is
missing, is the page's job.

Plots are drawn on matplotlib's Agg canvas directly, not through pyplot: no global backend
switch, no figure registry, and matplotlib is imported only when a plot is drawn. The same rows
draw the same bytes: no random jitter, and no Software metadata in the PNGs.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.audit.rows import FAILED, SUCCEEDED
from worker.audit.trends import SINCE_RT, PatientTrend, finite_float

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOT_DPI = 100
#: More patients than this and the volume plot has no legend (it would hide the data).
LEGEND_MAX_PATIENTS = 20
#: How rows without a task (a whole patient failed) are grouped.
NO_TASK = "no task"


@dataclass(frozen=True)
class Plot:
    """One figure of the page: its file under ``plots/``, a caption, and the PNG (None: no data)."""

    name: str
    caption: str
    png: bytes | None
    empty_note: str


# --- public -----------------------------------------------------------------------------------


def draw_plots(rows: Sequence[Mapping[str, Any]], trends: Sequence[PatientTrend]) -> list[Plot]:
    """The three figures of the page, in page order."""
    return [
        Plot(
            "volume_vs_months.png",
            "Lesion volume over time, one line per patient and one panel per task "
            "(failed follow-ups left out).",
            volume_png(rows, trends),
            "No succeeded follow-up with a time: no volume plot.",
        ),
        Plot(
            "lesion_dose.png",
            "Planning dose in the lesions: mean and maximum dose over succeeded follow-ups with a lesion.",
            dose_png(rows),
            "No succeeded follow-up with a lesion dose: no dose histogram.",
        ),
        Plot(
            "per_task.png",
            "Per task: lesion volumes (box and points) and how many follow-ups succeeded or failed.",
            per_task_png(rows),
            "No follow-ups: no per-task plot.",
        ),
    ]


def volume_png(rows: Sequence[Mapping[str, Any]], trends: Sequence[PatientTrend]) -> bytes | None:
    """Lesion volume against months, one line per patient, one panel per task; None without data."""
    series = _volume_series(rows, trends)
    tasks = sorted({task for task, _ in series})
    if not tasks:
        return None
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5 * len(tasks), 4.5), dpi=PLOT_DPI, layout="constrained")
    panels = np.atleast_1d(figure.subplots(1, len(tasks), squeeze=False)[0])
    patients = sorted({alias for _, alias in series})
    colours = _colours(len(patients))
    for axes, task in zip(panels, tasks, strict=True):
        for alias in patients:
            points = sorted(series.get((task, alias), []))
            if points:
                colour = colours[patients.index(alias)]
                axes.plot(*zip(*points, strict=True), marker="o", color=colour, label=alias)
        axes.set_title(task.upper())
        axes.set_xlabel(_months_label(trends))
        axes.set_ylabel("lesion volume (cc)")
        axes.grid(alpha=0.3)
        if len(patients) <= LEGEND_MAX_PATIENTS:
            axes.legend(fontsize="small")
    return _png_bytes(figure)


def dose_png(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Histogram of lesion Dmean and Dmax over succeeded follow-ups with a lesion; None without data."""
    lesions = [row for row in rows if row.get("status") == SUCCEEDED and row.get("lesion_found")]
    means = _finite(row.get("lesion_dmean_gy") for row in lesions)
    maxima = _finite(row.get("lesion_dmax_gy") for row in lesions)
    if not means and not maxima:
        return None
    from matplotlib.figure import Figure

    low, high = min(means + maxima), max(means + maxima)
    # A narrow spread (one lesion, or equal doses) still gets bins of a readable width.
    edges = np.linspace(low - 0.5, high + 0.5, 16) if high - low < 1.0 else np.linspace(low, high, 21)
    bins = [float(edge) for edge in edges]
    figure = Figure(figsize=(7, 4.5), dpi=PLOT_DPI, layout="constrained")
    axes = figure.subplots()
    if means:
        axes.hist(means, bins=bins, alpha=0.6, label=f"Dmean (n = {len(means)})")
    if maxima:
        axes.hist(maxima, bins=bins, histtype="step", linewidth=2, label=f"Dmax (n = {len(maxima)})")
    axes.set_xlabel("planning dose in the lesion (Gy)")
    axes.set_ylabel("follow-ups")
    axes.legend()
    axes.grid(alpha=0.3)
    return _png_bytes(figure)


def per_task_png(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Box plot (with points) of lesion volume per task and succeeded/failed counts; None without rows."""
    if not rows:
        return None
    from matplotlib.figure import Figure

    tasks = sorted({_task(row) for row in rows}, key=lambda t: (t == NO_TASK, t))
    figure = Figure(figsize=(11, 4.5), dpi=PLOT_DPI, layout="constrained")
    volume_axes, count_axes = figure.subplots(1, 2)
    _draw_volume_boxes(volume_axes, rows, tasks)
    _draw_status_bars(count_axes, rows, tasks)
    return _png_bytes(figure)


# --- drawing ----------------------------------------------------------------------------------


def _draw_volume_boxes(axes: Axes, rows: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> None:
    volumes = [
        _finite(
            row.get("lesion_volume_cc")
            for row in rows
            if _task(row) == task and row.get("status") == SUCCEEDED and row.get("lesion_found")
        )
        for task in tasks
    ]
    shown = [(position, values) for position, values in enumerate(volumes) if values]
    if shown:
        axes.boxplot([v for _, v in shown], positions=[p for p, _ in shown], widths=0.5, showfliers=False)
        for position, values in shown:
            # A fixed spread, not random jitter: the same rows draw the same picture.
            offsets = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
            axes.scatter(position + offsets, values, s=14, alpha=0.7, zorder=3)
    else:
        axes.text(0.5, 0.5, "no lesion found", ha="center", va="center", transform=axes.transAxes)
    axes.set_xticks(range(len(tasks)), [_task_label(t) for t in tasks])
    axes.set_xlim(-0.6, len(tasks) - 0.4)
    axes.set_ylabel("lesion volume (cc)")
    axes.set_title("Lesion volume (follow-ups with a lesion)")
    axes.grid(axis="y", alpha=0.3)


def _draw_status_bars(axes: Axes, rows: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> None:
    from matplotlib.ticker import MaxNLocator

    succeeded = [sum(_task(r) == t and r.get("status") == SUCCEEDED for r in rows) for t in tasks]
    failed = [sum(_task(r) == t and r.get("status") != SUCCEEDED for r in rows) for t in tasks]
    positions = range(len(tasks))
    axes.bar(positions, succeeded, label=SUCCEEDED, color="tab:green")
    axes.bar(positions, failed, bottom=succeeded, label=FAILED, color="tab:red")
    axes.set_xticks(positions, [_task_label(t) for t in tasks])
    axes.set_ylabel("follow-ups")
    axes.set_title("Succeeded and failed")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend()


def _volume_series(
    rows: Sequence[Mapping[str, Any]], trends: Sequence[PatientTrend]
) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(task, alias) → (months, volume) of succeeded follow-ups; months as the trends filled them in."""
    months = _trend_months(rows, trends)
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for index, row in enumerate(rows):
        volume = finite_float(row.get("lesion_volume_cc"))
        if row.get("status") != SUCCEEDED or row.get("task") is None:
            continue
        if volume is None and not row.get("lesion_found"):
            volume = 0.0  # nothing found: 0 cc, as in the trends
        when = months[index]
        if volume is not None and when is not None:
            key = (str(row["task"]), str(row.get("patient_alias") or ""))
            series.setdefault(key, []).append((when, volume))
    return series


def _trend_months(rows: Sequence[Mapping[str, Any]], trends: Sequence[PatientTrend]) -> list[float | None]:
    """Each row's months: the trend's (dates fill in missing ones) where it lines up, else the row's."""
    by_alias = {trend.patient_alias: trend.months for trend in trends}
    seen: Counter[str] = Counter()
    months: list[float | None] = []
    for row in rows:
        alias = str(row.get("patient_alias") or "")
        position = seen[alias]
        seen[alias] += 1
        filled = by_alias.get(alias, [])
        months.append(
            filled[position] if position < len(filled) else finite_float(row.get("months_since_rt"))
        )
    return months


def _months_label(trends: Sequence[PatientTrend]) -> str:
    if all(trend.months_basis == SINCE_RT for trend in trends):
        return "months since RT"
    return "months since RT (since the first follow-up where RT date unknown)"


def _colours(count: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def _png_bytes(figure: Figure) -> bytes:
    """Render on an Agg canvas of its own; no Software metadata, so equal inputs give equal bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    encoded = io.BytesIO()
    figure.savefig(encoded, format="png", metadata={"Software": None})
    return encoded.getvalue()


# --- values -----------------------------------------------------------------------------------


def _task(row: Mapping[str, Any]) -> str:
    return str(row.get("task") or NO_TASK)


def _task_label(task: str) -> str:
    return task if task == NO_TASK else task.upper()


def _finite(values: Iterable[Any]) -> list[float]:
    return [number for number in (finite_float(v) for v in values) if number is not None]
