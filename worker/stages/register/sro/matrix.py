"""4×4 homogeneous matrices ↔ SimpleITK transforms, and the checks a REG matrix must pass.

All matrices here act on column vectors of LPS patient points in mm: ``[x' 1]ᵀ = M · [x 1]ᵀ``,
the form of the Frame of Reference Transformation Matrix (3006,00C6) in row-major order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from worker.stages.register.sro.enum import MatrixTypeValues

#: A RIGID matrix whose 3×3 part deviates more than this from orthonormal (max |RᵀR − I|) is
#: refused. Writers that print 6 decimals (plastimatch uses "%f") stay near 1e-6; 1e-4 still
#: moves a point 200 mm from the origin by only 0.02 mm, while any real scaling or shear
#: mislabelled as RIGID is far larger.
ORTHONORMAL_TOLERANCE = 1e-4
#: What counts as "exactly" orthonormal when the writer labels a matrix it computed itself.
EXACT_TOLERANCE = 1e-9
#: Smallest |determinant| of a 3×3 part that is still a usable (invertible) mapping.
MIN_DETERMINANT = 1e-6
UNIT_POINTS = np.vstack([np.zeros(3), np.eye(3)])


@dataclass(frozen=True)
class LinearPart:
    """The rigid/affine part of a transform and what had to be left out to get it.

    Attributes
    ----------
    matrix: numpy.ndarray, shape (4, 4)
        Homogeneous matrix of the linear transforms, composed in the order they act.
    omitted: tuple[str, ...]
        Class names of the non-linear transforms (displacement fields, B-splines) left out.
    """

    matrix: np.ndarray
    omitted: tuple[str, ...]


def linear_part(transform: sitk.Transform) -> LinearPart:
    """The homogeneous matrix of ``transform``'s linear components.

    A CompositeTransform applies its last-added transform first (SimpleITK's stack order); its
    linear members are composed in that order and its non-linear members are left out.

    Raises
    ------
    ValueError
        The transform is not 3D, or has no linear component at all.
    """
    if transform.GetDimension() != 3:
        raise ValueError(f"transform: a 3D transform is required, got {transform.GetDimension()}D")
    linear = np.eye(4)
    omitted: list[str] = []
    used = 0
    for component in _in_application_order(transform):
        if component.IsLinear():
            linear = _probe(component) @ linear
            used += 1
        else:
            omitted.append(component.GetName())
    if not used:
        raise ValueError(f"transform: no rigid or affine component to write (only {', '.join(omitted)})")
    return LinearPart(matrix=linear, omitted=tuple(omitted))


def _in_application_order(transform: sitk.Transform) -> list[sitk.Transform]:
    if transform.GetName() != "CompositeTransform":
        return [transform]
    composite = sitk.CompositeTransform(transform)
    members = [composite.GetNthTransform(i) for i in range(composite.GetNumberOfTransforms())]
    return [leaf for member in reversed(members) for leaf in _in_application_order(member)]


def _probe(transform: sitk.Transform) -> np.ndarray:
    # Images of the origin and the unit vectors give a linear transform's matrix exactly (to
    # round-off), whatever its class or parametrisation (centre, versor, Euler angles …).
    mapped = np.array([transform.TransformPoint(p.tolist()) for p in UNIT_POINTS])
    matrix = np.eye(4)
    matrix[:3, 3] = mapped[0]
    matrix[:3, :3] = (mapped[1:] - mapped[0]).T
    return matrix


def matrix_type(matrix: np.ndarray) -> MatrixTypeValues:
    """RIGID for a proper rotation plus translation (to round-off), AFFINE otherwise."""
    rotation = matrix[:3, :3]
    if orthonormality_error(rotation) <= EXACT_TOLERANCE and np.linalg.det(rotation) > 0:
        return MatrixTypeValues.RIGID
    return MatrixTypeValues.AFFINE


def orthonormality_error(rotation: np.ndarray) -> float:
    """max |RᵀR − I| of a 3×3 matrix."""
    return float(np.max(np.abs(rotation.T @ rotation - np.eye(3))))


def nearest_rotation(rotation: np.ndarray) -> np.ndarray:
    """The proper rotation closest to ``rotation`` (Frobenius norm), through its SVD."""
    u, _, vt = np.linalg.svd(rotation)
    if np.linalg.det(u @ vt) < 0:
        u[:, -1] *= -1
    return np.asarray(u @ vt)


def transform_from_matrix(matrix: np.ndarray, *, rigid: bool) -> sitk.Transform:
    """A SimpleITK transform doing ``matrix``: Euler3DTransform when rigid, AffineTransform otherwise.

    A rigid matrix is first projected onto the nearest rotation, which removes the round-off
    of decimal strings without moving any point by more than that round-off.
    """
    translation = [float(v) for v in matrix[:3, 3]]
    if rigid:
        euler = sitk.Euler3DTransform()
        euler.SetMatrix(nearest_rotation(matrix[:3, :3]).ravel().tolist())
        euler.SetTranslation(translation)
        return euler
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(matrix[:3, :3].ravel().tolist())
    affine.SetTranslation(translation)
    return affine


def mapping_problem(matrix: np.ndarray) -> str | None:
    """Why a 4×4 matrix cannot map one patient frame onto another, or None when it can."""
    if not np.all(np.isfinite(matrix)):
        return "it has non-finite values"
    if not np.allclose(matrix[3], [0.0, 0.0, 0.0, 1.0], rtol=0.0, atol=1e-9):
        return f"its last row is {matrix[3].tolist()}, not (0, 0, 0, 1): it is not affine"
    determinant = float(np.linalg.det(matrix[:3, :3]))
    if abs(determinant) < MIN_DETERMINANT:
        return f"its 3×3 part is singular (determinant {determinant:.3g})"
    if determinant < 0:
        return "it mirrors space (negative determinant), which no patient registration does"
    return None
