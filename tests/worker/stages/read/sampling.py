"""Sampling helpers shared by the read-stage tests: points inside an image, values at points."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def interior_points(
    image: sitk.Image,
    count: int = 200,
    margin: tuple[float, float, float] = (1.0, 1.0, 0.0),
    seed: int = 0,
) -> np.ndarray:
    """Random LPS points inside ``image``, at least ``margin`` voxels (column, row, slice) from its edges.

    Returns
    -------
    numpy.ndarray, shape (count, 3)
    """
    rng = np.random.default_rng(seed)
    size = np.asarray(image.GetSize(), float)
    low, high = np.asarray(margin, float), size - 1 - np.asarray(margin, float)
    index = low + rng.random((count, 3)) * (high - low)
    return np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in index.tolist()])


def sample(image: sitk.Image, points: np.ndarray) -> np.ndarray:
    """Linearly interpolated values of ``image`` at LPS points, shape (N,)."""
    return np.array([image.EvaluateAtPhysicalPoint(tuple(p), sitk.sitkLinear) for p in np.asarray(points)])


def direction(image: sitk.Image) -> np.ndarray:
    """The direction matrix; its columns are the LPS directions of the column, row and slice axes."""
    return np.asarray(image.GetDirection()).reshape(3, 3)


def voxel_centres(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """LPS centres of the voxels set in ``mask`` (an array shaped like the image's), shape (N, 3)."""
    index = np.argwhere(mask)[:, ::-1].astype(float)  # (slice, row, col) -> (col, row, slice)
    spacing = np.asarray(image.GetSpacing())
    return np.asarray(image.GetOrigin()) + (index * spacing) @ direction(image).T
