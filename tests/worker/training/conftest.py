"""Synthetic patients of all three tasks, cached once per test session for the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.synth import write_synthetic_patients
from worker.training.cases import CacheReport, build_cache


@pytest.fixture(scope="session")
def training_patients(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("training-patients")
    write_synthetic_patients(root, task="all", size="small", seed=21)
    return root


@pytest.fixture(scope="session")
def training_cache(
    training_patients: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, CacheReport]:
    cache = tmp_path_factory.mktemp("training-cache")
    return cache, build_cache(training_patients, cache)
