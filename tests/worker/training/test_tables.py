"""Evaluation tables: summaries against hand-computed means, Markdown cells, files read back."""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest

from worker.training.tables import (
    CSV_COLUMNS,
    EMPTY_CASE_NOTE,
    METRIC_COLUMNS,
    Summary,
    default_tau,
    markdown_tables,
    summarise,
    write_evaluation,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _record(
    model: str, task: str, case_id: str, dice: float, hd95: float, tau: float = 0.8
) -> dict[str, Any]:
    """A scored case; the other metrics follow from Dice and HD95 so every column has known values."""
    return {
        "case_id": case_id,
        "task": task,
        "model": model,
        "tau": tau,
        "dice": dice,
        "iou": dice / (2 - dice),
        "precision": dice,
        "recall": dice,
        "hd95_mm": hd95,
        "assd_mm": hd95 / 4,
        "predicted_cc": 10.0 * dice,
        "truth_cc": 10.0,
    }


def _failed(model: str, task: str, case_id: str, tau: float = 0.8) -> dict[str, Any]:
    return {"case_id": case_id, "task": task, "model": model, "tau": tau, "error": "registration failed"}


#: Dice per task of model "base": the task means (0.3, 0.7, 1.0) average to 0.6667, the six
#: cases pooled to 3.7 / 6 = 0.6167, so "overall" shows which of the two was computed.
BASE_DICE = {"orn": [0.2, 0.4], "ce": [0.6, 0.6, 0.9], "crn": [1.0]}
FULL_DICE = {"orn": [0.5, 0.7, 0.9], "ce": [0.8, 0.6], "crn": [0.3, 0.5]}


def _two_models() -> list[dict[str, Any]]:
    """Cases listed task by task in reverse order, so the tables' task order comes from TASK_ORDER."""
    records = []
    for model, dice_by_task in (("base", BASE_DICE), ("base-t-b-c-l", FULL_DICE)):
        for task in ("crn", "ce", "orn"):
            for number, dice in enumerate(dice_by_task[task]):
                records.append(_record(model, task, f"{task}-{number}", dice, hd95=20 * (1 - dice)))
    return records


def _by_group(summaries: list[Summary], model: str) -> dict[str, Summary]:
    return {summary.group: summary for summary in summaries if summary.model == model}


def _table(markdown: str, heading: str) -> list[list[str]]:
    """The rows (header first, separator dropped) of the Markdown table under a ``### heading``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"### {heading}"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return [row for row in rows if set(row) != {"---"}]


# --- summarise --------------------------------------------------------------------------------


def test_summaries_come_per_model_then_tasks_in_task_order_then_overall():
    summaries = summarise(_two_models())

    order = [(summary.model, summary.group) for summary in summaries]
    assert order == [
        ("base", "orn"),
        ("base", "ce"),
        ("base", "crn"),
        ("base", "overall"),
        ("base-t-b-c-l", "orn"),
        ("base-t-b-c-l", "ce"),
        ("base-t-b-c-l", "crn"),
        ("base-t-b-c-l", "overall"),
    ]


def test_task_means_and_sample_stds_match_hand_computed_values():
    base = _by_group(summarise(_two_models()), "base")

    assert base["orn"].cases == 2
    assert base["orn"].mean["dice"] == pytest.approx(0.3, abs=1e-12)
    # Sample std (ddof=1) of 0.2 and 0.4: 0.1 * sqrt(2).
    assert base["orn"].std["dice"] == pytest.approx(0.1414213562373095, abs=1e-12)
    assert base["ce"].mean["dice"] == pytest.approx(0.7, abs=1e-12)
    assert base["ce"].std["dice"] == pytest.approx(statistics.stdev([0.6, 0.6, 0.9]), abs=1e-12)
    assert base["ce"].mean["hd95_mm"] == pytest.approx(6.0, abs=1e-12)
    assert base["ce"].mean["assd_mm"] == pytest.approx(1.5, abs=1e-12)


def test_overall_pools_every_case_rather_than_averaging_task_means():
    base = _by_group(summarise(_two_models()), "base")
    pooled = [dice for values in BASE_DICE.values() for dice in values]

    assert base["overall"].cases == 6
    assert base["overall"].mean["dice"] == pytest.approx(3.7 / 6, abs=1e-12)
    assert base["overall"].std["dice"] == pytest.approx(statistics.stdev(pooled), abs=1e-12)
    mean_of_task_means = statistics.mean(base[task].mean["dice"] for task in ("orn", "ce", "crn"))
    assert abs(base["overall"].mean["dice"] - mean_of_task_means) > 0.04


def test_a_single_case_has_zero_std():
    crn = _by_group(summarise(_two_models()), "base")["crn"]

    assert crn.cases == 1
    assert crn.mean["dice"] == 1.0
    assert crn.std == dict.fromkeys(METRIC_COLUMNS, 0.0)


def test_failed_cases_are_counted_and_left_out_of_the_means():
    records = _two_models()
    records.append(_failed("base", "orn", "orn-broken"))
    no_metric_values = _record("base", "orn", "orn-nan", 0.9, hd95=1.0)
    no_metric_values["hd95_mm"] = float("nan")
    records.append(no_metric_values)
    records.append(_failed("base", "ce", "ce-broken") | dict.fromkeys(METRIC_COLUMNS))

    base = _by_group(summarise(records), "base")

    assert (base["orn"].cases, base["orn"].failed) == (2, 2)
    assert base["orn"].mean["dice"] == pytest.approx(0.3, abs=1e-12)
    assert (base["ce"].cases, base["ce"].failed) == (3, 1)
    assert (base["crn"].cases, base["crn"].failed) == (1, 0)
    assert (base["overall"].cases, base["overall"].failed) == (6, 3)
    assert base["overall"].mean["dice"] == pytest.approx(3.7 / 6, abs=1e-12)


def test_a_group_whose_every_case_failed_has_no_means():
    summaries = summarise([_failed("base", "crn", "crn-0"), _record("base", "orn", "orn-0", 0.5, 3.0)])

    crn = _by_group(summaries, "base")["crn"]
    assert (crn.cases, crn.failed, crn.mean, crn.std) == (0, 1, {}, {})


def test_models_keep_first_appearance_order_and_tau_ascends():
    records = [
        _record("zeta.pt", "orn", "a", 0.5, 3.0, tau=0.9),
        _record("alpha.pt", "orn", "a", 0.6, 3.0, tau=0.8),
        _record("zeta.pt", "orn", "a", 0.7, 3.0, tau=0.5),
    ]

    keys = [(summary.model, summary.tau, summary.group) for summary in summarise(records)]

    assert keys == [
        ("zeta.pt", 0.5, "orn"),
        ("zeta.pt", 0.5, "overall"),
        ("zeta.pt", 0.9, "orn"),
        ("zeta.pt", 0.9, "overall"),
        ("alpha.pt", 0.8, "orn"),
        ("alpha.pt", 0.8, "overall"),
    ]


# --- Markdown ---------------------------------------------------------------------------------


def _paper_row_records(model: str, tau: float = 0.8) -> list[dict[str, Any]]:
    """Three cases whose mean ± sample std is the paper's 77.11 ± 3.57 Dice and 5.70 ± 0.63 HD95.

    With values m - d, m, m + d the sample std is exactly d.
    """
    return [
        _record(model, task, f"{task}-1", dice, hd95, tau)
        for task, dice, hd95 in (("orn", 0.7354, 5.07), ("ce", 0.7711, 5.70), ("crn", 0.8068, 6.33))
    ]


def test_overall_table_has_one_row_per_model_in_order_with_paper_style_cells():
    records = _paper_row_records("base-t-b-c-l") + _paper_row_records("base") + [_failed("base", "ce", "x")]

    markdown = markdown_tables(summarise(records))

    header, *rows = _table(markdown, "Overall")
    assert header == ["Method", "Dice%", "IoU%", "Precision%", "Recall%", "HD95 (mm)", "ASSD (mm)", "cases"]
    assert [row[0] for row in rows] == ["base-t-b-c-l", "base"]
    assert rows[0][1] == "77.11 ± 3.57"
    assert rows[0][5] == "5.70 ± 0.63"
    assert rows[0][7] == "3"
    assert rows[1][7] == "3 (1 failed)"


def test_per_task_table_has_a_row_per_model_and_task():
    markdown = markdown_tables(summarise(_two_models()))

    header, *rows = _table(markdown, "Per task")
    assert header[:2] == ["Method", "Task"]
    assert [(row[0], row[1]) for row in rows] == [
        (model, task) for model in ("base", "base-t-b-c-l") for task in ("ORN", "CE", "CRN")
    ]
    # base, ORN: Dice 30.00 ± 14.14 (0.2 and 0.4).
    assert rows[0][2] == "30.00 ± 14.14"


def test_markdown_has_headings_and_the_empty_case_note_but_no_sweep_for_one_tau():
    markdown = markdown_tables(summarise(_two_models()))

    headings = [line for line in markdown.splitlines() if line.startswith("### ")]
    assert headings == ["### Overall (τ = 0.8)", "### Per task (τ = 0.8)"]
    assert EMPTY_CASE_NOTE in markdown
    assert "sweep" not in markdown


def test_several_taus_add_a_sweep_table_and_the_main_tables_show_the_default_tau():
    records = _paper_row_records("base", tau=0.8) + [
        _record("base", task, f"{task}-1", 0.5, 9.0, tau=0.6) for task in ("orn", "ce", "crn")
    ]

    markdown = markdown_tables(summarise(records))

    header, *rows = _table(markdown, "τ sweep")
    assert header == ["τ", "base Dice%", "base HD95 (mm)"]
    assert rows == [["0.6", "50.00 ± 0.00", "9.00 ± 0.00"], ["0.8", "77.11 ± 3.57", "5.70 ± 0.63"]]
    # Both τ have three cases: the tie goes to the service's τ 0.8.
    assert _table(markdown, "Overall (τ = 0.8)")[1][1] == "77.11 ± 3.57"


def test_default_tau_is_the_one_with_most_cases():
    records = [_record("base", "orn", f"orn-{n}", 0.5, 3.0, tau=0.5) for n in range(3)]
    records += [_record("base", "orn", "orn-0", 0.5, 3.0, tau=0.8), _failed("other", "ce", "ce-0", tau=0.5)]

    assert default_tau(summarise(records)) == 0.5
    assert default_tau(summarise([_record("m", "ce", "c", 0.5, 3.0, tau=0.3)])) == 0.3


# --- files ------------------------------------------------------------------------------------


def _assert_png_image(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    assert height > 100 and width > 100
    # Bars, text and axes: far more than a blank canvas's one colour (RGB packed into one int).
    rgb = np.round(pixels[..., :3] * 255).astype(np.uint32)
    colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
    assert colours.size > 20


def test_write_evaluation_writes_every_file_and_the_csv_reads_back(tmp_path):
    records = [*_two_models(), _failed("base", "ce", "ce-broken")]

    paths = write_evaluation(records, tmp_path / "eval")

    assert set(paths) == {"csv", "json", "markdown", "per_task_plot"}
    assert all(path.is_file() for path in paths.values())
    assert not (tmp_path / "eval" / "tau_sweep.png").exists()
    with paths["csv"].open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    assert len(rows) == len(records)
    first = rows[0]
    assert (first["model"], first["tau"], first["case_id"], first["task"]) == (
        "base",
        "0.8000",
        "crn-0",
        "crn",
    )
    assert first["dice"] == "1.0000" and first["iou"] == "1.0000" and first["error"] == ""
    broken = rows[-1]
    assert broken["error"] == "registration failed"
    assert all(broken[metric] == "" for metric in (*METRIC_COLUMNS, "predicted_cc", "truth_cc"))
    assert "nan" not in paths["csv"].read_text(encoding="utf-8").lower()


def test_write_evaluation_json_matches_summarise_and_markdown_lists_failures(tmp_path):
    records = [*_two_models(), _failed("base", "ce", "ce-broken")]

    paths = write_evaluation(records, tmp_path)

    document = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert document["summaries"] == [asdict(summary) for summary in summarise(records)]
    assert document["records"] == records
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert markdown.startswith(markdown_tables(summarise(records)))
    assert "ce-broken (ce): registration failed" in markdown


def test_write_evaluation_plots_are_real_images_and_the_tau_plot_needs_two_taus(tmp_path):
    records = _two_models() + [
        _record(model, task, f"{task}-sweep", 0.4, 12.0, tau=0.6)
        for model in ("base", "base-t-b-c-l")
        for task in ("orn", "ce")
    ]

    paths = write_evaluation(records, tmp_path)

    assert paths["tau_plot"] == tmp_path / "tau_sweep.png"
    _assert_png_image(paths["per_task_plot"])
    _assert_png_image(paths["tau_plot"])


def test_write_evaluation_refuses_no_records(tmp_path):
    with pytest.raises(ValueError, match="no evaluation records"):
        write_evaluation([], tmp_path)
