"""Synthetic follow-up / planning CT pairs with their true transform, shared by the register tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from models.synth import TrueTransform, write_synthetic_patients
from worker.stages.read.series import read_image_series

#: Points at which the target registration error is measured, per pair.
TRE_POINTS = 200


@dataclass(frozen=True)
class SynthPair:
    """A follow-up (fixed) and planning CT (moving) of one synthetic patient."""

    folder: Path
    fixed: sitk.Image
    moving: sitk.Image
    modality: str
    truth: TrueTransform
    points: np.ndarray  # shape (TRE_POINTS, 3): follow-up points inside the body, mm (LPS)


def series_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def body_points(image: sitk.Image, count: int = TRE_POINTS, seed: int = 0) -> np.ndarray:
    """Physical points at random voxels inside the body (a threshold, independent of the code under test)."""
    values = sitk.GetArrayFromImage(image)
    threshold = -400.0 if values.min() < -500 else 0.2 * float(np.percentile(values, 99))
    inside = np.argwhere(values > threshold)
    chosen = inside[np.random.default_rng(seed).choice(len(inside), count, replace=False)]
    return np.array([image.TransformIndexToPhysicalPoint([int(v) for v in zyx[::-1]]) for zyx in chosen])


def tre(
    transform: sitk.Transform, truth: Callable[[np.ndarray], np.ndarray], points: np.ndarray
) -> np.ndarray:
    """|T(p) − T_true(p)| at each point, mm."""
    estimated = np.array([transform.TransformPoint([float(v) for v in p]) for p in points])
    return np.linalg.norm(estimated - truth(points), axis=1)


@pytest.fixture(scope="session")
def synth_pair(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], SynthPair]:
    """Factory: the small synthetic pair of a task ("orn": CT→CT, "ce"/"crn": MR→CT), made once."""
    root = tmp_path_factory.mktemp("register-synth")
    made: dict[str, SynthPair] = {}

    def make(task: str) -> SynthPair:
        if task not in made:
            folder = write_synthetic_patients(root, task=task, size="small")[0]
            case = json.loads((folder / "case.json").read_text())
            followup = read_image_series(series_files(folder / case["followups"][0]["image_dir"]))
            planning = read_image_series(series_files(folder / "planning" / "ct"))
            made[task] = SynthPair(
                folder=folder,
                fixed=followup.image,
                moving=planning.image,
                modality=followup.modality,
                truth=TrueTransform.from_dict(case["true_transform"]),
                points=body_points(followup.image),
            )
        return made[task]

    return make
