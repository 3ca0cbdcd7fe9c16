"""The infer stage: prompts the network was built for, and nothing kept outside r (plus margin)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from models.config import ModelConfig, get_config
from models.predictor import Predictor
from worker.stages.infer import InferenceOptions, gate_region, infer_lesion
from worker.stages.prompts import high_dose_region


class EverywhereLesion:
    """A stand-in network that answers "lesion" everywhere and records the prompts it got
    (the gate and the prompt routing are under test here, not the network)."""

    name = "everywhere"
    device = "cpu"

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.labels: list[list[int]] = []
        self.text: list[bool] = []

    def embed(self, volumes: np.ndarray) -> np.ndarray:
        g = self.config.grid_size
        return np.zeros((volumes.shape[0], self.config.prompt_embed_dim, g, g, g), dtype=np.float32)

    def decode(self, embedding, point_coords, point_labels, mask_input, text_features):  # type: ignore[no-untyped-def]
        self.labels.append(point_labels[0].tolist())
        self.text.append(text_features is not None)
        low = self.config.low_res_size
        return np.full((1, 1, low, low, low), 10.0, np.float32), np.zeros((1, 1), np.float32)


def _scan_with_dose() -> tuple[sitk.Image, sitk.Image]:
    values = np.random.default_rng(0).uniform(50.0, 150.0, (30, 60, 50)).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.8, 1.1, 2.5))
    image.SetOrigin((-20.0, -30.0, 10.0))
    z, y, x = np.indices((30, 60, 50))
    dose = 60.0 * np.exp(-(((x - 25) * 0.8) ** 2 + ((y - 30) * 1.1) ** 2 + ((z - 15) * 2.5) ** 2) / 300.0)
    dose_image = sitk.GetImageFromArray(dose.astype(np.float32))
    dose_image.CopyInformation(image)
    return image, dose_image


def test_gate_is_a_physical_margin_on_anisotropic_voxels() -> None:
    region = np.zeros((21, 21, 21), dtype=bool)
    region[10, 10, 10] = True
    gate = gate_region(region, (0.5, 1.0, 2.0), 4.0)  # x, y, z spacing; array is (z, y, x)
    assert np.count_nonzero(gate[10, 10, :]) == 17  # ±8 voxels of 0.5 mm
    assert np.count_nonzero(gate[10, :, 10]) == 9  # ±4 voxels of 1 mm
    assert np.count_nonzero(gate[:, 10, 10]) == 5  # ±2 voxels of 2 mm
    assert np.array_equal(gate_region(region, (1.0, 1.0, 1.0), 0.0), region)


def test_mask_stays_within_r_plus_margin_and_box_and_text_reach_the_network() -> None:
    image, dose = _scan_with_dose()
    region = high_dose_region(dose, 0.8)
    backend = EverywhereLesion(get_config("tiny"))
    result = infer_lesion(Predictor(backend), image, region, np.ones(384, np.float32))
    mask = sitk.GetArrayFromImage(result.mask).astype(bool)
    allowed = gate_region(region.mask, image.GetSpacing(), 3.0)
    assert mask.any() and np.array_equal(mask, mask & allowed)
    assert np.count_nonzero(mask) == np.count_nonzero(
        allowed & sitk.GetArrayFromImage(result.prediction.mask_on(image)).astype(bool)
    )
    assert result.gated_voxels > 0  # the network said "lesion" outside the gate too
    assert all(labels[-2:] == [2, 3] for labels in backend.labels) and all(backend.text)
    narrow = infer_lesion(Predictor(backend), image, region, np.ones(384, np.float32),
                          options=InferenceOptions(gate_margin_mm=0.0))  # fmt: skip
    assert np.array_equal(sitk.GetArrayFromImage(narrow.mask).astype(bool), region.mask)


def test_a_network_without_box_and_text_branches_gets_neither() -> None:
    image, dose = _scan_with_dose()
    config = get_config("tiny").with_changes(name="tiny-base", box_prompt=False, text_dim=None)
    backend = EverywhereLesion(config)
    infer_lesion(Predictor(backend), image, high_dose_region(dose, 0.8), np.ones(384, np.float32))
    assert backend.labels and all(labels == [-1] for labels in backend.labels)
    assert not any(backend.text)


def test_specks_below_the_minimum_volume_are_dropped_and_lesions_kept() -> None:
    from worker.stages.infer import drop_small_components

    mask = np.zeros((20, 40, 40), dtype=bool)
    mask[2:8, 5:15, 5:15] = True  # 6 × 10 × 10 voxels of 2 × 0.5 × 0.5 mm = 0.3 cc
    mask[15, 30, 30] = True  # one voxel: 0.0005 cc
    mask[12:14, 30:32, 5:7] = True  # 8 voxels: 0.004 cc
    spacing = (0.5, 0.5, 2.0)
    kept = drop_small_components(mask, spacing, 0.05)
    assert kept.sum() == 600 and kept[2:8, 5:15, 5:15].all()
    assert np.array_equal(drop_small_components(mask, spacing, 0.0), mask)
    assert drop_small_components(mask, spacing, 1.0).sum() == 0
