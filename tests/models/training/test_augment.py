"""Augmentation moves image, lesion and r together and repeats exactly from the same seed."""

from __future__ import annotations

import numpy as np

from models.training.augment import AugmentationSettings, Augmenter
from tests.models.training.cases import sphere_case

SPATIAL_ONLY = AugmentationSettings(
    flip_prob=0.5, affine_prob=1.0, noise_prob=0.0, blur_prob=0.0, gamma_prob=0.0
)


def _crop(case, size=40):  # type: ignore[no-untyped-def]
    centre = np.argwhere(case.lesion).mean(axis=0).astype(int)
    box = tuple(slice(c - size // 2, c + size // 2) for c in centre)
    return case.image[box].copy(), case.lesion[box].astype(np.float32), case.roi[box].astype(np.float32)


def test_spatial_transforms_move_image_and_masks_together() -> None:
    image, lesion, roi = _crop(sphere_case(4))
    augment = Augmenter(SPATIAL_ONLY)
    rng = np.random.default_rng(0)
    for _ in range(4):
        new_image, new_lesion, new_roi = augment(image, lesion, roi, -1.0, rng)
        bright = new_image > 1.0
        agreement = np.count_nonzero(bright & (new_lesion > 0)) / max(
            np.count_nonzero(bright | (new_lesion > 0)), 1
        )
        assert agreement > 0.8  # interpolation blurs a voxel-thin rim, nothing more
        assert not np.array_equal(new_lesion, lesion)  # the affine always moved it
        assert set(np.unique(new_roi)) <= {0.0, 1.0}


def test_affine_padding_is_the_image_padding_value() -> None:
    image = np.zeros((32, 32, 32), dtype=np.float32)
    settings = AugmentationSettings(
        flip_prob=0, affine_prob=1.0, rotate_rad=0.7, noise_prob=0, blur_prob=0, gamma_prob=0
    )
    out, _, _ = Augmenter(settings)(image, image, image, -3.0, np.random.default_rng(1))
    # Constant image 0 everywhere inside; what rotates in from outside is the pad value -3.
    assert out.min() < -2.9 and np.isclose(out[16, 16, 16], 0.0)


def test_same_generator_seed_same_result_and_intensity_changes_image_only() -> None:
    image, lesion, roi = _crop(sphere_case(5))
    augment = Augmenter()
    first = augment(image, lesion, roi, -1.0, np.random.default_rng(7))
    again = augment(image, lesion, roi, -1.0, np.random.default_rng(7))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    intensity = Augmenter(
        AugmentationSettings(flip_prob=0, affine_prob=0, noise_prob=1, blur_prob=1, gamma_prob=1)
    )
    new_image, new_lesion, new_roi = intensity(image, lesion, roi, -1.0, np.random.default_rng(2))
    assert not np.allclose(new_image, image)
    assert np.array_equal(new_lesion, lesion) and np.array_equal(new_roi, roi)
