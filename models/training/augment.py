"""Training augmentation (paper §4.1): flip, affine, noise, blur, gamma — MONAI transforms.

The spatial transforms move image, lesion and r together (one random draw applied to all three,
MONAI's dictionary transforms); the intensity ones touch the image only. Masks are interpolated
linearly and thresholded at 0.5, which keeps a small lesion's shape better than nearest
neighbour under rotation. Only left–right flips: the anatomy has a mirror plane there, while an
upside-down mandible is not a case the network will ever see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentationSettings:
    flip_prob: float = 0.5
    affine_prob: float = 0.5
    rotate_rad: float = 0.26
    scale: float = 0.1
    noise_prob: float = 0.3
    noise_std: float = 0.1
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    gamma_prob: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)


class Augmenter:
    """Callable ``(image, lesion, roi, pad_value, rng) → (image, lesion, roi)`` on (S, S, S) arrays."""

    def __init__(self, settings: AugmentationSettings | None = None) -> None:
        # MONAI is imported here, not at module load: inference never needs it.
        from monai.transforms import (
            Compose,
            RandAdjustContrast,
            RandAffine,
            RandFlip,
            RandGaussianNoise,
            RandGaussianSmooth,
        )

        s = settings or AugmentationSettings()
        self.settings = s
        # Spatial transforms run once on the three arrays stacked as channels: one random draw
        # moves all three, and one resampling pass costs a quarter of three separate ones.
        self._spatial = Compose(
            [
                RandFlip(prob=s.flip_prob, spatial_axis=0),
                RandAffine(
                    prob=s.affine_prob,
                    rotate_range=(s.rotate_rad,) * 3,
                    scale_range=(s.scale,) * 3,
                    mode="bilinear",
                    padding_mode="zeros",
                ),
            ]
        )
        self._intensity = Compose(
            [
                RandGaussianNoise(prob=s.noise_prob, std=s.noise_std),
                RandGaussianSmooth(
                    prob=s.blur_prob, sigma_x=s.blur_sigma, sigma_y=s.blur_sigma, sigma_z=s.blur_sigma
                ),
                RandAdjustContrast(prob=s.gamma_prob, gamma=s.gamma),
            ]
        )

    def __call__(
        self,
        image: np.ndarray,
        lesion: np.ndarray,
        roi: np.ndarray,
        pad_value: float,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # One seed per sample from the trainer's generator: runs repeat exactly.
        seed = int(rng.integers(2**31 - 1))
        self._spatial.set_random_state(seed=seed)
        self._intensity.set_random_state(seed=seed + 1)
        # Shifted so that the affine's zero padding is the image's own padding value.
        stacked = np.stack([image - pad_value, lesion, roi]).astype(np.float32)
        moved = _array(self._spatial(stacked))
        new_image = _array(self._intensity(moved[:1] + pad_value))[0]
        return (
            new_image.astype(np.float32),
            (moved[1] >= 0.5).astype(np.float32),
            (moved[2] >= 0.5).astype(np.float32),
        )


def _array(value: object) -> np.ndarray:
    # MONAI returns MetaTensors or tensors; as_tensor() drops the metadata.
    tensor = value.as_tensor() if hasattr(value, "as_tensor") else value
    return np.asarray(tensor)
