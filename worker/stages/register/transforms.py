"""Transform files, composition, and the displacement field used for dose resampling.

Every transform here follows the register stage's convention (``result.py``): it maps points of
the fixed image (follow-up) to points of the moving image (planning CT).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from worker.errors import InputError

#: Suffixes SimpleITK writes as ITK transform files (text .tfm/.txt, HDF5 .h5/.hdf5).
TRANSFORM_SUFFIXES = (".tfm", ".txt", ".h5", ".hdf5")

_MATRIX_TRANSFORMS = (
    sitk.Euler3DTransform,
    sitk.VersorRigid3DTransform,
    sitk.Similarity3DTransform,
    sitk.ScaleVersor3DTransform,
    sitk.AffineTransform,
)


def write_transform(transform: sitk.Transform, path: Path) -> Path:
    """Write ``transform`` as an ITK transform file (.tfm text or .h5 binary).

    A rigid + B-spline composite is a few thousand numbers: .tfm stays readable, .h5 is exact
    to the last bit and smaller.

    Raises
    ------
    ValueError
        If the suffix is not one of :data:`TRANSFORM_SUFFIXES`.
    """
    path = Path(path)
    if path.suffix.lower() not in TRANSFORM_SUFFIXES:
        raise ValueError(f"transform file must end in one of {', '.join(TRANSFORM_SUFFIXES)}: {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteTransform(transform, str(path))
    return path


def read_transform(path: Path) -> sitk.Transform:
    """Read an ITK transform file; a composite comes back as a CompositeTransform.

    Raises
    ------
    worker.errors.InputError
        If the file is missing or is not an ITK transform file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such transform file")
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path.name}: not an ITK transform file") from exc
    return _downcast(transform)


def _downcast(transform: sitk.Transform) -> sitk.Transform:
    # ReadTransform hands back the generic Transform class; the concrete class gives access to
    # the matrix, the B-spline mesh or the composite's parts.
    downcast = getattr(transform, "Downcast", None)
    return downcast() if downcast is not None else transform


def compose(*transforms: sitk.Transform) -> sitk.CompositeTransform:
    """Compose like functions: ``compose(f, g)(x) == f(g(x))`` (SimpleITK's list order)."""
    if not transforms:
        raise ValueError("compose needs at least one transform")
    composite = sitk.CompositeTransform(3)
    for transform in transforms:
        composite.AddTransform(transform)
    return composite


def parts(transform: sitk.Transform) -> list[sitk.Transform]:
    """The transforms inside ``transform`` (nested composites flattened), outermost first."""
    transform = _downcast(transform)
    if not isinstance(transform, sitk.CompositeTransform):
        return [transform]
    inner = [transform.GetNthTransform(i) for i in range(transform.GetNumberOfTransforms())]
    return [part for item in inner for part in parts(item)]


def is_linear(transform: sitk.Transform) -> bool:
    """True when every part is a matrix + offset transform (no B-spline, no field)."""
    linear = (*_MATRIX_TRANSFORMS, sitk.TranslationTransform)
    return all(isinstance(part, linear) or _is_identity(part) for part in parts(transform))


def _is_identity(transform: sitk.Transform) -> bool:
    return transform.GetNumberOfParameters() == 0


def linear_part(transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and translation of the linear parts combined: ``x ↦ A x + b``.

    Non-linear parts (B-spline, displacement field) are left out, which is what the rotation
    and translation QA figures describe.
    """
    matrix, offset = np.eye(3), np.zeros(3)
    # Outermost first: x ↦ A_1 (A_2 x + b_2) + b_1, so fold from the innermost outwards.
    for part in reversed(parts(transform)):
        part_matrix, part_offset = _affine_of(part)
        matrix, offset = part_matrix @ matrix, part_matrix @ offset + part_offset
    return matrix, offset


def _affine_of(transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(transform, sitk.TranslationTransform):
        return np.eye(3), np.array(transform.GetOffset())
    if isinstance(transform, _MATRIX_TRANSFORMS):
        matrix = np.array(transform.GetMatrix()).reshape(3, 3)
        centre = np.array(transform.GetCenter())
        translation = np.array(transform.GetTranslation())
        return matrix, translation + centre - matrix @ centre
    return np.eye(3), np.zeros(3)


def rotation_degrees(matrix: np.ndarray) -> float:
    """Angle of the rotation closest to ``matrix`` (degrees, 0–180)."""
    u, _, vt = np.linalg.svd(np.asarray(matrix, float))
    rotation = u @ vt
    cosine = (np.trace(rotation) - 1.0) / 2.0
    return math.degrees(math.acos(float(np.clip(cosine, -1.0, 1.0))))


def to_displacement_field(
    transform: sitk.Transform, reference_image: sitk.Image, spacing_mm: float = 2.0
) -> sitk.DisplacementFieldTransform:
    """Sample ``transform`` into a displacement field over ``reference_image``'s extent.

    Resampling a dose through a B-spline evaluates the spline at every output voxel (26 s for
    a 512×512×200 grid here); through a 2 mm field it is a trilinear lookup (4 s, same dose to
    0.001 Gy, reference/stack_notes.md §3c). The field covers the reference image plus half a
    field voxel on each side, because a DisplacementFieldTransform is the identity outside
    its grid and a voxel centre at the very edge must still be inside.

    Parameters
    ----------
    transform: SimpleITK.Transform
        Any fixed → moving transform.
    reference_image: SimpleITK.Image
        The grid the field must cover (the follow-up scan).
    spacing_mm: float
        Field spacing, isotropic.
    """
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    direction = np.array(reference_image.GetDirection()).reshape(3, 3)
    extent = (np.array(reference_image.GetSize()) - 1) * np.array(reference_image.GetSpacing())
    size = [math.ceil(e / spacing_mm) + 2 for e in extent]
    origin = np.array(reference_image.GetOrigin()) - direction @ np.full(3, spacing_mm / 2.0)
    field = sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        size,
        [float(v) for v in origin],
        [float(spacing_mm)] * 3,
        reference_image.GetDirection(),
    )
    return sitk.DisplacementFieldTransform(field)
