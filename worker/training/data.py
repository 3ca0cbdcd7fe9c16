"""Cached cases → :class:`models.training.trainer.TrainingData` (arrays in memory, text features)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.text.protocol import TextEncoder
from models.training.dataset import TrainingCase
from models.training.trainer import TrainingData
from worker.training.cases import CachedCase, load_arrays, load_index, split_cases


def training_data(
    cache_dir: Path,
    text_encoder: TextEncoder,
    *,
    validation_fraction: float = 0.2,
    split_seed: int = 0,
    tasks: tuple[str, ...] | None = None,
) -> TrainingData:
    """Every cached case (of ``tasks``, default all), split by patient within each task."""
    cases, data_hash = load_index(cache_dir)
    if tasks:
        cases = [c for c in cases if c.task in tasks]
    prompts = sorted({c.prompt for c in cases})
    features = text_encoder.encode(prompts) if prompts else np.zeros((0, 0), dtype=np.float32)
    train_ids, validation_ids = split_cases(cases, validation_fraction, split_seed)
    by_id = {c.case_id: c for c in cases}
    index = {prompt: i for i, prompt in enumerate(prompts)}

    def load(case_id: str) -> TrainingCase:
        return _training_case(cache_dir, by_id[case_id], index[by_id[case_id].prompt])

    return TrainingData(
        train=[load(i) for i in train_ids],
        validation=[load(i) for i in validation_ids],
        text_features=np.asarray(features, dtype=np.float32),
        prompts=prompts,
        data_hash=data_hash,
    )


def _training_case(cache_dir: Path, case: CachedCase, text_index: int) -> TrainingCase:
    arrays = load_arrays(cache_dir, case)
    return TrainingCase(
        case_id=case.case_id,
        task=case.task,
        image=arrays["image"].astype(np.float32),
        lesion=arrays["lesion"],
        roi=arrays["roi"],
        box_lo=np.asarray(case.box_lo, dtype=np.float64),
        box_hi=np.asarray(case.box_hi, dtype=np.float64),
        pad_value=case.pad_value,
        text_index=text_index,
    )
