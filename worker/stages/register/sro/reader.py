"""Reading the matrices of a Spatial Registration: one source → registered matrix per frame.

PS3.3 C.20.2: each Registration Sequence item names a *source* frame (its FrameOfReferenceUID)
and a Matrix Sequence whose matrices take points of that frame into the *registered* frame,
the instance's own FrameOfReferenceUID. Several matrices compose as A = M3 · M2 · M1 · B
(Equation C.20.2-2): the first item acts first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import DeformableSpatialRegistrationStorage, SpatialRegistrationStorage

from worker.errors import BrokenReferenceError, SpatialRegistrationError
from worker.stages.register.sro.enum import MatrixTypeValues
from worker.stages.register.sro.matrix import (
    ORTHONORMAL_TOLERANCE,
    mapping_problem,
    orthonormality_error,
)

#: Two items naming the same frame must agree this well (homogeneous matrix entries).
DUPLICATE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class FrameRegistration:
    """The mapping of one source frame into the registered frame.

    Attributes
    ----------
    matrix: numpy.ndarray, shape (4, 4)
        Source-frame points → registered-frame points.
    rigid: bool
        Every matrix of the item is of type RIGID (so the mapping is a rotation + translation).
    """

    matrix: np.ndarray
    rigid: bool


@dataclass(frozen=True)
class Registrations:
    """All frames a Spatial Registration maps, keyed by FrameOfReferenceUID."""

    registered_frame: str
    frames: dict[str, FrameRegistration]
    image_only_items: int = 0

    def covers(self, frame_uid: str) -> bool:
        """Whether points of ``frame_uid`` can be brought into the registered frame.

        The registered frame itself needs no item: its points are registered-frame points.
        """
        return frame_uid in self.frames or frame_uid == self.registered_frame

    def of(self, frame_uid: str) -> FrameRegistration:
        """The mapping of a covered frame into the registered frame."""
        if frame_uid in self.frames:
            return self.frames[frame_uid]
        return FrameRegistration(matrix=np.eye(4), rigid=True)

    def between(self, fixed_frame: str, moving_frame: str, where: str) -> FrameRegistration:
        """The mapping of fixed-frame points to moving-frame points, through the registered frame.

        With F and M the fixed and moving frames' matrices into the registered frame, fixed
        points reach the moving frame by M⁻¹ · F (Equation C.20.2-3).

        Raises
        ------
        worker.errors.BrokenReferenceError
            The object does not register one or both frames.
        """
        missing = [
            role
            for role, uid in (("fixed (follow-up)", fixed_frame), ("moving (planning)", moving_frame))
            if not self.covers(uid)
        ]
        if missing:
            raise BrokenReferenceError(self._missing_message(missing, where))
        fixed, moving = self.of(fixed_frame), self.of(moving_frame)
        return FrameRegistration(
            matrix=np.linalg.solve(moving.matrix, fixed.matrix), rigid=fixed.rigid and moving.rigid
        )

    def _missing_message(self, missing: list[str], where: str) -> str:
        linked = len((set(self.frames) | {self.registered_frame}) - {""})
        subject = " and ".join(missing)
        message = (
            f"{where}: the Spatial Registration does not register the {subject} frame of reference "
            "(no RegistrationSequence item has its FrameOfReferenceUID"
        )
        message += ")" if len(missing) == 1 else f"); it links {linked} other frame(s) of reference"
        if self.image_only_items:
            message += (
                f"; {self.image_only_items} item(s) name images only (ReferencedImageSequence) and "
                "cannot be matched to a frame"
            )
        return message


def check_sop_class(ds: Dataset, where: str) -> None:
    """Refuse anything but Spatial Registration Storage, naming what it is instead."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == SpatialRegistrationStorage:
        return
    if sop_class == DeformableSpatialRegistrationStorage:
        raise SpatialRegistrationError(
            f"{where}: Deformable Spatial Registration objects are not supported; only Spatial "
            "Registration Storage (1.2.840.10008.5.1.4.1.1.66.1, rigid/affine matrices) is read"
        )
    name = getattr(ds.SOPClassUID, "name", sop_class) if "SOPClassUID" in ds else "no SOPClassUID"
    raise SpatialRegistrationError(
        f"{where}: SOPClassUID is {name}, not Spatial Registration Storage (1.2.840.10008.5.1.4.1.1.66.1)"
    )


def registrations(ds: Dataset, where: str) -> Registrations:
    """The source → registered matrix of every frame the object registers.

    Raises
    ------
    worker.errors.SpatialRegistrationError
        Missing or malformed sequences, matrices of the wrong length, non-affine or singular
        matrices, RIGID matrices that are not rotations, or contradicting items.
    """
    items = ds.get("RegistrationSequence")
    if not items:
        raise SpatialRegistrationError(f"{where}: RegistrationSequence is missing or empty")
    frames: dict[str, FrameRegistration] = {}
    image_only = 0
    for number, item in enumerate(items, start=1):
        frame_uid = str(item.get("FrameOfReferenceUID", "") or "")
        if not frame_uid:
            image_only += 1
            continue
        context = f"{where}: RegistrationSequence item {number}"
        _add_frame(frames, frame_uid, _item_registration(item, context), context)
    return Registrations(
        registered_frame=str(ds.get("FrameOfReferenceUID", "") or ""),
        frames=frames,
        image_only_items=image_only,
    )


def _add_frame(
    frames: dict[str, FrameRegistration], frame_uid: str, found: FrameRegistration, context: str
) -> None:
    previous = frames.get(frame_uid)
    if previous is not None and not np.allclose(
        previous.matrix, found.matrix, rtol=0.0, atol=DUPLICATE_TOLERANCE
    ):
        raise SpatialRegistrationError(
            f"{context}: a second item for the same FrameOfReferenceUID gives a different matrix"
        )
    frames[frame_uid] = found


def _item_registration(item: Dataset, context: str) -> FrameRegistration:
    registrations = item.get("MatrixRegistrationSequence")
    if not registrations or len(registrations) != 1:
        count = len(registrations) if registrations else 0
        raise SpatialRegistrationError(
            f"{context}: MatrixRegistrationSequence must hold exactly one item, found {count}"
        )
    matrices = registrations[0].get("MatrixSequence")
    if not matrices:
        raise SpatialRegistrationError(f"{context}: MatrixSequence is missing or empty")
    total, rigid = np.eye(4), True
    for index, matrix_item in enumerate(matrices, start=1):
        matrix, matrix_type = _matrix(matrix_item, f"{context}, MatrixSequence item {index}")
        total = matrix @ total  # Equation C.20.2-2: later items act after earlier ones
        rigid = rigid and matrix_type is MatrixTypeValues.RIGID
    return FrameRegistration(matrix=total, rigid=rigid)


def _matrix(item: Dataset, context: str) -> tuple[np.ndarray, MatrixTypeValues]:
    matrix = _matrix_values(item, context)
    matrix_type = _matrix_type(item, context)
    problem = mapping_problem(matrix)
    if problem:
        raise SpatialRegistrationError(
            f"{context}: FrameOfReferenceTransformationMatrix is unusable: {problem}"
        )
    if matrix_type is MatrixTypeValues.RIGID:
        error = orthonormality_error(matrix[:3, :3])
        if error > ORTHONORMAL_TOLERANCE:
            raise SpatialRegistrationError(
                f"{context}: FrameOfReferenceTransformationMatrixType is RIGID but the 3×3 part is not "
                f"a rotation (max |RᵀR − I| = {error:.2g} > {ORTHONORMAL_TOLERANCE:g}): it scales or "
                "shears, so either the type or the values are wrong; refused rather than guessed"
            )
    return matrix, matrix_type


def _matrix_values(item: Dataset, context: str) -> np.ndarray:
    try:
        raw = item.get("FrameOfReferenceTransformationMatrix")
    except ValueError as exc:  # a strict pydicom refuses an invalid DS when it converts it
        raise SpatialRegistrationError(
            f"{context}: FrameOfReferenceTransformationMatrix holds invalid decimal strings"
        ) from exc
    if raw is None:
        raise SpatialRegistrationError(f"{context}: FrameOfReferenceTransformationMatrix is missing")
    values = list(raw) if isinstance(raw, MultiValue | list | tuple) else [raw]
    if len(values) != 16:
        raise SpatialRegistrationError(
            f"{context}: FrameOfReferenceTransformationMatrix must hold 16 values (4×4, row-major), "
            f"found {len(values)}"
        )
    try:
        return np.array([float(v) for v in values], dtype=np.float64).reshape(4, 4)
    except (TypeError, ValueError) as exc:
        raise SpatialRegistrationError(
            f"{context}: FrameOfReferenceTransformationMatrix has non-numeric values"
        ) from exc


def _matrix_type(item: Dataset, context: str) -> MatrixTypeValues:
    value = str(item.get("FrameOfReferenceTransformationMatrixType", "") or "").strip().upper()
    if not value:
        # Type 1, yet some writers omit it; AFFINE is the reading that assumes nothing.
        return MatrixTypeValues.AFFINE
    try:
        return MatrixTypeValues(value)
    except ValueError as exc:
        raise SpatialRegistrationError(
            f"{context}: FrameOfReferenceTransformationMatrixType {value!r} is not RIGID, RIGID_SCALE "
            "or AFFINE"
        ) from exc
