"""Analytic planned dose: a flat-topped high-dose volume plus an elective nodal volume.

Each volume is a super-Gaussian ``exp(-ρ⁴)`` of the ellipsoidal radius ρ, which
gives a flat plateau and a smooth 80 %→20 % fall-off of about 2 cm. The nodal
volume is capped below 0.8·Dmax, so the high-dose region (≥ 0.8·Dmax) is the
primary target only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import Grid
from .phantom import body_contains

HIGH_DOSE_FRACTION = 0.8
_ORDER = 4.0
_NODAL_FRACTION = 0.72


@dataclass(frozen=True)
class DoseModel:
    """Planned physical dose as a function of planning coordinates.

    Parameters
    ----------
    peak_gy : float
        Dose at the target centre (the hot spot, Dmax).
    target_centre, target_semi : numpy.ndarray, shape (3,)
        Primary target ellipsoid (mm).
    nodal_centre, nodal_semi : numpy.ndarray, shape (3,)
        Elective neck volume (mm).
    """

    peak_gy: float
    target_centre: np.ndarray
    target_semi: np.ndarray
    nodal_centre: np.ndarray
    nodal_semi: np.ndarray

    @staticmethod
    def _plateau(pts: tuple[np.ndarray, ...], centre: np.ndarray, semi: np.ndarray) -> np.ndarray:
        rho2 = sum(((p - c) / s) ** 2 for p, c, s in zip(pts, centre, semi, strict=True))
        return np.exp(-(rho2 ** (_ORDER / 2.0)))

    def evaluate(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Dose in Gy at planning points (ignores the body outline)."""
        pts = (x, y, z)
        primary = self._plateau(pts, self.target_centre, self.target_semi)
        nodal = _NODAL_FRACTION * self._plateau(pts, self.nodal_centre, self.nodal_semi)
        return self.peak_gy * np.maximum(primary, nodal)

    def on_grid(self, grid: Grid) -> np.ndarray:
        """Dose in Gy on ``grid``, zero outside the body, shape (slices, rows, columns)."""
        x, y, z = grid.points(np.float64)
        return np.where(body_contains(x, y, z), self.evaluate(x, y, z), 0.0)

    def high_dose_radius(self) -> np.ndarray:
        """Semi-axes (mm) of the analytic ≥ 0.8·peak region."""
        rho = (-np.log(HIGH_DOSE_FRACTION)) ** (1.0 / _ORDER)
        return rho * np.asarray(self.target_semi)


def dose_grid(model: DoseModel, ct: Grid, spacing_mm: float) -> Grid:
    """A coarse dose grid over the target and its fall-off, inside the CT extent."""
    half = 1.5 * np.asarray(model.target_semi)
    ct_lo, ct_hi = ct.bounds()
    lo = np.maximum(model.target_centre - half, ct_lo)
    hi = np.minimum(model.target_centre + half, ct_hi)
    counts = np.floor((hi - lo) / spacing_mm).astype(int) + 1
    shape = (int(counts[2]), int(counts[1]), int(counts[0]))
    return Grid.centred((lo + hi) / 2.0, (spacing_mm,) * 3, shape)


def sample_dose_model(rng: np.random.Generator, task: str, side: int, peak_gy: float) -> DoseModel:
    """The dose shape for a task: oropharynx beside the mandible (ORN) or a
    nasopharyngeal target covering the temporal lobe on ``side`` (CE, CRN)."""
    jitter = rng.uniform(-3.0, 3.0, size=3)
    if task == "orn":
        centre = np.array([26.0 * side, -28.0, -70.0]) + jitter
        semi = np.array([52.0, 50.0, 44.0]) * rng.uniform(0.97, 1.05)
        nodal = (np.array([0.0, 10.0, -100.0]), np.array([75.0, 50.0, 40.0]))
    else:
        centre = np.array([30.0 * side, -6.0, -14.0]) + jitter
        semi = np.array([48.0, 48.0, 40.0]) * rng.uniform(0.97, 1.05)
        nodal = (np.array([0.0, 15.0, -80.0]), np.array([70.0, 48.0, 45.0]))
    return DoseModel(float(peak_gy), centre, semi, *nodal)
