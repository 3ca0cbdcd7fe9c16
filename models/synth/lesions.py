"""Lesion geometry in planning coordinates and its placement in the high-dose region.

A lesion is an irregular blob: an ellipsoid whose radius is modulated by a few
low-frequency waves over direction. ``shape_coordinate`` returns a value ``q0``
with the blob at scale ``s`` being ``{q0 < s}``, so a change of volume over
follow-ups is a change of scale only. The ground truth is the blob clipped to
the host tissue: the mandible for ORN, the parenchyma of one temporal lobe for
CE and CRN.

With two or more follow-ups the volume follows a course fixed by construction,
one of ``COURSES``: "growing", "shrinking", or "peaking" (rising to a peak at
follow-up ``count // 2``, 0-based, then falling; three follow-ups or more).
Successive volumes differ by a factor of at least 1.6, so a segmentation with
a Dice of about 0.8 still orders them, and stay within 0.4–3 cc, about the
range the demo network was trained on (0.4–2 cc); longer courses start lower
or, past 5 steps, change by less (see ``_course_volumes``). A single
follow-up keeps its original draw (0.4–2 cc).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .dose import HIGH_DOSE_FRACTION, DoseModel
from .phantom import MANDIBLE, MANDIBLE_BODY, TEMPORAL_LOBES, tissue_labels
from .shapes import vec3
from .tissues import is_parenchyma

VOLUME_RANGE_CC = (0.2, 5.0)
COURSES = ("growing", "shrinking", "peaking")
# One follow-up: the original draw, kept as is because the demo network's
# training and test data are generated from it (same seed, same bytes).
_FIRST_VOLUME_CC = (0.4, 2.0)
_SINGLE_GROWTH = (1.15, 1.5)
# Courses: the smallest volume and the factor between successive follow-ups.
# A factor of 1.6 keeps the order of the volumes readable through a
# segmentation with a Dice of about 0.8 (volume errors of some 20 %).
_SMALLEST_VOLUME_CC = (0.4, 0.6)
_FACTOR = (1.6, 1.8)
_LARGEST_VOLUME_CC = 3.0
# How far the smallest volume may drop to keep the factor for long courses.
_SMALLEST_FLOOR_CC = 0.25
# The fallback for lesions that do not fit the high-dose region shrinks every
# volume by this factor, down to a smallest volume of this floor.
_SHRINK = 0.7
_SHRINK_FLOOR_CC = VOLUME_RANGE_CC[0] * 1.5
# Margin over the 0.8·Dmax threshold: the dose grid is sampled coarsely and
# interpolated, so the analytic dose must clear the threshold with room to spare.
_DOSE_MARGIN = 1.03
# Candidate centres below this fraction of the peak rarely fit a whole lesion.
_CENTRE_DOSE_FRACTION = 0.93
# Fine sampling for volumes and centroids: about ten samples per equivalent
# radius of the largest lesion, within these bounds (mm).
_FINE_MM = (0.5, 1.0)


@dataclass(frozen=True)
class Lesion:
    """An irregular blob with one scale per follow-up.

    Parameters
    ----------
    task : str
        "orn", "ce" or "crn"; selects the host tissue.
    side : int
        -1 (patient right) or +1 (patient left).
    centre : numpy.ndarray, shape (3,)
        Planning coordinates (mm).
    semi : numpy.ndarray, shape (3,)
        Ellipsoid semi-axes at scale 1 (mm).
    rotation : numpy.ndarray, shape (3, 3)
        Columns are the blob axes in patient coordinates.
    wave_dirs : numpy.ndarray, shape (n, 3)
        Unit vectors of the boundary modulation.
    wave_phase : numpy.ndarray, shape (n,)
    roughness : float
        Relative amplitude of the boundary modulation.
    texture_k : numpy.ndarray, shape (m, 3)
        Wave vectors (rad/mm) of the internal texture.
    texture_phase : numpy.ndarray, shape (m,)
    scales : tuple of float
        Blob scale at each follow-up.
    """

    task: str
    side: int
    centre: np.ndarray
    semi: np.ndarray
    rotation: np.ndarray
    wave_dirs: np.ndarray
    wave_phase: np.ndarray
    roughness: float
    texture_k: np.ndarray
    texture_phase: np.ndarray
    scales: tuple[float, ...] = ()

    def shape_coordinate(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """``q0`` at planning points; the blob at scale s is ``q0 < s``."""
        d = np.stack([x - self.centre[0], y - self.centre[1], z - self.centre[2]], axis=-1)
        local = d @ self.rotation  # coordinates along the blob axes
        rho = np.sqrt(np.sum((local / self.semi) ** 2, axis=-1))
        unit = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-6)
        waves = np.sin(3.0 * (unit @ self.wave_dirs.T) + self.wave_phase)
        return (rho / (1.0 + self.roughness * waves.mean(axis=-1))).astype(np.float32)

    def host_mask(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Where the lesion may exist: the mandible, or one temporal lobe's parenchyma."""
        if self.task == "orn":
            return MANDIBLE.contains(x, y, z)
        return TEMPORAL_LOBES[self.side].contains(x, y, z) & is_parenchyma(labels)

    def texture(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """A smooth pattern in [-1, 1] fixed to the anatomy (planning coordinates)."""
        pts = np.stack([x, y, z], axis=-1)
        waves = np.sin(pts @ self.texture_k.T + self.texture_phase)
        return np.clip(waves.sum(axis=-1) / np.sqrt(len(self.texture_phase)), -1.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters (enough to rebuild the blob)."""
        return {
            "host": "mandible" if self.task == "orn" else f"temporal lobe (side {self.side:+d})",
            "centre_mm": self.centre.tolist(),
            # Semi-axes at scale 1; at follow-up k they are scales[k] times these (mm).
            "semi_axes_at_scale_1": self.semi.tolist(),
            "rotation": self.rotation.tolist(),
            "roughness": self.roughness,
            "scales": list(self.scales),
        }


@dataclass(frozen=True)
class LesionFit:
    """Volumes and centroids of the fitted lesion in planning space, per follow-up."""

    volumes_cc: tuple[float, ...]
    centroids_mm: tuple[tuple[float, float, float], ...]


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _sample_shape(task: str, side: int, centre: np.ndarray, rng: np.random.Generator) -> Lesion:
    n_waves, n_tex = 4, 5
    dirs = rng.normal(size=(n_waves, 3))
    tex_dirs = rng.normal(size=(n_tex, 3))
    tex_dirs /= np.linalg.norm(tex_dirs, axis=1, keepdims=True)
    return Lesion(
        task=task,
        side=side,
        centre=centre,
        semi=np.array([1.0, rng.uniform(0.7, 1.0), rng.uniform(0.6, 0.9)]),
        rotation=_random_rotation(rng),
        wave_dirs=dirs / np.linalg.norm(dirs, axis=1, keepdims=True),
        wave_phase=rng.uniform(0.0, 2 * np.pi, n_waves),
        roughness=float(rng.uniform(0.15, 0.3)),
        texture_k=tex_dirs * (2 * np.pi / rng.uniform(5.0, 9.0, size=(n_tex, 1))),
        texture_phase=rng.uniform(0.0, 2 * np.pi, n_tex),
    )


def _candidate_centre(task: str, side: int, rng: np.random.Generator) -> np.ndarray:
    if task == "orn":
        # Posterior mandibular body (molar region), where ORN usually starts,
        # off the arc's centre line so the lesion breaks one cortex.
        theta = side * rng.uniform(0.55, 1.25)
        point = MANDIBLE_BODY.point_at(theta, rng.uniform(-80.0, -68.0))
        outward = point[:2] - np.asarray(MANDIBLE_BODY.centre_xy)
        point[:2] += rng.uniform(-3.0, 3.0) * outward / np.linalg.norm(outward)
        return point
    lobe = TEMPORAL_LOBES[side]
    return np.asarray(lobe.centre) + rng.uniform(-1.0, 1.0, 3) * np.array([6.0, 12.0, 7.0])


@dataclass(frozen=True)
class _VolumeCourse:
    """Target volumes ``smallest * factor ** steps`` (cc), one per follow-up."""

    smallest: float
    factor: float
    steps: np.ndarray

    def volumes(self) -> np.ndarray:
        return self.smallest * self.factor**self.steps

    def shrunk(self) -> _VolumeCourse:
        """Every volume smaller by the same ratio, so the course keeps its order."""
        # The outer min never lets the floor raise a smallest volume already
        # under it (long courses start at 0.25 cc).
        smallest = min(self.smallest, max(self.smallest * _SHRINK, _SHRINK_FLOOR_CC))
        return replace(self, smallest=smallest)


def _course_steps(course: str, count: int) -> np.ndarray:
    """Exponent of the factor at each follow-up: 0 at the smallest volume."""
    k = np.arange(count)
    if course == "growing":
        return k
    if course == "shrinking":
        return count - 1 - k
    peak = count // 2
    return peak - np.abs(k - peak)


def _single_volume(rng: np.random.Generator) -> _VolumeCourse:
    first = np.exp(rng.uniform(*np.log(_FIRST_VOLUME_CC)))
    # Drawn so that the generator's later draws stay where they were; with one
    # volume it scales nothing.
    growth = rng.uniform(*_SINGLE_GROWTH)
    return _VolumeCourse(first, growth, np.arange(1))


def _course_volumes(rng: np.random.Generator, course: str, count: int) -> _VolumeCourse:
    """Smallest volume in 0.4–0.6 cc, factor in 1.6–1.8, the largest at most 3 cc.

    When the largest would pass 3 cc the factor is lowered first, not under
    1.6; then the smallest volume, not under 0.25 cc (under 0.4 cc only from 5
    steps: growing or shrinking over 6 follow-ups, peaking over 10). With both
    at their floor only ``log(3 / 0.25) / log(1.6)`` ≈ 5.3 steps fit: growing
    or shrinking over 7 follow-ups or more (peaking over 12 or more) gets the
    largest factor that fits, ``12 ** (1 / steps)``, under 1.6 (1.32 over 10).
    """
    steps = _course_steps(course, count)
    n = int(steps.max())
    smallest = rng.uniform(*_SMALLEST_VOLUME_CC)
    factor = rng.uniform(*_FACTOR)
    factor = min(factor, max(_FACTOR[0], (_LARGEST_VOLUME_CC / smallest) ** (1.0 / n)))
    smallest = min(smallest, max(_SMALLEST_FLOOR_CC, _LARGEST_VOLUME_CC / factor**n))
    factor = min(factor, (_LARGEST_VOLUME_CC / smallest) ** (1.0 / n))
    return _VolumeCourse(smallest, factor, steps)


def _check_course(course: str, count: int) -> None:
    if course not in COURSES:
        raise ValueError(f"course must be one of {', '.join(COURSES)}, got {course!r}")
    if course == "peaking" and count < 3:
        raise ValueError(f"a peaking course needs at least 3 follow-ups, got {count}")


def _local_points(centre: np.ndarray, half: float, step: float) -> tuple[np.ndarray, ...]:
    axis = np.arange(-half, half + 1e-9, step)
    zz, yy, xx = np.meshgrid(centre[2] + axis, centre[1] + axis, centre[0] + axis, indexing="ij")
    return xx.astype(np.float32), yy.astype(np.float32), zz.astype(np.float32)


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[[0, -1]].any() or mask[:, [0, -1]].any() or mask[:, :, [0, -1]].any())


def _fit(lesion: Lesion, volumes_cc: np.ndarray, dose: DoseModel) -> tuple[Lesion, LesionFit] | None:
    """Choose scales giving the target volumes; None if the lesion leaves the high dose."""
    # The largest volume, wherever it falls in the course, sets the sampling
    # box and is the one checked against the high-dose region.
    r_eq = (3.0 * volumes_cc.max() * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    half = (3.0 if lesion.task == "orn" else 2.0) * r_eq + 4.0
    step = float(np.clip(r_eq / 10.0, *_FINE_MM))
    x, y, z = _local_points(lesion.centre, half, step)
    q0 = lesion.shape_coordinate(x, y, z)
    host = lesion.host_mask(x, y, z, tissue_labels(x, y, z))
    ordered = np.sort(q0[host])
    counts = np.round(volumes_cc * 1000.0 / step**3).astype(int)
    if len(ordered) < counts.max() or np.any(counts < 1):
        return None
    scales = ordered[counts - 1].astype(float) + 1e-6
    largest = host & (q0 < scales.max())
    threshold = HIGH_DOSE_FRACTION * dose.peak_gy * _DOSE_MARGIN
    if _touches_border(largest) or dose.evaluate(x[largest], y[largest], z[largest]).min() < threshold:
        return None
    centroids = []
    for s in scales:
        inside = host & (q0 < s)
        centroids.append(vec3(float(v[inside].mean()) for v in (x, y, z)))
    fitted = replace(lesion, scales=tuple(float(s) for s in scales))
    volumes = tuple(float(c * step**3 / 1000.0) for c in counts)
    return fitted, LesionFit(volumes, tuple(centroids))


def place_lesion(
    task: str,
    side: int,
    dose: DoseModel,
    count: int,
    rng: np.random.Generator,
    course: str = "growing",
) -> tuple[Lesion, LesionFit]:
    """Draw a lesion in the host tissue, inside the ≥ 0.8·Dmax region, for ``count`` follow-ups.

    With one follow-up the volume is 0.4–2 cc (``course`` has no effect).
    With more, the volumes follow ``course``, one of ``COURSES``: "growing",
    "shrinking" or "peaking" (up to follow-up ``count // 2``, 0-based, then
    down; at least 3 follow-ups). Successive volumes differ by a factor of
    1.6–1.8 and lie within 0.4–3 cc while the course spans at most 4 steps
    from its smallest volume (``_course_volumes`` says what longer courses
    give up). After repeated failures to fit the high-dose region every volume
    shrinks by the same ratio, which keeps the course.

    Raises
    ------
    ValueError
        For an unknown course, or "peaking" with fewer than 3 follow-ups.
    RuntimeError
        If no lesion fits the high-dose region.
    """
    _check_course(course, count)
    target = _single_volume(rng) if count == 1 else _course_volumes(rng, course, count)
    for attempt in range(200):
        if attempt and attempt % 40 == 0:
            target = target.shrunk()
        centre = _candidate_centre(task, side, rng)
        if dose.evaluate(*centre) < _CENTRE_DOSE_FRACTION * dose.peak_gy:
            continue
        result = _fit(_sample_shape(task, side, centre, rng), target.volumes(), dose)
        if result is not None:
            return result
    raise RuntimeError(f"could not place a {task} lesion in the high-dose region")
