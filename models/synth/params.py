"""Everything random about one synthetic patient, drawn once from the seed.

A case is keyed by (seed, task, index, size, followups); every random draw comes
from a NumPy generator seeded by that key plus a stream name, so one part of
the case (say the noise of a follow-up image) does not shift when another part
changes.

The course of the lesion volume over two or more follow-ups is not random: it
cycles through ``COURSES`` with the patient index, offset by task, so three
consecutive indices of one task, or one index of each of the three tasks,
hold every course (see ``lesion_course``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import numpy as np

from .dicom_common import PatientInfo
from .dose import DoseModel, sample_dose_model
from .geometry import Grid
from .lesions import COURSES, Lesion, LesionFit, place_lesion
from .transform import TrueTransform, sample_transform

TASKS = ("orn", "ce", "crn")
SIZES = ("small", "full")

_DIAGNOSIS = {
    "orn": ("oropharyngeal squamous cell carcinoma", "Oropharynx"),
    "ce": ("nasopharyngeal carcinoma", "Nasopharynx"),
    "crn": ("nasopharyngeal carcinoma", "Nasopharynx"),
}
_SCHEDULES = ((66.0, 33), (66.0, 30), (63.0, 35), (60.0, 30))
# Months from the end of radiotherapy to the first follow-up scan.
_FIRST_MONTHS = {"orn": (6, 30), "ce": (3, 18), "crn": (6, 36)}
_DAYS_PER_MONTH = 30.44
# Centre of rotation of the misalignment: the middle of the head, so the
# rotation also displaces the lesion (as a tilted head on the couch would).
_ROTATION_CENTRE = np.array([0.0, 0.0, -20.0])
# Shifts the course cycle per task, so ``--task all`` with one case per task
# already holds every course.
_COURSE_OFFSET = {"orn": 0, "ce": 1, "crn": 2}


@dataclass(frozen=True)
class GridSpec:
    """Spacing (x, y, z) and shape (slices, rows, columns) of one series."""

    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]


# Follow-up grids differ from the planning CT (pixel size, slice thickness,
# field of view) and have rows != columns so a transposed reader shows up.
GRID_SPECS: dict[str, dict[str, GridSpec]] = {
    "small": {
        "planning": GridSpec((1.5, 1.5, 2.5), (72, 160, 160)),
        "orn": GridSpec((1.6, 1.6, 2.0), (48, 128, 144)),
        "ce": GridSpec((1.8, 1.8, 3.0), (36, 144, 120)),
        "crn": GridSpec((1.7, 1.7, 2.0), (48, 144, 120)),
    },
    "full": {
        "planning": GridSpec((0.977, 0.977, 2.0), (100, 256, 256)),
        "orn": GridSpec((0.8, 0.8, 1.0), (120, 240, 256)),
        "ce": GridSpec((0.9, 0.9, 3.0), (40, 256, 224)),
        "crn": GridSpec((0.9, 0.9, 1.5), (80, 256, 224)),
    },
}
DOSE_SPACING_MM = {"small": 3.0, "full": 2.5}


@dataclass(frozen=True)
class FollowupParams:
    """One follow-up scan."""

    date: dt.date
    time: str
    months_since_rt: float
    grid: Grid
    transform: TrueTransform


@dataclass(frozen=True)
class CaseParams:
    """All parameters of one synthetic patient."""

    key: str
    task: str
    seed: int
    index: int
    size: str
    patient: PatientInfo
    diagnosis: str
    site: str
    side: int
    prescription_gy: float
    fractions: int
    planning_date: dt.date
    planning_time: str
    plan_date: dt.date
    treatment_end: dt.date
    planning_grid: Grid
    dose_model: DoseModel
    lesion_course: str | None
    lesion: Lesion
    lesion_fit: LesionFit
    followups: tuple[FollowupParams, ...]

    def rng(self, stream: str) -> np.random.Generator:
        """Generator for one named stream of this case."""
        return stream_rng(self.key, stream)


def stream_rng(key: str, stream: str) -> np.random.Generator:
    """A generator seeded by the case key and a stream name (stable across runs)."""
    digest = hashlib.sha256(f"{key}#{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def lesion_course(task: str, index: int, count: int) -> str | None:
    """The course of the lesion volume over ``count`` follow-ups; None for one follow-up.

    ``COURSES[(index + offset) % 3]`` with offsets orn 0, ce 1, crn 2; a
    "peaking" course needs three follow-ups, so with two it is "growing".
    """
    if count == 1:
        return None
    course = COURSES[(index + _COURSE_OFFSET[task]) % len(COURSES)]
    return "growing" if course == "peaking" and count < 3 else course


def _clock(rng: np.random.Generator, hour_range: tuple[int, int]) -> str:
    hour = int(rng.integers(*hour_range))
    return f"{hour:02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}"


def _patient(task: str, seed: int, index: int, rng: np.random.Generator, day: dt.date) -> PatientInfo:
    age = int(rng.integers(38, 75))
    sex = "M" if rng.random() < 0.7 else "F"
    birth = dt.date(day.year - age, 1, 1) - dt.timedelta(days=int(rng.integers(0, 365)))
    tag = task.upper()
    return PatientInfo(f"SYNTH-{tag}-{seed}-{index:03d}", f"SYNTH^{tag}{index:03d}", birth, sex)


def _followup_months(task: str, count: int, rng: np.random.Generator) -> list[float]:
    months = [float(rng.integers(*_FIRST_MONTHS[task]))]
    for _ in range(count - 1):
        months.append(months[-1] + float(rng.integers(3, 7)))
    return months


def _followup_grid(
    spec: GridSpec, transform: TrueTransform, lesion: Lesion, rng: np.random.Generator
) -> Grid:
    # Centre the field of view on the head (axially) at the lesion's level,
    # seen from the follow-up frame, with a random offset along z.
    target = np.array([0.0, 0.0, lesion.centre[2]])
    centre = transform.apply_inverse(target) + np.array([0.0, 0.0, rng.uniform(-8.0, 8.0)])
    return Grid.centred(centre, spec.spacing, spec.shape)


def _dates(rng: np.random.Generator, fractions: int) -> tuple[dt.date, dt.date, dt.date]:
    planning = dt.date(2016, 1, 4) + dt.timedelta(days=int(rng.integers(0, 1500)))
    plan = planning + dt.timedelta(days=int(rng.integers(3, 8)))
    start = plan + dt.timedelta(days=int(rng.integers(3, 8)))
    # Five fractions a week.
    end = start + dt.timedelta(days=(fractions - 1) // 5 * 7 + (fractions - 1) % 5)
    return planning, plan, end


def _followups(
    key: str, size: str, lesion: Lesion, treatment_end: dt.date, count: int
) -> tuple[FollowupParams, ...]:
    months = _followup_months(lesion.task, count, stream_rng(key, "followup-dates"))
    out = []
    for k, m in enumerate(months):
        # Each follow-up is its own scanning session: own frame, own misalignment.
        rng = stream_rng(key, f"followup-{k + 1}")
        transform = sample_transform(rng, _ROTATION_CENTRE, lesion.centre)
        grid = _followup_grid(GRID_SPECS[size][lesion.task], transform, lesion, rng)
        day = treatment_end + dt.timedelta(days=round(m * _DAYS_PER_MONTH))
        out.append(FollowupParams(day, _clock(rng, (8, 17)), m, grid, transform))
    return tuple(out)


def sample_case(task: str, seed: int, index: int, size: str, followups: int) -> CaseParams:
    """Draw every parameter of one patient (arguments are assumed validated)."""
    key = f"{seed}|{task}|{index}|{size}|{followups}"
    rng = stream_rng(key, "case")
    prescription, fractions = _SCHEDULES[int(rng.integers(len(_SCHEDULES)))]
    side = int(rng.choice([-1, 1]))
    peak = prescription * rng.uniform(1.02, min(1.06, 70.0 / prescription))
    planning, plan, end = _dates(rng, fractions)
    dose = sample_dose_model(rng, task, side, peak)
    course = lesion_course(task, index, followups)
    # One follow-up has no course; place_lesion then ignores it.
    lesion, fit = place_lesion(task, side, dose, followups, stream_rng(key, "lesion"), course or "growing")
    spec = GRID_SPECS[size]["planning"]
    return CaseParams(
        key=key,
        task=task,
        seed=seed,
        index=index,
        size=size,
        patient=_patient(task, seed, index, rng, planning),
        diagnosis=_DIAGNOSIS[task][0],
        site=_DIAGNOSIS[task][1],
        side=side,
        prescription_gy=prescription,
        fractions=fractions,
        planning_date=planning,
        planning_time=_clock(rng, (8, 12)),
        plan_date=plan,
        treatment_end=end,
        planning_grid=Grid.centred((0.0, 0.0, -20.0), spec.spacing, spec.shape),
        dose_model=dose,
        lesion_course=course,
        lesion=lesion,
        lesion_fit=fit,
        followups=_followups(key, size, lesion, end, followups),
    )
