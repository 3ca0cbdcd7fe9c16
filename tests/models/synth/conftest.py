"""One set of synthetic patients (all three tasks, two follow-ups each) shared by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.synth import write_synthetic_patients

SEED = 0
FOLLOWUPS = 2


@pytest.fixture(scope="session")
def synth_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Case folders by task: orn-000, ce-000, crn-000 (seed 0, small, two follow-ups)."""
    root = tmp_path_factory.mktemp("synth")
    folders = write_synthetic_patients(root, task="all", seed=SEED, followups=FOLLOWUPS)
    return {folder.name.split("-")[0]: folder for folder in folders}
