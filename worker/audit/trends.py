"""How each patient's lesion changes over the follow-ups: events between scans, a course, rates.

Follow-ups of one patient are registered onto the same planning CT, so their lesion volumes and
centroids (planning frame) can be compared over time. Each task (ORN, CE, CRN) is followed on
its own: an ORN volume on CT and a CRN volume on MR measure different injuries, so intervals are
only formed between follow-ups of the same task (a "chain").

Rules (:class:`TrendRules`)
---------------------------
* A follow-up is *positive* when it succeeded, the lesion was found and its volume is at least
  ``detection_cc``; a succeeded follow-up that is not positive is *negative*. A succeeded
  follow-up with no volume counts as 0 cc unless a lesion was found (then it has no volume and
  stays out of the rates).
* Failed follow-ups are skipped (the chain joins the succeeded ones on either side) and counted.
* Between consecutive succeeded follow-ups of a chain, in date order, with volumes vA → vB:
  neg→pos ``appears``, pos→neg ``resolves``, neg→neg ``absent``, and pos→pos ``grows`` when
  vB − vA ≥ max(change_cc, change_fraction·vA), ``shrinks`` when vA − vB ≥ that same threshold,
  else ``stable``.
* The course of a chain reads its events with ``absent`` and ``stable`` as neutral, ``appears``
  and ``grows`` as rises, ``resolves`` and ``shrinks`` as falls: fewer than 2 succeeded
  follow-ups ``not assessable``; no rise or fall: ``absent`` (only absent) or ``stable``; only
  rises: ``appeared`` if one is ``appears`` else ``growing``; only falls: ``resolved`` if one is
  ``resolves`` else ``shrinking``; rises then falls: ``peaking``; anything else ``fluctuating``.
  A patient's course is that of its assessable chains when they agree, ``mixed`` when they do
  not, ``not assessable`` when none is; chains of tasks that never showed a lesion are left out
  when another task did (ORN growing and no CRN on the MRs is "growing").

Months
------
Months are the rows' ``months_since_rt``. Where a row lacks them but has a date, they are filled
in from the date: from a row of the same patient that has both (its months plus the days between,
/ 30.44), so they stay months since RT; if no row of the patient has both, every dated row is
counted from the patient's first dated follow-up instead, and ``months_basis`` says so.

Rates and shift
---------------
``growth_rate_cc_per_month`` is the least-squares slope of volume over months over the succeeded
follow-ups; ``relative_growth_pct_per_month`` the slope of ln(volume) over the positive ones,
×100 (a continuous rate: +10 means about 10 % a month). Both are per chain and, like the
course, left out for tasks without a lesion; a patient with more than one chain that still has a
rate gets None (rates of different injuries do not add up; its sentence gives each task).
``centroid_shift_mm`` is the largest distance of a positive follow-up's centroid from the first
positive one's in the same chain, the largest over chains.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker.audit.rows import SUCCEEDED, sort_key

#: The same month length as the audit's discovery, so filled-in months match the rows' own.
DAYS_PER_MONTH = 30.44
SINCE_RT = "since RT"
SINCE_FIRST_FOLLOWUP = "since first follow-up"
NOT_ASSESSABLE = "not assessable"
MIXED = "mixed"
RISES = frozenset({"appears", "grows"})
FALLS = frozenset({"resolves", "shrinks"})
_TOLERANCE_CC = 1e-9


@dataclass(frozen=True)
class TrendRules:
    """Thresholds of the events: what counts as a lesion, and as a change of its volume."""

    detection_cc: float = 0.05
    change_fraction: float = 0.2
    change_cc: float = 0.1


@dataclass
class Interval:
    """The change between two consecutive succeeded follow-ups of one task.

    ``ratio`` is volume_to / volume_from, None when volume_from is 0 or unknown.
    """

    date_from: str | None
    date_to: str | None
    months_from: float | None
    months_to: float | None
    event: str
    volume_from_cc: float | None
    volume_to_cc: float | None
    ratio: float | None
    task: str | None = None


@dataclass
class PatientTrend:
    """One patient's follow-ups over time; see the module docstring for the rules.

    ``volumes_cc`` and ``months`` follow the table order (date, then task): None where a
    follow-up failed (volumes) or has neither months nor a date (months). ``courses`` holds the
    course of each task's chain; ``course`` sums them up.
    """

    patient_alias: str
    patient_id: str | None
    tasks: list[str]
    followups: int
    succeeded: int
    failed: int
    first_date: str | None
    last_date: str | None
    first_detection_date: str | None
    first_detection_months: float | None
    volumes_cc: list[float | None]
    months: list[float | None]
    intervals: list[Interval]
    course: str
    growth_rate_cc_per_month: float | None
    relative_growth_pct_per_month: float | None
    max_volume_cc: float | None
    last_volume_cc: float | None
    centroid_shift_mm: float | None
    summary: str
    months_basis: str = SINCE_RT
    courses: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Point:
    """One follow-up as the trend sees it."""

    row: Mapping[str, Any]
    date: str | None
    months: float | None
    task: str | None
    succeeded: bool
    volume: float | None
    positive: bool


@dataclass(frozen=True)
class _Chain:
    """The follow-ups of one task, in date order, and what follows from them."""

    task: str | None
    points: list[_Point]
    intervals: list[Interval]
    course: str
    growth_rate: float | None
    relative_growth: float | None
    centroid_shift: float | None


# --- public -----------------------------------------------------------------------------------


def patient_trends(rows: Iterable[Mapping[str, Any]], rules: TrendRules | None = None) -> list[PatientTrend]:
    """One :class:`PatientTrend` per ``patient_alias``, sorted by alias.

    Parameters
    ----------
    rows
        Audit rows (see :mod:`worker.audit.rows`), any order; rows of a whole-patient failure
        (no task, no date) count as failed follow-ups.
    rules
        Event thresholds; the defaults of :class:`TrendRules` when None.
    """
    rules = rules or TrendRules()
    by_patient: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_patient.setdefault(str(row.get("patient_alias") or ""), []).append(row)
    return [_patient_trend(alias, by_patient[alias], rules) for alias in sorted(by_patient)]


def classify(volume_from: float, volume_to: float, rules: TrendRules | None = None) -> str:
    """The event between two succeeded follow-ups with lesions of these volumes (cc)."""
    rules = rules or TrendRules()
    return _event(
        volume_from >= rules.detection_cc, volume_to >= rules.detection_cc, volume_from, volume_to, rules
    )


def _event(was: bool, now: bool, volume_from: float, volume_to: float, rules: TrendRules) -> str:
    if not was:
        return "appears" if now else "absent"
    if not now:
        return "resolves"
    # The tolerance keeps a change of exactly the threshold (1.0 → 1.2 cc) from falling short of
    # it by a rounding error of the subtraction.
    threshold = max(rules.change_cc, rules.change_fraction * volume_from) - _TOLERANCE_CC
    if volume_to - volume_from >= threshold:
        return "grows"
    if volume_from - volume_to >= threshold:
        return "shrinks"
    return "stable"


def course_of(events: Sequence[str], succeeded: int) -> str:
    """One word for a chain's events (rules in the module docstring)."""
    if succeeded < 2:
        return NOT_ASSESSABLE
    moves = ["rise" if e in RISES else "fall" for e in events if e in RISES or e in FALLS]
    if not moves:
        return "absent" if all(e == "absent" for e in events) else "stable"
    if all(m == "rise" for m in moves):
        return "appeared" if "appears" in events else "growing"
    if all(m == "fall" for m in moves):
        return "resolved" if "resolves" in events else "shrinking"
    first_fall = moves.index("fall")
    if all(m == "fall" for m in moves[first_fall:]):
        return "peaking"
    return "fluctuating"


def slope(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Least-squares slope of y over x; None with fewer than 2 points or no spread in x."""
    if len(x) < 2:
        return None
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    spread = xs - xs.mean()
    denominator = float(spread @ spread)
    if denominator == 0.0:
        return None
    return float(spread @ (ys - ys.mean())) / denominator


# --- one patient ------------------------------------------------------------------------------


def _patient_trend(alias: str, rows: list[Mapping[str, Any]], rules: TrendRules) -> PatientTrend:
    ordered = sorted(rows, key=lambda row: sort_key(dict(row)))
    months, basis = _months(ordered)
    points = [_point(row, m, rules) for row, m in zip(ordered, months, strict=True)]
    chains = [_chain(task, [p for p in points if p.task == task], rules) for task in _tasks(points)]
    # Tasks that never showed a lesion say nothing about how the patient's injury changes.
    injured = [c for c in chains if any(p.positive for p in c.points)] or chains
    succeeded = [p for p in points if p.succeeded]
    positives = [p for p in succeeded if p.positive]
    dated = [p.date for p in points if p.date]
    intervals = sorted(
        (i for c in chains for i in c.intervals), key=lambda i: (i.date_to or "", i.task or "")
    )
    volumes = [p.volume for p in succeeded if p.volume is not None]
    shifts = [c.centroid_shift for c in chains if c.centroid_shift is not None]
    return PatientTrend(
        patient_alias=alias,
        patient_id=next((str(r["patient_id"]) for r in ordered if r.get("patient_id")), None),
        tasks=sorted({p.task for p in points if p.task}),
        followups=len(points),
        succeeded=len(succeeded),
        failed=len(points) - len(succeeded),
        first_date=min(dated, default=None),
        last_date=max(dated, default=None),
        first_detection_date=positives[0].date if positives else None,
        first_detection_months=positives[0].months if positives else None,
        volumes_cc=[p.volume if p.succeeded else None for p in points],
        months=[p.months for p in points],
        intervals=intervals,
        course=_patient_course(injured),
        growth_rate_cc_per_month=_single_rate([c.growth_rate for c in injured]),
        relative_growth_pct_per_month=_single_rate([c.relative_growth for c in injured]),
        max_volume_cc=max(volumes, default=None),
        last_volume_cc=volumes[-1] if volumes else None,
        centroid_shift_mm=max(shifts, default=None),
        summary=_sentence(chains, len(points) - len(succeeded)),
        months_basis=basis,
        courses={c.task: c.course for c in chains if c.task},
    )


def _tasks(points: Sequence[_Point]) -> list[str | None]:
    """Tasks with at least one succeeded follow-up, sorted; failures without a task form no chain."""
    return sorted({p.task for p in points if p.succeeded}, key=lambda t: t or "")


def _point(row: Mapping[str, Any], months: float | None, rules: TrendRules) -> _Point:
    succeeded = row.get("status") == SUCCEEDED
    found = bool(row.get("lesion_found"))
    volume = finite_float(row.get("lesion_volume_cc"))
    if succeeded and volume is None and not found:
        # The pipeline may leave the volume empty when nothing was found: that is 0 cc.
        volume = 0.0
    return _Point(
        row=row,
        date=_text(row.get("followup_date")),
        months=months,
        task=_text(row.get("task")),
        succeeded=succeeded,
        volume=volume if succeeded else None,
        positive=succeeded and found and volume is not None and volume >= rules.detection_cc,
    )


def _months(rows: Sequence[Mapping[str, Any]]) -> tuple[list[float | None], str]:
    """Months of each row and their basis (rules in the module docstring)."""
    given = [finite_float(row.get("months_since_rt")) for row in rows]
    dates = [_date(row.get("followup_date")) for row in rows]
    anchor = next(((m, d) for m, d in zip(given, dates, strict=True) if m is not None and d), None)
    if anchor is None and any(m is None and d for m, d in zip(given, dates, strict=True)):
        first = min(d for d in dates if d)
        return [_months_between(first, d) if d else None for d in dates], SINCE_FIRST_FOLLOWUP
    filled: list[float | None] = []
    for months, date in zip(given, dates, strict=True):
        if months is None and date and anchor is not None:
            months = anchor[0] + _months_between(anchor[1], date)
        filled.append(months)
    return filled, SINCE_RT


def _months_between(start: dt.date, end: dt.date) -> float:
    return (end - start).days / DAYS_PER_MONTH


# --- one chain --------------------------------------------------------------------------------


def _chain(task: str | None, points: list[_Point], rules: TrendRules) -> _Chain:
    succeeded = [p for p in points if p.succeeded and p.volume is not None]
    intervals = [_interval(a, b, rules) for a, b in itertools.pairwise(succeeded)]
    timed = [
        (p.months, p.volume, p.positive) for p in succeeded if p.months is not None and p.volume is not None
    ]
    log_volumes = [(m, math.log(v)) for m, v, positive in timed if positive and v > 0]
    return _Chain(
        task=task,
        points=points,
        intervals=intervals,
        course=course_of([i.event for i in intervals], len(succeeded)),
        growth_rate=slope([m for m, _, _ in timed], [v for _, v, _ in timed]),
        relative_growth=_percent(slope([m for m, _ in log_volumes], [v for _, v in log_volumes])),
        centroid_shift=_centroid_shift([p for p in succeeded if p.positive]),
    )


def _interval(a: _Point, b: _Point, rules: TrendRules) -> Interval:
    # _chain passes only points with a volume.
    volume_a, volume_b = a.volume or 0.0, b.volume or 0.0
    return Interval(
        date_from=a.date,
        date_to=b.date,
        months_from=a.months,
        months_to=b.months,
        event=_event(a.positive, b.positive, volume_a, volume_b, rules),
        volume_from_cc=a.volume,
        volume_to_cc=b.volume,
        ratio=volume_b / volume_a if volume_a > 0 else None,
        task=a.task,
    )


def _centroid_shift(positives: Sequence[_Point]) -> float | None:
    centroids = [c for c in (_centroid(p.row) for p in positives) if c is not None]
    if len(positives) < 2 or len(centroids) < 2:
        return None
    first = centroids[0]
    return max(math.dist(first, c) for c in centroids[1:])


def _centroid(row: Mapping[str, Any]) -> tuple[float, float, float] | None:
    x, y, z = (finite_float(row.get(f"lesion_centroid_{axis}_mm")) for axis in "xyz")
    if x is None or y is None or z is None:
        return None
    return (x, y, z)


def _patient_course(chains: Sequence[_Chain]) -> str:
    courses = {c.course for c in chains if c.course != NOT_ASSESSABLE}
    if not courses:
        return NOT_ASSESSABLE
    return courses.pop() if len(courses) == 1 else MIXED


def _single_rate(rates: Sequence[float | None]) -> float | None:
    """The one chain's rate; None when several chains have one (rates of different injuries)."""
    known = [r for r in rates if r is not None]
    return known[0] if len(known) == 1 else None


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


# --- the sentence -----------------------------------------------------------------------------


def _sentence(chains: Sequence[_Chain], failed: int) -> str:
    """E.g. "appears at 7 months (0.6 cc); grows to 1.1 cc at 12 months"; tasks named when several."""
    parts = [_chain_sentence(c) for c in chains]
    if len(chains) > 1:
        parts = [f"{(c.task or '?').upper()}: {part}" for c, part in zip(chains, parts, strict=True)]
    if not parts:
        parts = ["no follow-up succeeded"]
    if failed:
        parts.append(f"{failed} follow-up{'s' if failed != 1 else ''} failed")
    return "; ".join(parts)


def _chain_sentence(chain: _Chain) -> str:
    succeeded = [p for p in chain.points if p.succeeded and p.volume is not None]
    if not succeeded:
        return "no follow-up succeeded"
    if all(not p.positive for p in succeeded):
        span = (
            _when(succeeded[0]) if len(succeeded) == 1 else f"{_when(succeeded[0])} to {_at(succeeded[-1])}"
        )
        return f"no lesion {span}"
    first = succeeded[0]
    clauses = [f"{_cc(first.volume)} {_when(first)}"] if first.positive else []
    for interval, point in zip(chain.intervals, succeeded[1:], strict=True):
        clause = _clause(interval.event, point)
        if clause:
            clauses.append(clause)
    return "; ".join(clauses)


def _clause(event: str, point: _Point) -> str | None:
    if event == "appears":
        return f"appears {_when(point)} ({_cc(point.volume)})"
    if event == "resolves":
        return f"resolves {_when(point)}"
    if event in ("grows", "shrinks"):
        return f"{event} to {_cc(point.volume)} {_when(point)}"
    if event == "stable":
        return f"stable at {_cc(point.volume)} {_when(point)}"
    return None  # absent: nothing to tell between two scans without a lesion


def _when(point: _Point) -> str:
    if point.months is not None:
        return f"at {_number(point.months, 1)} months"
    return f"on {point.date}" if point.date else "at an undated follow-up"


def _at(point: _Point) -> str:
    """The end of a span: "12 months" after "at 3 months to"."""
    return _when(point).removeprefix("at ")


def _cc(volume: float | None) -> str:
    return "? cc" if volume is None else f"{_number(volume, 2)} cc"


def _number(value: float, decimals: int) -> str:
    """Fixed decimals without trailing zeros: 7.0 → "7", 0.50 → "0.5"."""
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


# --- values -----------------------------------------------------------------------------------


def finite_float(value: Any) -> float | None:
    """``value`` as a finite float; None for None, booleans, text and NaN/inf."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _date(value: Any) -> dt.date | None:
    try:
        return dt.date.fromisoformat(str(value)) if value else None
    except ValueError:
        return None
