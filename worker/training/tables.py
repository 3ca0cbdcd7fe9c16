"""Evaluation results as the paper reports them: mean ± std tables, a CSV of every case, plots.

The input is one record per evaluated case — a mapping with ``case_id``, ``task``, ``model``,
``tau``, the six metrics of :data:`METRIC_COLUMNS` (overlap ratios 0–1, distances in mm),
``predicted_cc`` and ``truth_cc``. A case that failed carries an ``error`` text instead of
metrics; it is counted and listed, but kept out of the means, so one broken case cannot turn a
whole table into NaN.

Cells are "mean ± std" over cases, with the sample standard deviation (ddof=1) as in the
paper's Tables 1–2; overlap metrics are shown in percent, distances in mm, both with two
decimals. "overall" pools the cases of every task (it is not the mean of the task means).

Plots are drawn on matplotlib's Agg canvas directly, not through pyplot: no global backend, no
figure registry to leak into, and matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.files import write_atomically
from worker.stages.prompts import DEFAULT_TAU

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

METRIC_COLUMNS = ("dice", "iou", "precision", "recall", "hd95_mm", "assd_mm")
TASK_ORDER = ("orn", "ce", "crn")
OVERALL = "overall"
#: Metrics that are ratios 0–1, shown in percent; the others are distances in mm.
OVERLAP_METRICS = frozenset({"dice", "iou", "precision", "recall"})
METRIC_HEADINGS = {
    "dice": "Dice%",
    "iou": "IoU%",
    "precision": "Precision%",
    "recall": "Recall%",
    "hd95_mm": "HD95 (mm)",
    "assd_mm": "ASSD (mm)",
}
CSV_COLUMNS = ("model", "tau", "case_id", "task", *METRIC_COLUMNS, "predicted_cc", "truth_cc", "error")
EMPTY_CASE_NOTE = (
    "Empty prediction or empty truth: overlap ratios 0 (both empty: 1); "
    "HD95/ASSD = the scan's diagonal (both empty: 0)"
)
#: What a failed case without an error text is listed with (a metric missing or not finite).
NO_METRICS_REASON = "metric missing or not finite"
MISSING_CELL = "—"
PLOT_DPI = 100


@dataclass(frozen=True)
class Summary:
    """Mean and std of every metric over one model's cases at one τ, for one task or overall.

    ``cases`` counts the cases in the means; ``failed`` those left out (error or no metrics).
    ``mean`` and ``std`` are keyed by :data:`METRIC_COLUMNS`, in the records' units (ratios
    0–1, mm), and are empty when no case of the group succeeded.
    """

    model: str
    tau: float
    group: str
    cases: int
    failed: int
    mean: dict[str, float]
    std: dict[str, float]


# --- summaries ------------------------------------------------------------------------------


def summarise(records: Sequence[Mapping[str, Any]]) -> list[Summary]:
    """Mean ± sample std of each metric per (model, τ), per task and over all tasks.

    Parameters
    ----------
    records
        One mapping per evaluated case (see the module docstring).

    Returns
    -------
    list of Summary
        Models in order of first appearance, then τ ascending, then the tasks present (in
        :data:`TASK_ORDER`, unknown task names after those) and last ``"overall"``.
    """
    runs: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for record in records:
        runs.setdefault((str(record["model"]), float(record["tau"])), []).append(record)
    models = list(dict.fromkeys(model for model, _ in runs))
    summaries: list[Summary] = []
    for model in models:
        for tau in sorted(tau for run_model, tau in runs if run_model == model):
            run = runs[(model, tau)]
            for task in _tasks_in(run):
                group = [record for record in run if str(record["task"]) == task]
                summaries.append(_summarise_group(model, tau, task, group))
            summaries.append(_summarise_group(model, tau, OVERALL, run))
    return summaries


def is_failed(record: Mapping[str, Any]) -> bool:
    """Whether a record stays out of the means: it has an error, or a metric is absent or not finite."""
    if record.get("error"):
        return True
    return any(not _is_finite_number(record.get(metric)) for metric in METRIC_COLUMNS)


def default_tau(summaries: Sequence[Summary]) -> float:
    """The τ the main tables are shown for: the one with the most cases.

    A τ sweep evaluates every τ on the same cases, so counts tie there; the tie goes to the
    service's own τ (:data:`worker.stages.prompts.DEFAULT_TAU`), or the closest to it.
    """
    if not summaries:
        raise ValueError("no summaries: nothing was evaluated")
    counts: Counter[float] = Counter()
    for summary in summaries:
        if summary.group == OVERALL:
            counts[summary.tau] += summary.cases + summary.failed
    return min(counts, key=lambda tau: (-counts[tau], abs(tau - DEFAULT_TAU), tau))


def _tasks_in(records: Sequence[Mapping[str, Any]]) -> list[str]:
    return _ordered_tasks(str(record["task"]) for record in records)


def _ordered_tasks(names: Iterable[str]) -> list[str]:
    """The distinct task names: those of :data:`TASK_ORDER` in its order, then others as met."""
    present = list(dict.fromkeys(names))
    known = [task for task in TASK_ORDER if task in present]
    return known + [task for task in present if task not in TASK_ORDER]


def _summarise_group(model: str, tau: float, group: str, records: Sequence[Mapping[str, Any]]) -> Summary:
    scored = [record for record in records if not is_failed(record)]
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    if scored:
        for metric in METRIC_COLUMNS:
            values = np.array([float(record[metric]) for record in scored], dtype=np.float64)
            mean[metric] = float(values.mean())
            # The paper's ± is the sample std; one case has no spread to estimate, so 0.
            std[metric] = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return Summary(model, tau, group, len(scored), len(records) - len(scored), mean, std)


def _is_finite_number(value: Any) -> bool:
    try:
        return value is not None and not isinstance(value, bool) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


# --- Markdown -------------------------------------------------------------------------------


def markdown_tables(summaries: Sequence[Summary], *, tau: float | None = None) -> str:
    """The summaries as Markdown: overall table, per-task table and, with several τ, a τ sweep.

    Parameters
    ----------
    summaries
        As :func:`summarise` returns them.
    tau
        The τ of the overall and per-task tables; by default :func:`default_tau`.

    Returns
    -------
    str
        Markdown with ``###`` headings, ending in a newline.
    """
    shown_tau = default_tau(summaries) if tau is None else tau
    at_tau = [summary for summary in summaries if summary.tau == shown_tau]
    sections = [
        _overall_table(at_tau, shown_tau),
        _per_task_table(at_tau, shown_tau),
    ]
    if len(_taus(summaries)) > 1:
        sections.append(_tau_sweep_table(summaries))
    sections.append(f"Mean ± sample std over cases; failed cases left out. {EMPTY_CASE_NOTE}.")
    return "\n\n".join(sections) + "\n"


def failed_cases_markdown(records: Sequence[Mapping[str, Any]]) -> str:
    """A ``###`` list of the cases left out of the means and why; empty text when none failed."""
    failed = [record for record in records if is_failed(record)]
    if not failed:
        return ""
    lines = [f"### Failed cases ({len(failed)})", ""]
    for record in failed:
        reason = str(record.get("error") or NO_METRICS_REASON).replace("\n", " ")
        lines.append(
            f"- {_cell_text(str(record['model']))}, τ = {float(record['tau']):g}, "
            f"{record['case_id']} ({record['task']}): {reason}"
        )
    return "\n".join(lines) + "\n"


def format_cell(summary: Summary, metric: str) -> str:
    """ "77.11 ± 3.57": percent for overlap metrics, mm for distances; "—" without cases."""
    if metric not in summary.mean:
        return MISSING_CELL
    scale = 100.0 if metric in OVERLAP_METRICS else 1.0
    return f"{scale * summary.mean[metric]:.2f} ± {scale * summary.std[metric]:.2f}"


def _overall_table(summaries: Sequence[Summary], tau: float) -> str:
    header = ["Method", *(METRIC_HEADINGS[metric] for metric in METRIC_COLUMNS), "cases"]
    rows = [
        [_cell_text(s.model), *(format_cell(s, m) for m in METRIC_COLUMNS), _cases_text(s)]
        for s in summaries
        if s.group == OVERALL
    ]
    return _section(f"Overall (τ = {tau:g})", header, rows)


def _per_task_table(summaries: Sequence[Summary], tau: float) -> str:
    header = ["Method", "Task", *(METRIC_HEADINGS[metric] for metric in METRIC_COLUMNS), "cases"]
    rows = [
        [_cell_text(s.model), s.group.upper(), *(format_cell(s, m) for m in METRIC_COLUMNS), _cases_text(s)]
        for s in summaries
        if s.group != OVERALL
    ]
    return _section(f"Per task (τ = {tau:g})", header, rows)


def _tau_sweep_table(summaries: Sequence[Summary]) -> str:
    overall = [summary for summary in summaries if summary.group == OVERALL]
    models = list(dict.fromkeys(summary.model for summary in overall))
    by_key = {(summary.model, summary.tau): summary for summary in overall}
    header = ["τ"]
    for model in models:
        header += [f"{_cell_text(model)} Dice%", f"{_cell_text(model)} HD95 (mm)"]
    rows = []
    for tau in _taus(summaries):
        row = [f"{tau:g}"]
        for model in models:
            summary = by_key.get((model, tau))
            row += [_sweep_cell(summary, "dice"), _sweep_cell(summary, "hd95_mm")]
        rows.append(row)
    return _section("τ sweep (overall)", header, rows)


def _sweep_cell(summary: Summary | None, metric: str) -> str:
    return MISSING_CELL if summary is None else format_cell(summary, metric)


def _section(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        f"### {title}",
        "",
        _table_line(header),
        _table_line(["---"] * len(header)),
        *(_table_line(row) for row in rows),
    ]
    return "\n".join(lines)


def _table_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cell_text(text: str) -> str:
    """A label safe inside a table cell: a "|" in a file name would split the cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _cases_text(summary: Summary) -> str:
    return f"{summary.cases} ({summary.failed} failed)" if summary.failed else str(summary.cases)


def _taus(summaries: Sequence[Summary]) -> list[float]:
    return sorted({summary.tau for summary in summaries})


# --- files ----------------------------------------------------------------------------------


def write_evaluation(records: Sequence[Mapping[str, Any]], out_dir: Path) -> dict[str, Path]:
    """Write the evaluation's CSV, JSON, Markdown and plots into ``out_dir``, each atomically.

    Parameters
    ----------
    records
        One mapping per evaluated case (see the module docstring); at least one.
    out_dir
        Created if missing; files of the same names are replaced.

    Returns
    -------
    dict of str to Path
        ``csv`` (cases.csv), ``json`` (summary.json), ``markdown`` (summary.md),
        ``per_task_plot`` (per_task.png) and, only when several τ were evaluated,
        ``tau_plot`` (tau_sweep.png).

    Raises
    ------
    ValueError
        If ``records`` is empty.
    """
    if not records:
        raise ValueError("no evaluation records to write")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = summarise(records)
    paths = {
        "csv": out_dir / "cases.csv",
        "json": out_dir / "summary.json",
        "markdown": out_dir / "summary.md",
        "per_task_plot": out_dir / "per_task.png",
    }
    write_atomically(paths["csv"], cases_csv(records).encode("utf-8"))
    write_atomically(paths["json"], summary_json(summaries, records).encode("utf-8"))
    markdown = markdown_tables(summaries)
    failures = failed_cases_markdown(records)
    write_atomically(paths["markdown"], (markdown + ("\n" + failures if failures else "")).encode("utf-8"))
    write_atomically(paths["per_task_plot"], per_task_png(summaries))
    if len(_taus(summaries)) > 1:
        paths["tau_plot"] = out_dir / "tau_sweep.png"
        write_atomically(paths["tau_plot"], tau_sweep_png(summaries))
    return paths


def cases_csv(records: Sequence[Mapping[str, Any]]) -> str:
    """One row per record in :data:`CSV_COLUMNS` order; floats with 4 decimals, gaps empty."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    for record in records:
        writer.writerow([_csv_cell(record.get(column)) for column in CSV_COLUMNS])
    return text.getvalue()


def summary_json(summaries: Sequence[Summary], records: Sequence[Mapping[str, Any]]) -> str:
    """``{"summaries": [...], "records": [...]}``; non-finite numbers become null (strict JSON)."""
    document = {"summaries": [asdict(summary) for summary in summaries], "records": list(records)}
    return json.dumps(_json_ready(document), indent=2, allow_nan=False) + "\n"


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (float, np.floating)):
        return str(value)
    return f"{float(value):.4f}" if math.isfinite(value) else ""


def _json_ready(value: Any) -> Any:
    """Plain JSON values: numpy scalars unwrapped, NaN and infinities as None."""
    if isinstance(value, Mapping):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- plots ----------------------------------------------------------------------------------


def per_task_png(summaries: Sequence[Summary], *, tau: float | None = None) -> bytes:
    """Grouped bars (x: tasks then overall, one bar per model) of Dice% and HD95, ± std, as PNG."""
    from matplotlib.figure import Figure

    shown_tau = default_tau(summaries) if tau is None else tau
    at_tau = [summary for summary in summaries if summary.tau == shown_tau]
    groups = [*_ordered_tasks(s.group for s in at_tau if s.group != OVERALL), OVERALL]
    models = list(dict.fromkeys(summary.model for summary in at_tau))
    by_key = {(summary.model, summary.group): summary for summary in at_tau}
    figure = Figure(figsize=(12, 4.5), dpi=PLOT_DPI, layout="constrained")
    dice_axes, hd95_axes = figure.subplots(1, 2)
    for axes, metric in ((dice_axes, "dice"), (hd95_axes, "hd95_mm")):
        _draw_grouped_bars(axes, metric, groups, models, by_key)
    _finish_panels(figure, dice_axes, len(models))
    figure.suptitle(f"Per task, τ = {shown_tau:g} (mean ± std over cases)")
    return _png_bytes(figure)


def tau_sweep_png(summaries: Sequence[Summary]) -> bytes:
    """Overall Dice% and HD95 against τ, one line (± std) per model, as PNG."""
    from matplotlib.figure import Figure

    overall = [summary for summary in summaries if summary.group == OVERALL and summary.cases]
    models = list(dict.fromkeys(summary.model for summary in overall))
    figure = Figure(figsize=(12, 4.5), dpi=PLOT_DPI, layout="constrained")
    dice_axes, hd95_axes = figure.subplots(1, 2)
    for axes, metric in ((dice_axes, "dice"), (hd95_axes, "hd95_mm")):
        scale = _plot_scale(metric)
        for model in models:
            points = sorted((s.tau, s) for s in overall if s.model == model)
            axes.errorbar(
                [tau for tau, _ in points],
                [scale * s.mean[metric] for _, s in points],
                yerr=[scale * s.std[metric] for _, s in points],
                marker="o",
                capsize=3,
                label=model,
            )
        axes.set_xticks(_taus(overall))
        axes.set_xlabel("τ (fraction of the dose maximum)")
        axes.set_ylabel(METRIC_HEADINGS[metric])
        axes.grid(alpha=0.3)
    _finish_panels(figure, dice_axes, len(models))
    figure.suptitle("τ sweep, all tasks pooled (mean ± std over cases)")
    return _png_bytes(figure)


def _draw_grouped_bars(
    axes: Axes,
    metric: str,
    groups: Sequence[str],
    models: Sequence[str],
    by_key: Mapping[tuple[str, str], Summary],
) -> None:
    scale = _plot_scale(metric)
    width = 0.8 / max(len(models), 1)
    for number, model in enumerate(models):
        # Groups this model has no scored case in get no bar rather than a misleading zero.
        drawn = [
            (position, by_key[(model, group)])
            for position, group in enumerate(groups)
            if (model, group) in by_key and by_key[(model, group)].cases
        ]
        offset = (number - (len(models) - 1) / 2) * width
        axes.bar(
            [position + offset for position, _ in drawn],
            [scale * summary.mean[metric] for _, summary in drawn],
            width,
            yerr=[scale * summary.std[metric] for _, summary in drawn],
            capsize=3,
            label=model,
        )
    axes.set_xticks(
        range(len(groups)), [group.upper() if group != OVERALL else "Overall" for group in groups]
    )
    axes.set_ylabel(METRIC_HEADINGS[metric])
    axes.grid(axis="y", alpha=0.3)


def _finish_panels(figure: Figure, dice_axes: Axes, models: int) -> None:
    """Dice on a 0–100 scale (more only if an error bar needs it); the legend below, off the data."""
    dice_axes.set_ylim(0, max(100.0, dice_axes.get_ylim()[1]))
    handles, labels = dice_axes.get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=min(models, 4), fontsize="small")


def _plot_scale(metric: str) -> float:
    return 100.0 if metric in OVERLAP_METRICS else 1.0


def _png_bytes(figure: Figure) -> bytes:
    """Render on an Agg canvas of its own; no Software metadata, so equal inputs give equal bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    encoded = io.BytesIO()
    figure.savefig(encoded, format="png", metadata={"Software": None})
    return encoded.getvalue()
