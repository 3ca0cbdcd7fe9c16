"""Lesion geometry in planning coordinates and its placement in the high-dose region.

A lesion is an irregular blob: an ellipsoid whose radius is modulated by a few
low-frequency waves over direction. ``shape_coordinate`` returns a value ``q0``
with the blob at scale ``s`` being ``{q0 < s}``, so growth over follow-ups is a
change of scale only. The ground truth is the blob clipped to the host tissue:
the mandible for ORN, the parenchyma of one temporal lobe for CE and CRN.
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
_FIRST_VOLUME_CC = (0.4, 2.0)
_LARGEST_VOLUME_CC = 4.5
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


def _target_volumes(rng: np.random.Generator, count: int) -> np.ndarray:
    first = np.exp(rng.uniform(*np.log(_FIRST_VOLUME_CC)))
    growth = rng.uniform(1.15, 1.5)
    if count > 1 and first * growth ** (count - 1) > _LARGEST_VOLUME_CC:
        growth = (_LARGEST_VOLUME_CC / first) ** (1.0 / (count - 1))
    return first * growth ** np.arange(count)


def _local_points(centre: np.ndarray, half: float, step: float) -> tuple[np.ndarray, ...]:
    axis = np.arange(-half, half + 1e-9, step)
    zz, yy, xx = np.meshgrid(centre[2] + axis, centre[1] + axis, centre[0] + axis, indexing="ij")
    return xx.astype(np.float32), yy.astype(np.float32), zz.astype(np.float32)


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[[0, -1]].any() or mask[:, [0, -1]].any() or mask[:, :, [0, -1]].any())


def _fit(lesion: Lesion, volumes_cc: np.ndarray, dose: DoseModel) -> tuple[Lesion, LesionFit] | None:
    """Choose scales giving the target volumes; None if the lesion leaves the high dose."""
    r_eq = (3.0 * volumes_cc[-1] * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    half = (3.0 if lesion.task == "orn" else 2.0) * r_eq + 4.0
    step = float(np.clip(r_eq / 10.0, *_FINE_MM))
    x, y, z = _local_points(lesion.centre, half, step)
    q0 = lesion.shape_coordinate(x, y, z)
    host = lesion.host_mask(x, y, z, tissue_labels(x, y, z))
    ordered = np.sort(q0[host])
    counts = np.round(volumes_cc * 1000.0 / step**3).astype(int)
    if len(ordered) < counts[-1] or np.any(counts < 1):
        return None
    scales = ordered[counts - 1].astype(float) + 1e-6
    largest = host & (q0 < scales[-1])
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
    task: str, side: int, dose: DoseModel, count: int, rng: np.random.Generator
) -> tuple[Lesion, LesionFit]:
    """Draw a lesion in the host tissue, inside the ≥ 0.8·Dmax region, for ``count`` follow-ups.

    Volumes start at 0.4–2 cc and grow by 15–50 % per follow-up, capped at
    4.5 cc; after repeated failures to fit the high-dose region the volumes
    shrink.
    """
    volumes = _target_volumes(rng, count)
    for attempt in range(200):
        if attempt and attempt % 40 == 0:
            volumes = np.maximum(volumes * 0.7, VOLUME_RANGE_CC[0] * 1.5)
        centre = _candidate_centre(task, side, rng)
        if dose.evaluate(*centre) < _CENTRE_DOSE_FRACTION * dose.peak_gy:
            continue
        result = _fit(_sample_shape(task, side, centre, rng), volumes, dose)
        if result is not None:
            return result
    raise RuntimeError(f"could not place a {task} lesion in the high-dose region")
