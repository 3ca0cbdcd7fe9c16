"""The Spatial Registration IOD: sop (the instance we write), content (its items), reader, matrices."""

from worker.stages.register.sro.content import InstanceReference, SeriesReference
from worker.stages.register.sro.enum import Code, MatrixTypeValues, RegistrationTypeCodes
from worker.stages.register.sro.matrix import LinearPart, linear_part, transform_from_matrix
from worker.stages.register.sro.reader import (
    FrameRegistration,
    Registrations,
    check_sop_class,
    registrations,
)
from worker.stages.register.sro.sop import SERIES_DESCRIPTION, SpatialRegistration

__all__ = [
    "SERIES_DESCRIPTION",
    "Code",
    "FrameRegistration",
    "InstanceReference",
    "LinearPart",
    "MatrixTypeValues",
    "RegistrationTypeCodes",
    "Registrations",
    "SeriesReference",
    "SpatialRegistration",
    "check_sop_class",
    "linear_part",
    "registrations",
    "transform_from_matrix",
]
