"""Synthetic training cases in memory: a bright sphere (the lesion) inside a larger r, in noise."""

from __future__ import annotations

import numpy as np

from models.training.dataset import TrainingCase

SIDE = 72
LESION_RADIUS = 6
ROI_RADIUS = 20


def sphere_case(seed: int, task: str = "ce", text_index: int = 0) -> TrainingCase:
    rng = np.random.default_rng(seed)
    centre = rng.uniform(30, SIDE - 30, 3)
    grid = np.indices((SIDE,) * 3).transpose(1, 2, 3, 0)
    distance = np.linalg.norm(grid - centre, axis=-1)
    lesion = (distance <= LESION_RADIUS).astype(np.uint8)
    roi_centre = centre + rng.uniform(-5, 5, 3)
    roi = (np.linalg.norm(grid - roi_centre, axis=-1) <= ROI_RADIUS).astype(np.uint8)
    image = rng.normal(0.0, 0.3, (SIDE,) * 3).astype(np.float32) + 2.0 * lesion
    where = np.argwhere(roi)
    return TrainingCase(
        case_id=f"{task}-sphere-{seed}",
        task=task,
        image=image,
        lesion=lesion,
        roi=roi,
        box_lo=where.min(axis=0).astype(float),
        box_hi=where.max(axis=0).astype(float),
        pad_value=-1.0,
        text_index=text_index,
    )
