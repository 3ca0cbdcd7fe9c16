"""A patient's lesion volume over time as an inline SVG, drawn here on the server.

No script and no chart library: the page stays readable in a closed network and under the
viewer's Content-Security-Policy (which forbids inline styles, so the look is SVG attributes).
One polyline per task, a marker per follow-up with its date and volume as a tooltip, axes with
rounded ticks. Every text that comes from the data is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 360, 190
#: Room for the tick labels and the axis titles around the plot area.
LEFT, RIGHT, TOP, BOTTOM = 52, 14, 12, 42
#: Colours of the tasks' lines (the stylesheet's accent first), then repeated.
COLOURS = ("#0b61a4", "#b3261e", "#1b7f3b", "#8a6d00")
AXIS_COLOUR = "#5b6470"
TICKS = 5


@dataclass(frozen=True)
class _Scale:
    """Data values → pixel positions along one axis."""

    low: float
    high: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)


def volume_svg(
    series: Mapping[str, Sequence[tuple[float, float, str]]], x_label: str, title: str
) -> Markup | None:
    """The plot of ``task → [(months, volume cc, date label), …]``; None when there is no point.

    Parameters
    ----------
    series
        Points of each task in time order.
    x_label
        Title of the time axis (e.g. "months since RT").
    title
        What the figure shows, for screen readers and the tooltip of the whole plot.
    """
    points = [point for values in series.values() for point in values]
    if not points:
        return None
    x_ticks = nice_ticks(min(p[0] for p in points), max(p[0] for p in points))
    y_ticks = nice_ticks(0.0, max(p[1] for p in points))
    x = _Scale(x_ticks[0], x_ticks[-1], LEFT, WIDTH - RIGHT)
    y = _Scale(y_ticks[0], y_ticks[-1], HEIGHT - BOTTOM, TOP)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="volume-plot" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{_e(title)}">',
        f"<title>{_e(title)}</title>",
        *_axes(x, y, x_ticks, y_ticks, x_label),
    ]
    for number, (task, values) in enumerate(series.items()):
        parts += _line(task, values, x, y, COLOURS[number % len(COLOURS)])
    parts.append("</svg>")
    return Markup("\n".join(parts))


def nice_ticks(low: float, high: float, count: int = TICKS) -> list[float]:
    """About ``count`` round tick values (1, 2 or 5 × 10^k apart) that cover [low, high]."""
    if high <= low:
        # One value (one follow-up, or equal volumes): a span around it that still reads.
        low, high = (low - 1.0, high + 1.0) if low != 0.0 else (0.0, 1.0)
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks = [first]
    while ticks[-1] < high - 1e-9 * step:
        ticks.append(first + len(ticks) * step)
    # + 0.0: a tick of -0.0 would read "-0".
    return [round(tick, 10) + 0.0 for tick in ticks]


def _axes(
    x: _Scale, y: _Scale, x_ticks: Sequence[float], y_ticks: Sequence[float], x_label: str
) -> list[str]:
    bottom, left = y.start, x.start
    parts = [
        _segment(left, bottom, x.end, bottom, AXIS_COLOUR),
        _segment(left, bottom, left, y.end, AXIS_COLOUR),
    ]
    for tick in x_ticks:
        px = x(tick)
        parts.append(_segment(px, bottom, px, bottom + 4, AXIS_COLOUR))
        parts.append(_text(px, bottom + 15, _label(tick), "middle"))
    for tick in y_ticks:
        py = y(tick)
        parts.append(_segment(left - 4, py, x.end, py, "#e3e7ec" if tick else AXIS_COLOUR))
        parts.append(_text(left - 7, py + 3.5, _label(tick), "end"))
    parts.append(_text((left + x.end) / 2, HEIGHT - 6, x_label, "middle"))
    middle = (bottom + y.end) / 2
    parts.append(
        f'<text x="12" y="{middle:.1f}" font-size="11" fill="{AXIS_COLOUR}" text-anchor="middle" '
        f'transform="rotate(-90 12 {middle:.1f})">lesion volume (cc)</text>'
    )
    return parts


def _line(
    task: str, values: Sequence[tuple[float, float, str]], x: _Scale, y: _Scale, colour: str
) -> list[str]:
    coordinates = " ".join(f"{x(months):.1f},{y(volume):.1f}" for months, volume, _ in values)
    parts = [
        f'<polyline class="series" data-task="{_e(task)}" points="{coordinates}" fill="none" '
        f'stroke="{colour}" stroke-width="2"/>'
    ]
    for months, volume, date in values:
        tooltip = f"{task.upper()} {date} ({_label(months)} months): {volume:.2f} cc"
        parts.append(
            f'<circle class="point" data-task="{_e(task)}" data-cc="{volume!r}" cx="{x(months):.1f}" '
            f'cy="{y(volume):.1f}" r="3.5" fill="{colour}"><title>{_e(tooltip)}</title></circle>'
        )
    return parts


def _segment(x1: float, y1: float, x2: float, y2: float, colour: str) -> str:
    return (
        f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" stroke-width="1"/>'
    )


def _text(x: float, y: float, text: str, anchor: str) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="10" fill="{AXIS_COLOUR}" '
        f'text-anchor="{anchor}">{_e(text)}</text>'
    )


def _label(value: float) -> str:
    """A tick or month value without trailing zeros: 2.0 → "2", 0.25 → "0.25"."""
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


def _e(text: str) -> str:
    return escape(str(text), quote=True)
