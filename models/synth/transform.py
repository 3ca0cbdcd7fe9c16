"""The known misalignment between a follow-up scan and the planning CT.

Convention (SimpleITK's fixed → moving, with fixed = follow-up and moving =
planning CT): the transform maps a follow-up patient point ``x_f`` (frame B)
to the planning patient point ``x_p`` (frame A) showing the same anatomy::

    u   = x_f + A · exp(-|x_f - m|² / (2 s²))      # smooth Gaussian bump
    x_p = R · (u - c) + c + t                      # rigid (Euler3D)

``R`` follows SimpleITK's Euler3DTransform with ComputeZYX off
(R = Rz · Rx · Ry). In SimpleITK terms this is
``CompositeTransform([Euler3DTransform(c, ax, ay, az, t), DisplacementFieldTransform(d)])``,
whose last-added transform (the displacement) acts first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

DESCRIPTION = "maps follow-up (fixed) patient coordinates to planning (moving) coordinates"


def euler_matrix(angles_rad: np.ndarray) -> np.ndarray:
    """Rotation matrix of SimpleITK's Euler3DTransform (ComputeZYX off): Rz·Rx·Ry."""
    ax, ay, az = (float(a) for a in angles_rad)
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx @ ry


@dataclass(frozen=True)
class TrueTransform:
    """Rigid transform plus one Gaussian displacement bump (see module docstring).

    Parameters
    ----------
    angles_rad : numpy.ndarray, shape (3,)
        Euler angles about x, y, z (radians).
    translation : numpy.ndarray, shape (3,)
        ``t`` in mm.
    center : numpy.ndarray, shape (3,)
        ``c`` in mm (follow-up coordinates).
    bump_center : numpy.ndarray, shape (3,)
        ``m`` in mm (follow-up coordinates).
    bump_sigma_mm : float
        ``s``.
    bump_amplitude : numpy.ndarray, shape (3,)
        ``A`` in mm; its norm is the largest displacement.
    """

    angles_rad: np.ndarray
    translation: np.ndarray
    center: np.ndarray
    bump_center: np.ndarray
    bump_sigma_mm: float
    bump_amplitude: np.ndarray

    @property
    def matrix(self) -> np.ndarray:
        """The 3×3 rotation ``R``."""
        return euler_matrix(self.angles_rad)

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """The bump ``d(x_f)`` at follow-up points, shape (..., 3)."""
        diff = np.asarray(points, float) - self.bump_center
        weight = np.exp(-np.sum(diff**2, axis=-1) / (2.0 * self.bump_sigma_mm**2))
        return weight[..., None] * self.bump_amplitude

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map follow-up points, shape (..., 3), to planning points."""
        u = np.asarray(points, float) + self.displacement(points)
        return (u - self.center) @ self.matrix.T + self.center + self.translation

    def apply_inverse(self, points: np.ndarray, iterations: int = 30) -> np.ndarray:
        """Map planning points, shape (..., 3), to follow-up points.

        The rigid part is inverted exactly; the bump by fixed-point iteration,
        which converges because the bump's gradient is far below 1.
        """
        p = np.asarray(points, float)
        u = (p - self.center - self.translation) @ self.matrix + self.center
        x = u.copy()
        for _ in range(iterations):
            x = u - self.displacement(x)
        return x

    def apply_xyz(
        self, x: np.ndarray, y: np.ndarray, z: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`apply` on separate coordinate arrays (float32 in, float32 out)."""
        pts = np.stack([x, y, z], axis=-1).astype(np.float64)
        out = self.apply(pts).astype(np.float32)
        return out[..., 0], out[..., 1], out[..., 2]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, as stored in case.json."""
        return {
            "description": DESCRIPTION,
            "formula": "x_p = R (x_f + d(x_f) - center) + center + translation",
            "rigid": {
                "type": "Euler3DTransform",
                "angles_rad": [float(a) for a in self.angles_rad],
                "angles_deg": [float(np.degrees(a)) for a in self.angles_rad],
                "matrix": self.matrix.tolist(),
                "translation": [float(v) for v in self.translation],
                "center": [float(v) for v in self.center],
            },
            "deformation": {
                "type": "gaussian_bump",
                "formula": "d(x_f) = amplitude * exp(-|x_f - center|^2 / (2 sigma^2))",
                "applied": "before the rigid part, in follow-up coordinates",
                "center": [float(v) for v in self.bump_center],
                "sigma_mm": float(self.bump_sigma_mm),
                "amplitude_mm": [float(v) for v in self.bump_amplitude],
                "max_displacement_mm": float(np.linalg.norm(self.bump_amplitude)),
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrueTransform:
        """Rebuild from :meth:`to_dict` output (e.g. case.json's ``true_transform``)."""
        rigid, bump = data["rigid"], data["deformation"]
        return cls(
            angles_rad=np.asarray(rigid["angles_rad"], float),
            translation=np.asarray(rigid["translation"], float),
            center=np.asarray(rigid["center"], float),
            bump_center=np.asarray(bump["center"], float),
            bump_sigma_mm=float(bump["sigma_mm"]),
            bump_amplitude=np.asarray(bump["amplitude_mm"], float),
        )


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def sample_transform(rng: np.random.Generator, center: np.ndarray, region: np.ndarray) -> TrueTransform:
    """Draw a misalignment: rotation 1–4° per axis, translation 5–15 mm, bump 1.5–2.5 mm.

    Parameters
    ----------
    rng : numpy.random.Generator
    center : numpy.ndarray, shape (3,)
        Rotation centre ``c`` (mm).
    region : numpy.ndarray, shape (3,)
        Planning point (e.g. the lesion) near which the deformation bump is
        placed, so the deformation matters where it is measured.
    """
    angles = np.radians(rng.uniform(1.0, 4.0, size=3) * rng.choice([-1.0, 1.0], size=3))
    translation = _random_direction(rng) * rng.uniform(5.0, 15.0)
    center = np.asarray(center, float)
    # The bump lives in follow-up coordinates: invert the rigid part for the region.
    region_f = (np.asarray(region, float) - center - translation) @ euler_matrix(angles) + center
    return TrueTransform(
        angles_rad=angles,
        translation=translation,
        center=center,
        bump_center=region_f + rng.uniform(-15.0, 15.0, size=3),
        bump_sigma_mm=float(rng.uniform(25.0, 40.0)),
        bump_amplitude=_random_direction(rng) * rng.uniform(1.5, 2.5),
    )


def apply_true_transform(transform: dict[str, Any] | TrueTransform, points: np.ndarray) -> np.ndarray:
    """Map follow-up points (..., 3) to planning points with case.json's ``true_transform``."""
    if isinstance(transform, dict):
        transform = TrueTransform.from_dict(transform)
    return transform.apply(points)
