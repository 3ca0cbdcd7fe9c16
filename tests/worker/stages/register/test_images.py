"""Working grids and body masks."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from worker.stages.register.images import body_mask, downsample, image_centre, mask_centroid


def _head(value_inside: float, value_outside: float, spacing: tuple[float, float, float]) -> sitk.Image:
    size = [round(200 / s) for s in spacing]
    z, y, x = np.meshgrid(
        *(np.arange(n) * s for n, s in zip(size[::-1], spacing[::-1], strict=True)), indexing="ij"
    )
    inside = ((x - 100) / 70) ** 2 + ((y - 100) / 80) ** 2 + ((z - 100) / 90) ** 2 < 1
    array = np.where(inside, value_inside, value_outside).astype(np.float32)
    cavity = (x - 100) ** 2 + (y - 100) ** 2 + (z - 100) ** 2 < 20**2  # an enclosed sinus
    array[cavity] = value_outside
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin([-100.0, -100.0, -100.0])
    return image


def test_downsample_keeps_the_physical_extent_and_never_refines() -> None:
    image = _head(40.0, -1000.0, (0.8, 0.8, 3.0))
    coarse = downsample(image, 2.0)
    assert coarse.GetSpacing() == (2.0, 2.0, 3.0)  # the 3 mm slices stay as they are
    assert coarse.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(image_centre(coarse), image_centre(image), atol=0.5)


def test_ct_body_mask_fills_the_cavity_and_finds_the_head() -> None:
    image = downsample(_head(40.0, -1000.0, (1.0, 1.0, 2.0)), 2.0)
    mask = body_mask(image, "CT")
    array = sitk.GetArrayFromImage(mask)
    centre = tuple(n // 2 for n in array.shape)
    assert array[centre] == 1  # the cavity around the centre is filled
    expected_voxels = 4 / 3 * np.pi * 70 * 80 * 90 / 8.0
    assert abs(array.sum() / expected_voxels - 1) < 0.1
    np.testing.assert_allclose(mask_centroid(mask), [0.0, 0.0, 0.0], atol=2.0)


def test_mr_body_mask_uses_a_fraction_of_the_bright_tissue() -> None:
    image = _head(500.0, 0.0, (2.0, 2.0, 2.0))
    noisy = image + sitk.AdditiveGaussianNoise(image * 0, standardDeviation=10.0, seed=1)
    array = sitk.GetArrayFromImage(body_mask(noisy, "MR"))
    expected_voxels = 4 / 3 * np.pi * 70 * 80 * 90 / 8.0
    assert abs(array.sum() / expected_voxels - 1) < 0.1


def test_an_empty_image_has_no_body_centroid() -> None:
    blank = sitk.Image([20, 20, 20], sitk.sitkFloat32)
    assert mask_centroid(body_mask(blank, "MR")) is None
