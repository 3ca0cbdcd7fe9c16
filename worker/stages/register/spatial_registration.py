"""DICOM Spatial Registration (REG) interchange: read a clinic's transform, write ours.

Both functions speak SimpleITK's convention (see :mod:`worker.stages.register.result`): the
transform maps points of the *fixed* frame (the follow-up scan) to points of the *moving*
frame (the planning CT). A REG object stores, per frame of reference, the matrix that takes
that frame's points into the object's own registered frame; which frame is the registered
one differs between writers, and the reader accepts either.

We write the planning CT's frame as the registered frame (details in
:class:`~worker.stages.register.sro.SpatialRegistration`). Only Spatial Registration Storage
(rigid/affine matrices) is written and read; Deformable Spatial Registration is not.
"""

from __future__ import annotations

import warnings
from datetime import datetime
from pathlib import Path

import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from worker.stages.read.files import read_dataset
from worker.stages.register.sro import (
    SERIES_DESCRIPTION,
    SeriesReference,
    SpatialRegistration,
    check_sop_class,
    linear_part,
    registrations,
    transform_from_matrix,
)

__all__ = [
    "DeformationOmittedWarning",
    "SeriesReference",
    "read_spatial_registration",
    "write_spatial_registration",
]

OMITTED_COMMENT = "rigid/affine part only; deformable part not stored"


class DeformationOmittedWarning(UserWarning):
    """A deformable transform was written as its rigid/affine part only."""


def read_spatial_registration(
    path: Path, fixed_frame_of_reference: str, moving_frame_of_reference: str
) -> sitk.Transform:
    """The fixed → moving mapping stored in a Spatial Registration object.

    Parameters
    ----------
    path: pathlib.Path
        A Spatial Registration Storage (1.2.840.10008.5.1.4.1.1.66.1) file.
    fixed_frame_of_reference: str
        FrameOfReferenceUID of the fixed image (the follow-up scan).
    moving_frame_of_reference: str
        FrameOfReferenceUID of the moving image (the planning CT).

    Returns
    -------
    SimpleITK.Transform
        Maps fixed-frame LPS points (mm) to moving-frame points, whichever frame the object
        registers to: an Euler3DTransform when every matrix involved is of type RIGID, an
        AffineTransform otherwise.

    Raises
    ------
    worker.errors.DicomReadError
        The file is not readable DICOM.
    worker.errors.SpatialRegistrationError
        Another SOP class, or matrices that are malformed, not affine, singular, mirroring, or
        labelled RIGID without being rotations.
    worker.errors.BrokenReferenceError
        The object does not register one or both of the two frames.
    """
    ds = read_dataset(path)
    check_sop_class(ds, path.name)
    mapping = registrations(ds, path.name).between(
        fixed_frame_of_reference, moving_frame_of_reference, path.name
    )
    return transform_from_matrix(mapping.matrix, rigid=mapping.rigid)


def write_spatial_registration(
    transform: sitk.Transform,
    *,
    fixed: SeriesReference,
    moving: SeriesReference,
    source: Dataset,
    path: Path,
    uid_seed: str | None = None,
    created: datetime | None = None,
    series_description: str = SERIES_DESCRIPTION,
) -> Path:
    """Write a Spatial Registration object for a fixed → moving transform.

    Parameters
    ----------
    transform: SimpleITK.Transform
        Maps follow-up (fixed) points to planning (moving) points. Of a composite with
        displacement-field or B-spline members only the linear members are written, with a
        :class:`DeformationOmittedWarning` and a FrameOfReferenceTransformationComment.
    fixed: SeriesReference
        The follow-up series (study, series, frame, SOP class/instance UIDs of its images).
    moving: SeriesReference
        The planning CT series.
    source: pydicom.dataset.Dataset
        The follow-up's first header: Patient and Study attributes are copied from it.
    path: pathlib.Path
        Output file, or an existing folder to write ``REG_<SOPInstanceUID>.dcm`` into.
    uid_seed: str, optional
        Derive the series and instance UIDs from this text (same seed, same UIDs); random
        UIDs when omitted.
    created: datetime.datetime, optional
        Content and creation date/time (now when omitted).
    series_description: str
        SeriesDescription (at most 64 characters).

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    ValueError
        A transform without rigid/affine part, one that mirrors or collapses space, series
        that share a frame of reference, or a source without StudyInstanceUID.
    """
    linear = linear_part(transform)
    comment = None
    if linear.omitted:
        comment = OMITTED_COMMENT
        warnings.warn(
            f"REG holds the rigid/affine part only; {', '.join(linear.omitted)} not written "
            "(Deformable Spatial Registration is not supported)",
            DeformationOmittedWarning,
            stacklevel=2,
        )
    series_uid, sop_uid = _uids(uid_seed)
    ds = SpatialRegistration(
        source,
        fixed,
        moving,
        linear.matrix,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        comment=comment,
        created=created,
        series_description=series_description,
    )
    target = path / f"REG_{sop_uid}.dcm" if path.is_dir() else path
    ds.save_as(target, enforce_file_format=True)
    return target


def _uids(seed: str | None) -> tuple[str, str]:
    if seed is None:
        return generate_uid(), generate_uid()
    return (
        generate_uid(entropy_srcs=[seed, "reg-series"]),
        generate_uid(entropy_srcs=[seed, "reg-instance"]),
    )
