"""Trends per patient: events between follow-ups, the course, rates, months and the sentence.

The cohort below is shared with the table and summary tests (they import it from here).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pytest

from worker.audit.rows import FAILED, SUCCEEDED, empty_row
from worker.audit.trends import (
    NOT_ASSESSABLE,
    SINCE_FIRST_FOLLOWUP,
    SINCE_RT,
    TrendRules,
    classify,
    course_of,
    patient_trends,
)

MODALITY = {"orn": "CT", "ce": "MR", "crn": "MR"}


def _key(*parts: str | None) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def followup(
    alias: str,
    date: str,
    months: float | None,
    volume: float | None,
    *,
    task: str = "orn",
    found: bool | None = None,
    centroid: tuple[float, float, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A succeeded follow-up row as the audit writes it (lesion found when volume > 0)."""
    row = empty_row()
    found = bool(volume) if found is None else found
    number = date.replace("-", "")
    row.update(
        key=_key(alias, date, task),
        patient_alias=alias,
        task=task,
        followup_date=date,
        followup_modality=MODALITY[task],
        followup_series_uid=f"1.2.826.0.1.3680043.10.999.{number}.{len(task)}",
        planning_date="2020-01-15",
        months_since_rt=months,
        rt_reference="treatment end",
        status=SUCCEEDED,
        lesion_found=found,
        lesion_volume_cc=volume,
        lesion_components=(1 if found else 0),
        plan_dmax_gy=70.2,
        tau=0.8,
        high_dose_threshold_gy=56.16,
        high_dose_roi_cc=85.31234567,
        registration_method="rigid",
        registration_needs_review=False,
        registration_metric_before=-0.41234567,
        registration_metric_after=-0.81234567,
        body_overlap_before=0.9,
        body_overlap_after=0.97,
        registration_flags="",
        warnings="",
        seg_path=f"{alias}/{date}/seg.dcm",
        rtstruct_path=f"{alias}/{date}/rtstruct.dcm",
        sr_path=f"{alias}/{date}/sr.dcm",
        report_path=f"{alias}/{date}/report.json",
        preview_path=f"{alias}/{date}/preview.png",
        model_id="demo-unet3d",
        weights_sha256="ab" * 32,
        processed_at="2024-05-01T10:00:00Z",
        run_id="run-1",
        seconds_total=12.3456789,
        seconds_infer=3.21,
    )
    if found:
        row.update(
            lesion_centroid_x_mm=centroid[0] if centroid else 10.0,
            lesion_centroid_y_mm=centroid[1] if centroid else -20.0,
            lesion_centroid_z_mm=centroid[2] if centroid else 30.0,
            # Doses spread with the volume, so the dose histogram has more than one bin.
            lesion_dmean_gy=52.123456 + 6 * (volume or 0.0),
            lesion_dmax_gy=64.0 + 3 * (volume or 0.0),
            lesion_d98_gy=55.0,
            lesion_v50gy_pct=99.123456,
            lesion_v60gy_pct=70.5,
            lesion_v70gy_pct=0.0,
        )
    row.update(extra)
    return row


def failed_followup(
    alias: str, date: str | None, months: float | None, *, task: str | None = "orn"
) -> dict[str, Any]:
    """A follow-up (or, with no task and date, a whole patient) that failed."""
    row = empty_row()
    row.update(
        key=_key(alias, date, task),
        patient_alias=alias,
        task=task,
        followup_date=date,
        months_since_rt=months,
        status=FAILED,
        failed_stage="register" if task else "assemble",
        error_code="registration-diverged" if task else "no-rtdose",
        error="the registration did not converge" if task else "no RTDOSE in the patient's files",
        processed_at="2024-05-01T10:00:00Z",
        run_id="run-1",
    )
    return row


def cohort() -> list[dict[str, Any]]:
    """Seven patients, one of each course, shuffled (the writers sort)."""
    rows = [
        # growing: 0.5 → 0.9 → 1.5 cc, the centroid moving 5 mm then 12 mm.
        followup("pt-a-growing", "2020-06-01", 3.0, 0.5, centroid=(0.0, 0.0, 0.0)),
        followup("pt-a-growing", "2020-10-01", 7.0, 0.9, centroid=(3.0, 4.0, 0.0)),
        followup("pt-a-growing", "2021-03-01", 12.0, 1.5, centroid=(0.0, 0.0, 12.0)),
        # shrinking: 2.0 → 1.5 → 1.45 (stable) → 1.0 cc on MR (ce).
        followup("pt-b-shrinking", "2020-05-01", 4.0, 2.0, task="ce"),
        followup("pt-b-shrinking", "2020-09-01", 8.0, 1.5, task="ce"),
        followup("pt-b-shrinking", "2021-01-01", 12.0, 1.45, task="ce"),
        followup("pt-b-shrinking", "2021-05-01", 16.0, 1.0, task="ce"),
        # peaking: nothing, then 0.6 → 1.1 → 0.5 cc (crn).
        followup("pt-c-peaking", "2020-06-01", 3.0, 0.0, task="crn"),
        followup("pt-c-peaking", "2020-10-01", 7.0, 0.6, task="crn"),
        followup("pt-c-peaking", "2021-03-01", 12.0, 1.1, task="crn"),
        followup("pt-c-peaking", "2021-08-01", 17.0, 0.5, task="crn"),
        # appears, with a lesion under the detection limit first and a failure in the middle.
        followup("pt-d-appears", "2020-04-01", 2.0, None, found=False),
        followup("pt-d-appears", "2020-08-01", 6.0, 0.02, found=True),
        failed_followup("pt-d-appears", "2020-12-01", 10.0),
        followup("pt-d-appears", "2021-04-01", 14.0, 0.4),
        # resolves: 0.8 cc, then nothing (the pipeline leaves the volume empty).
        followup("pt-e-resolves", "2020-07-01", 5.0, 0.8, task="ce"),
        followup("pt-e-resolves", "2021-01-01", 11.0, None, task="ce", found=False),
        # the whole patient failed (no RTDOSE): no task, no date.
        failed_followup("pt-f-failed", None, None, task=None),
        # one follow-up only.
        followup("pt-g-single", "2020-09-01", 6.0, 0.7),
    ]
    order = np.random.default_rng(7).permutation(len(rows))
    return [rows[i] for i in order]


def by_alias(rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {trend.patient_alias: trend for trend in patient_trends(cohort() if rows is None else rows)}


# --- events and courses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "event"),
    [
        (0.0, 0.6, "appears"),
        (0.04, 0.05, "appears"),  # the detection limit itself counts
        (0.6, 0.0, "resolves"),
        (0.0, 0.049, "absent"),
        (1.0, 1.2, "grows"),  # exactly 20 %
        (1.0, 1.19, "stable"),
        (1.0, 0.8, "shrinks"),
        (0.2, 0.3, "grows"),  # small lesions: the 0.1 cc floor, not 20 % of 0.2
        (0.2, 0.29, "stable"),
        (0.3, 0.2, "shrinks"),
    ],
)
def test_events_follow_the_thresholds(before: float, after: float, event: str) -> None:
    assert classify(before, after) == event


def test_rules_are_configurable() -> None:
    rules = TrendRules(detection_cc=0.5, change_fraction=0.5, change_cc=0.0)
    assert classify(0.4, 0.6, rules) == "appears"
    assert classify(1.0, 1.4, rules) == "stable"
    assert classify(1.0, 1.5, rules) == "grows"


@pytest.mark.parametrize(
    ("events", "course"),
    [
        (["grows", "stable", "grows"], "growing"),
        (["shrinks", "stable"], "shrinking"),
        (["appears", "grows", "shrinks"], "peaking"),
        (["grows", "shrinks", "resolves"], "peaking"),
        (["absent", "appears", "grows"], "appeared"),
        (["shrinks", "resolves", "absent"], "resolved"),
        (["stable", "stable"], "stable"),
        (["absent"], "absent"),
        (["shrinks", "grows"], "fluctuating"),
        (["appears", "resolves", "appears"], "fluctuating"),
    ],
)
def test_course_of_events(events: list[str], course: str) -> None:
    assert course_of(events, succeeded=len(events) + 1) == course


def test_each_patient_gets_its_course() -> None:
    courses = {alias: trend.course for alias, trend in by_alias().items()}
    assert courses == {
        "pt-a-growing": "growing",
        "pt-b-shrinking": "shrinking",
        "pt-c-peaking": "peaking",
        "pt-d-appears": "appeared",
        "pt-e-resolves": "resolved",
        "pt-f-failed": NOT_ASSESSABLE,
        "pt-g-single": NOT_ASSESSABLE,
    }


def test_trends_are_sorted_by_alias_and_count_followups() -> None:
    trends = patient_trends(cohort())
    assert [t.patient_alias for t in trends] == sorted(t.patient_alias for t in trends)
    counts = {t.patient_alias: (t.followups, t.succeeded, t.failed) for t in trends}
    assert counts["pt-d-appears"] == (4, 3, 1)
    assert counts["pt-f-failed"] == (1, 0, 1)
    assert all(t.patient_id is None for t in trends)


# --- one patient in detail --------------------------------------------------------------------


def test_peaking_patient_intervals_and_sentence() -> None:
    trend = by_alias()["pt-c-peaking"]
    assert [i.event for i in trend.intervals] == ["appears", "grows", "shrinks"]
    assert [(i.date_from, i.date_to) for i in trend.intervals] == [
        ("2020-06-01", "2020-10-01"),
        ("2020-10-01", "2021-03-01"),
        ("2021-03-01", "2021-08-01"),
    ]
    assert [(i.months_from, i.months_to) for i in trend.intervals] == [(3.0, 7.0), (7.0, 12.0), (12.0, 17.0)]
    assert trend.intervals[0].ratio is None  # from 0 cc
    assert trend.intervals[1].ratio == pytest.approx(1.1 / 0.6)
    assert trend.first_detection_date == "2020-10-01"
    assert trend.first_detection_months == 7.0
    assert (trend.max_volume_cc, trend.last_volume_cc) == (1.1, 0.5)
    assert trend.volumes_cc == [0.0, 0.6, 1.1, 0.5]
    assert trend.tasks == ["crn"]
    assert trend.summary == (
        "appears at 7 months (0.6 cc); grows to 1.1 cc at 12 months; shrinks to 0.5 cc at 17 months"
    )


def test_failed_followup_in_the_middle_is_skipped_and_counted() -> None:
    trend = by_alias()["pt-d-appears"]
    assert trend.volumes_cc == [0.0, 0.02, None, 0.4]
    assert trend.months == [2.0, 6.0, 10.0, 14.0]
    # The interval joins the follow-ups on either side of the failed one.
    assert [(i.date_from, i.date_to, i.event) for i in trend.intervals] == [
        ("2020-04-01", "2020-08-01", "absent"),
        ("2020-08-01", "2021-04-01", "appears"),
    ]
    assert trend.first_detection_date == "2021-04-01"  # 0.02 cc is under the detection limit
    assert trend.summary == "appears at 14 months (0.4 cc); 1 follow-up failed"


def test_whole_patient_failure() -> None:
    trend = by_alias()["pt-f-failed"]
    assert (trend.followups, trend.succeeded, trend.failed) == (1, 0, 1)
    assert trend.tasks == []
    assert (trend.first_date, trend.last_date, trend.first_detection_date) == (None, None, None)
    assert trend.volumes_cc == [None]
    assert trend.intervals == []
    assert trend.growth_rate_cc_per_month is None
    assert trend.max_volume_cc is None
    assert trend.summary == "no follow-up succeeded; 1 follow-up failed"


def test_single_followup_is_not_assessable() -> None:
    trend = by_alias()["pt-g-single"]
    assert trend.course == NOT_ASSESSABLE
    assert trend.growth_rate_cc_per_month is None
    assert trend.relative_growth_pct_per_month is None
    assert trend.centroid_shift_mm is None
    assert trend.summary == "0.7 cc at 6 months"


def test_resolved_and_absent_sentences() -> None:
    assert by_alias()["pt-e-resolves"].summary == "0.8 cc at 5 months; resolves at 11 months"
    rows = [followup("pt-x", "2020-03-01", 2.0, 0.0), followup("pt-x", "2020-09-01", 8.0, 0.0)]
    trend = by_alias(rows)["pt-x"]
    assert trend.course == "absent"
    assert trend.summary == "no lesion at 2 months to 8 months"


# --- rates and shift --------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["pt-a-growing", "pt-b-shrinking", "pt-c-peaking", "pt-d-appears"])
def test_growth_rates_match_polyfit(alias: str) -> None:
    trend = by_alias()[alias]
    kept = [(m, v) for m, v in zip(trend.months, trend.volumes_cc, strict=True) if v is not None]
    months, volumes = np.array(kept).T
    assert trend.growth_rate_cc_per_month == pytest.approx(np.polyfit(months, volumes, 1)[0])
    positive = volumes >= TrendRules().detection_cc
    if positive.sum() >= 2:
        expected = 100 * np.polyfit(months[positive], np.log(volumes[positive]), 1)[0]
        assert trend.relative_growth_pct_per_month == pytest.approx(expected)
    else:
        assert trend.relative_growth_pct_per_month is None


def test_growing_patient_rates_are_positive_and_shrinking_negative() -> None:
    trends = by_alias()
    assert trends["pt-a-growing"].growth_rate_cc_per_month > 0
    assert trends["pt-a-growing"].relative_growth_pct_per_month > 0
    assert trends["pt-b-shrinking"].growth_rate_cc_per_month < 0


def test_centroid_shift_is_the_largest_distance_from_the_first_lesion() -> None:
    assert by_alias()["pt-a-growing"].centroid_shift_mm == pytest.approx(12.0)
    rows = [followup("pt-x", "2020-03-01", 2.0, 0.5), followup("pt-x", "2020-09-01", 8.0, 0.6)]
    rows[1].update(lesion_centroid_x_mm=None)
    assert by_alias(rows)["pt-x"].centroid_shift_mm is None


# --- months and tasks -------------------------------------------------------------------------


def test_missing_months_are_filled_from_dates_since_rt() -> None:
    rows = [
        followup("pt-x", "2020-03-01", 2.0, 0.5),
        followup("pt-x", "2020-09-01", None, 0.9),
    ]
    trend = by_alias(rows)["pt-x"]
    assert trend.months_basis == SINCE_RT
    assert trend.months[1] == pytest.approx(2.0 + 184 / 30.44)


def test_months_count_from_the_first_followup_without_any_rt_reference() -> None:
    rows = [
        followup("pt-x", "2020-09-01", None, 0.9),
        followup("pt-x", "2020-03-01", None, 0.5),
    ]
    trend = by_alias(rows)["pt-x"]
    assert trend.months_basis == SINCE_FIRST_FOLLOWUP
    assert trend.months == [0.0, pytest.approx(184 / 30.44)]
    assert trend.intervals[0].event == "grows"
    assert trend.growth_rate_cc_per_month == pytest.approx(0.4 / (184 / 30.44))


def test_tasks_are_followed_separately() -> None:
    rows = [
        followup("pt-x", "2020-03-01", 2.0, 0.5, task="orn"),
        followup("pt-x", "2020-03-01", 2.0, 0.0, task="crn"),
        followup("pt-x", "2020-09-01", 8.0, 1.0, task="orn"),
        followup("pt-x", "2020-09-01", 8.0, 0.0, task="crn"),
    ]
    trend = by_alias(rows)["pt-x"]
    assert trend.tasks == ["crn", "orn"]
    assert [(i.task, i.event) for i in trend.intervals] == [("crn", "absent"), ("orn", "grows")]
    assert trend.courses == {"crn": "absent", "orn": "growing"}
    # CRN never showed a lesion: the course and rate are ORN's.
    assert trend.course == "growing"
    assert trend.growth_rate_cc_per_month == pytest.approx(0.5 / 6)
    assert (
        trend.summary
        == "CRN: no lesion at 2 months to 8 months; ORN: 0.5 cc at 2 months; grows to 1 cc at 8 months"
    )


def test_two_tasks_with_lesions_that_disagree_are_mixed() -> None:
    rows = [
        followup("pt-x", "2020-03-01", 2.0, 0.5, task="orn"),
        followup("pt-x", "2020-03-01", 2.0, 2.0, task="crn"),
        followup("pt-x", "2020-09-01", 8.0, 1.0, task="orn"),
        followup("pt-x", "2020-09-01", 8.0, 1.0, task="crn"),
    ]
    trend = by_alias(rows)["pt-x"]
    assert trend.courses == {"crn": "shrinking", "orn": "growing"}
    assert trend.course == "mixed"
    assert trend.growth_rate_cc_per_month is None  # two injuries: no single rate
    assert trend.max_volume_cc == 2.0
    assert trend.summary == (
        "CRN: 2 cc at 2 months; shrinks to 1 cc at 8 months; "
        "ORN: 0.5 cc at 2 months; grows to 1 cc at 8 months"
    )


def test_patient_id_is_carried_when_present() -> None:
    rows = [followup("pt-x", "2020-03-01", 2.0, 0.5, patient_id="PAT-001")]
    assert by_alias(rows)["pt-x"].patient_id == "PAT-001"


def test_relative_growth_needs_two_positive_followups() -> None:
    trend = by_alias()["pt-d-appears"]
    assert trend.relative_growth_pct_per_month is None
    assert math.isfinite(trend.growth_rate_cc_per_month)
