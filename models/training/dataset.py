"""Training crops from cached cases: where a crop falls, what the box prompt is inside it.

A case is a block of the 1 mm working grid around r's box: the normalised image, the lesion and
r. A training crop is placed either on the lesion (centre on a random lesion voxel, jittered so
the lesion is not always in the middle) or anywhere in the box — at inference the predictor tiles
the whole box, so the network must also learn to say "nothing here". The box prompt of a crop is
the box of r inside the crop after augmentation, which is what the predictor passes (r's box
clipped to the crop) for a compact r.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: Share of crops centred on the lesion (the rest fall anywhere in the box).
LESION_CROP_SHARE = 0.7
#: Largest shift (voxels) of a lesion-centred crop from the lesion voxel it was placed on.
LESION_JITTER = 16


@dataclass
class TrainingCase:
    """One case's arrays ([i, j, k], 1 mm) and prompts."""

    case_id: str
    task: str
    image: np.ndarray
    lesion: np.ndarray
    roi: np.ndarray
    box_lo: np.ndarray
    box_hi: np.ndarray
    pad_value: float
    text_index: int
    lesion_voxels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.lesion_voxels is None:
            self.lesion_voxels = np.argwhere(self.lesion > 0)


@dataclass
class Sample:
    """One augmented crop: arrays (S, S, S) and the box corners in crop voxel indices."""

    image: np.ndarray
    lesion: np.ndarray
    roi: np.ndarray
    box_lo: np.ndarray
    box_hi: np.ndarray
    text_index: int


Augment = Callable[
    [np.ndarray, np.ndarray, np.ndarray, float, np.random.Generator],
    tuple[np.ndarray, np.ndarray, np.ndarray],
]


def crop_start(case: TrainingCase, size: int, rng: np.random.Generator) -> np.ndarray:
    """Corner of a training crop: on the lesion (jittered) or anywhere in the box."""
    voxels = case.lesion_voxels
    if voxels is not None and len(voxels) and rng.random() < LESION_CROP_SHARE:
        centre = voxels[rng.integers(len(voxels))] + rng.integers(-LESION_JITTER, LESION_JITTER + 1, 3)
    else:
        centre = rng.uniform(case.box_lo, case.box_hi + 1)
    return np.floor(centre - size / 2).astype(int)


def extract(volume: np.ndarray, start: Sequence[int] | np.ndarray, size: int, pad_value: float) -> np.ndarray:
    """A size³ block from ``start``, padded with ``pad_value`` beyond the volume."""
    out = np.full((size,) * 3, pad_value, dtype=np.float32)
    src, dst = [], []
    for begin, extent in zip(start, volume.shape, strict=True):
        lo, hi = max(int(begin), 0), min(int(begin) + size, extent)
        if lo >= hi:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(begin), hi - int(begin)))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def make_sample(
    case: TrainingCase, size: int, rng: np.random.Generator, augment: Augment | None = None
) -> Sample:
    start = crop_start(case, size, rng)
    image = extract(case.image, start, size, case.pad_value)
    lesion = extract(case.lesion, start, size, 0.0)
    roi = extract(case.roi, start, size, 0.0)
    if augment is not None:
        image, lesion, roi = augment(image, lesion, roi, case.pad_value, rng)
    box_lo, box_hi = crop_box(roi, case.box_lo - start, case.box_hi - start, size)
    return Sample(image, lesion, roi, box_lo, box_hi, case.text_index)


def crop_box(
    roi: np.ndarray, box_lo: np.ndarray, box_hi: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """r's box inside the crop; the case box clipped to the crop when r misses the crop."""
    where = np.argwhere(roi > 0.5)
    if len(where):
        return where.min(axis=0).astype(np.float32), where.max(axis=0).astype(np.float32)
    lo = np.clip(box_lo, 0, size - 1)
    hi = np.clip(box_hi, 0, size - 1)
    return lo.astype(np.float32), np.maximum(hi, lo).astype(np.float32)


def collate(samples: Sequence[Sample]) -> dict[str, np.ndarray]:
    """Batch arrays: image/lesion/roi (B, 1, S, S, S), box (B, 2, 3), text index (B,)."""
    return {
        "image": np.stack([s.image for s in samples])[:, None].astype(np.float32),
        "lesion": np.stack([s.lesion for s in samples])[:, None].astype(np.float32),
        "roi": np.stack([s.roi for s in samples])[:, None].astype(np.float32),
        "box": np.stack([np.stack([s.box_lo, s.box_hi]) for s in samples]).astype(np.float32),
        "text_index": np.array([s.text_index for s in samples], dtype=np.int64),
    }
