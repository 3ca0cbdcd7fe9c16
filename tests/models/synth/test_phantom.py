"""The analytic phantom: tissues at known landmarks, dose shape, lesion placement."""

from __future__ import annotations

import numpy as np
import pytest

from models.synth.dose import HIGH_DOSE_FRACTION, sample_dose_model
from models.synth.lesions import VOLUME_RANGE_CC, place_lesion
from models.synth.phantom import tissue_labels
from models.synth.tissues import Tissue, appearance_table

LANDMARKS = [
    ((0.0, 10.0, 40.0), Tissue.WHITE_MATTER),  # centre of the cerebrum
    ((46.0, -2.0, -4.0), Tissue.WHITE_MATTER),  # left temporal lobe
    ((0.0, -64.0, -75.0), Tissue.MARROW),  # mandibular symphysis (chin)
    ((0.0, 26.0, -100.0), Tissue.MARROW),  # vertebral body
    ((0.0, -3.0, -100.0), Tissue.AIR),  # hypopharynx
    ((0.0, 10.0, 105.0), Tissue.CORTICAL_BONE),  # outer table of the skull vertex
    ((150.0, 0.0, 0.0), Tissue.AIR),  # outside the head
    ((13.0, 8.0, 48.0), Tissue.CSF),  # lateral ventricle
]


@pytest.mark.parametrize(("point", "tissue"), LANDMARKS)
def test_landmarks(point: tuple[float, float, float], tissue: Tissue) -> None:
    x, y, z = (np.array([v]) for v in point)
    assert tissue_labels(x, y, z)[0] == tissue


def test_block_processing_matches_single_pass() -> None:
    rng = np.random.default_rng(1)
    x, y, z = (rng.uniform(-120, 120, size=(20, 7)) for _ in range(3))
    np.testing.assert_array_equal(
        tissue_labels(x, y, z, block_points=21), tissue_labels(x, y, z, block_points=10_000)
    )


def test_appearance_tables() -> None:
    ct, flair, t1c = (appearance_table(c) for c in ("ct", "flair", "t1c"))
    assert ct[Tissue.AIR] == -1000 and ct[Tissue.CORTICAL_BONE] >= 1000
    assert flair[Tissue.GREY_MATTER] > flair[Tissue.WHITE_MATTER] > flair[Tissue.CSF]
    assert t1c[Tissue.WHITE_MATTER] > t1c[Tissue.GREY_MATTER] > t1c[Tissue.CSF]
    with pytest.raises(ValueError, match="contrast"):
        appearance_table("pet")


@pytest.mark.parametrize("task", ["orn", "ce", "crn"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lesion_fits_high_dose_region(task: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    side = 1 if seed % 2 else -1
    dose = sample_dose_model(rng, task, side, 68.0)
    lesion, fit = place_lesion(task, side, dose, 3, rng)
    assert all(VOLUME_RANGE_CC[0] <= v <= VOLUME_RANGE_CC[1] for v in fit.volumes_cc)
    assert list(fit.volumes_cc) == sorted(fit.volumes_cc)
    for centroid in fit.centroids_mm:
        assert dose.evaluate(*np.array(centroid)) >= HIGH_DOSE_FRACTION * dose.peak_gy
    assert np.sign(lesion.centre[0]) == side
