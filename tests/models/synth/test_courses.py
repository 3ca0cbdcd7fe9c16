"""Lesion courses: which patient gets which, the volumes each course gives, and case.json."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from models.synth import TASKS, load_case, write_synthetic_patients
from models.synth.dose import sample_dose_model
from models.synth.lesions import COURSES, _course_steps, _VolumeCourse, place_lesion
from models.synth.params import lesion_course

# Successive volumes differ by this factor while a course fits within
# 0.25–3 cc (up to 5 steps from the smallest volume); the fine-grid voxel
# count of the fit may round it down slightly.
MIN_FACTOR = 1.6 * 0.995


def assert_follows(course: str, volumes: list[float]) -> None:
    """Strict order of ``volumes`` along ``course``."""
    diffs = np.diff(volumes)
    if course == "growing":
        assert np.all(diffs > 0), volumes
    elif course == "shrinking":
        assert np.all(diffs < 0), volumes
    else:
        peak = len(volumes) // 2
        assert np.all(diffs[:peak] > 0) and np.all(diffs[peak:] < 0), volumes


def test_every_course_in_one_case_per_task() -> None:
    assert {lesion_course(task, 0, 3) for task in TASKS} == set(COURSES)
    assert {lesion_course("orn", i, 3) for i in range(3)} == set(COURSES)
    assert [lesion_course(t, i, 3) for t in TASKS for i in range(2)] == [
        "growing",
        "shrinking",
        "shrinking",
        "peaking",
        "peaking",
        "growing",
    ]


def test_two_followups_cannot_peak_and_one_has_no_course() -> None:
    assert {lesion_course(t, i, 2) for t in TASKS for i in range(3)} == {"growing", "shrinking"}
    assert {lesion_course(t, i, 1) for t in TASKS for i in range(3)} == {None}


@pytest.mark.parametrize(
    ("course", "count"),
    [(c, k) for c in COURSES for k in (2, 3, 4, 6, 10) if not (c == "peaking" and k < 3)],
)
def test_place_lesion_follows_the_course(course: str, count: int) -> None:
    rng = np.random.default_rng(count)
    dose = sample_dose_model(rng, "crn", 1, 68.0)
    _, fit = place_lesion("crn", 1, dose, count, rng, course)
    volumes = list(fit.volumes_cc)
    assert_follows(course, volumes)
    assert min(volumes) >= 0.25 * 0.99 and max(volumes) <= 3.0 * 1.01
    steps = int(_course_steps(course, count).max())
    if steps <= 4:  # 0.4 · 1.6⁴ < 3: no need to go under 0.4 cc
        assert min(volumes) >= 0.4 * 0.99
    ratios = [max(a, b) / min(a, b) for a, b in pairwise(volumes)]
    # Past 5 steps the largest factor that fits 0.25–3 cc: 12 ** (1 / steps).
    assert min(ratios) >= (MIN_FACTOR if steps <= 5 else 12 ** (1 / steps) * 0.995)


@pytest.mark.parametrize(("course", "count", "message"), [("stable", 3, "course"), ("peaking", 2, "peaking")])
def test_course_that_cannot_be_drawn_is_refused(course: str, count: int, message: str) -> None:
    dose = sample_dose_model(np.random.default_rng(0), "orn", 1, 68.0)
    with pytest.raises(ValueError, match=message):
        place_lesion("orn", 1, dose, count, np.random.default_rng(0), course)


def test_shrinking_after_failed_fits_keeps_the_course() -> None:
    # The fallback of place_lesion for lesions that do not fit the high dose.
    target = _VolumeCourse(0.5, 1.7, _course_steps("peaking", 5))
    shrunk = target.shrunk()
    assert np.allclose(shrunk.volumes() / target.volumes(), 0.7)
    floor = _VolumeCourse(0.25, 1.6, _course_steps("growing", 7))
    assert np.array_equal(floor.shrunk().volumes(), floor.volumes())  # never grows


@pytest.mark.slow
def test_case_json_volumes_follow_the_course(tmp_path: Path) -> None:
    # One patient per task with three follow-ups: growing, shrinking, peaking.
    folders = write_synthetic_patients(tmp_path, task="all", cases=1, seed=3, followups=3)
    seen = set()
    for folder in folders:
        case = load_case(folder)
        course = case["lesion_course"]
        assert course == lesion_course(case["task"], case["index"], 3)
        assert_follows(course, [fu["lesion"]["volume_cc"] for fu in case["followups"]])
        assert_follows(course, [fu["lesion"]["analytic_volume_cc"] for fu in case["followups"]])
        seen.add(course)
    assert seen == set(COURSES)
