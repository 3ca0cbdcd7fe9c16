"""Predictor: prompts reach the network at the right crop voxel, and masks come back at the right place.

Two backends: the real TorchBackend on random weights (what the network receives; real decode
path) and a geometry oracle, a backend whose "network" answers a sphere around the first
positive click, so that the whole chain patient → working grid → crop → low-res logits →
paste-back → follow-up grid can be checked in patient coordinates on oblique and FFS scans.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import SimpleITK as sitk

from models.build import build_model
from models.config import ModelConfig, get_config
from models.errors import PromptInputError
from models.modeling.network import Sam3D
from models.predictor import Click, PatientBox, Predictor
from models.runtime import TorchBackend
from tests.models.test_transforms import ORIENTATIONS, SPHERE_CENTRE_MM, _sphere_image

LESION_RADIUS_VOXELS = 6.0


@dataclass
class RecordingBackend:
    """Delegates to a real backend and keeps what it was given."""

    inner: TorchBackend
    volumes: list[np.ndarray] = field(default_factory=list)
    decodes: list[dict[str, np.ndarray | None]] = field(default_factory=list)

    @property
    def config(self) -> ModelConfig:
        return self.inner.config

    name = "recording"
    device = "cpu"

    def embed(self, volumes: np.ndarray) -> np.ndarray:
        self.volumes.append(volumes.copy())
        return self.inner.embed(volumes)

    def decode(self, embedding, point_coords, point_labels, mask_input, text_features):  # type: ignore[no-untyped-def]
        self.decodes.append(
            {"coords": point_coords, "labels": point_labels, "mask": mask_input, "text": text_features}
        )
        return self.inner.decode(embedding, point_coords, point_labels, mask_input, text_features)


class SphereOracle:
    """Answers positive logits within LESION_RADIUS_VOXELS of the first positive click."""

    name = "sphere-oracle"
    device = "cpu"

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    def embed(self, volumes: np.ndarray) -> np.ndarray:
        g = self.config.grid_size
        return np.zeros((volumes.shape[0], self.config.prompt_embed_dim, g, g, g), dtype=np.float32)

    def decode(self, embedding, point_coords, point_labels, mask_input, text_features):  # type: ignore[no-untyped-def]
        low = self.config.low_res_size
        scale = self.config.img_size / low
        positives = point_coords[0][point_labels[0] == 1]
        u = np.indices((low, low, low)).transpose(1, 2, 3, 0) * scale + (scale - 1) / 2  # crop coords
        if len(positives) == 0:
            return np.full((1, 1, low, low, low), -10.0, np.float32), np.zeros((1, 1), np.float32)
        distance = np.linalg.norm(u - positives[0], axis=-1)
        return (LESION_RADIUS_VOXELS - distance)[None, None].astype(np.float32), np.zeros((1, 1), np.float32)


@pytest.fixture(scope="module")
def small_backend(small: Sam3D) -> TorchBackend:
    return TorchBackend(small, device="cpu", threads=2)


def _text(dim: int = 384) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(dim).astype(np.float32)


@pytest.mark.parametrize("name", ["axial-hfs", "axial-ffs", "oblique"])
def test_click_arrives_at_the_bright_voxel_it_points_to(small_backend: TorchBackend, name: str) -> None:
    """The click and the image reach the network in the same axis order and the same place."""
    image = _sphere_image(ORIENTATIONS[name], (0.8, 1.1, 2.0))
    backend = RecordingBackend(small_backend)
    predictor = Predictor(backend)
    predictor.set_volume(image, focus=PatientBox.from_corners(SPHERE_CENTRE_MM - 5, SPHERE_CENTRE_MM + 5))
    predictor.predict(clicks=[Click(tuple(SPHERE_CENTRE_MM), positive=True)], text_features=_text())
    volume = backend.volumes[0][0, 0]
    coords, labels = backend.decodes[0]["coords"], backend.decodes[0]["labels"]
    assert labels is not None and coords is not None
    assert labels.tolist() == [[1, -1]]  # the click, then upstream's padding point
    click = np.round(coords[0, 0]).astype(int)
    bright = np.argwhere(volume > volume.mean() + 2 * volume.std())
    assert np.linalg.norm(bright.mean(axis=0) - coords[0, 0]) < 0.6
    assert volume[tuple(click)] == volume.max() or volume[tuple(click)] > np.percentile(volume, 99)


def test_box_becomes_two_labelled_corners_inside_the_crop(small_backend: TorchBackend) -> None:
    image = _sphere_image(ORIENTATIONS["axial-hfs"], (1.0, 1.0, 1.0))
    backend = RecordingBackend(small_backend)
    predictor = Predictor(backend)
    box = PatientBox.from_corners(
        SPHERE_CENTRE_MM - np.array([10, 8, 6]), SPHERE_CENTRE_MM + np.array([10, 8, 6])
    )
    predictor.set_volume(image, focus=box)
    predictor.predict(box=box, text_features=_text())
    coords, labels = backend.decodes[0]["coords"], backend.decodes[0]["labels"]
    assert labels is not None and coords is not None
    assert labels.tolist() == [[2, 3]]
    lo, hi = coords[0]
    # Working axes 0 and 1 point opposite to LPS x and y; the box keeps its size in voxels.
    assert np.allclose(hi - lo, [20, 16, 12], atol=1.0)
    centre = predictor._require_volume().crops[0].start + (lo + hi) / 2
    grid = predictor._require_volume().grid
    assert np.allclose(grid.index_to_patient(centre[None])[0], SPHERE_CENTRE_MM, atol=1.0)


def test_upstream_network_takes_the_box_as_a_centre_click() -> None:
    model = build_model(get_config("small").with_changes(box_prompt=False, text_dim=None)).eval()
    backend = RecordingBackend(TorchBackend(model, device="cpu", threads=2))
    predictor = Predictor(backend)
    image = _sphere_image(ORIENTATIONS["axial-hfs"], (1.0, 1.0, 1.0))
    box = PatientBox.from_corners(SPHERE_CENTRE_MM - 4, SPHERE_CENTRE_MM + 4)
    predictor.set_volume(image, focus=box)
    prediction = predictor.predict(box=box)
    assert backend.decodes[0]["labels"].tolist() == [[1, -1]]  # type: ignore[union-attr]
    assert any("no box branch" in note for note in prediction.notes)


def test_real_decode_path_and_mask_feedback(small_backend: TorchBackend) -> None:
    image = _sphere_image(ORIENTATIONS["oblique"], (1.0, 1.0, 1.5))
    backend = RecordingBackend(small_backend)
    predictor = Predictor(backend)
    box = PatientBox.from_corners(SPHERE_CENTRE_MM - 8, SPHERE_CENTRE_MM + 8)
    predictor.set_volume(image, focus=box)
    first = predictor.predict(box=box, text_features=_text())
    again = predictor.predict(box=box, text_features=_text())
    refined = predictor.predict(
        box=box, clicks=[Click(tuple(SPHERE_CENTRE_MM), True)], text_features=_text(), previous=first
    )
    assert len(backend.volumes) == 1  # embedded once, decoded three times
    assert np.array_equal(first.logits, again.logits)  # deterministic
    assert not np.any(backend.decodes[0]["mask"])  # zero mask prompt on the first pass
    assert np.array_equal(backend.decodes[2]["mask"], first.low_res[0])  # previous logits fed back
    assert np.abs(refined.logits - first.logits).max() > 1e-3
    assert first.logits.shape == first.grid.size and np.isfinite(first.logits).all()
    assert predictor.encode_seconds > 0 and first.decode_seconds > 0


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_mask_comes_back_at_the_clicked_patient_position(name: str) -> None:
    spacing = (0.7, 1.3, 2.5) if name == "oblique" else (0.9, 0.9, 2.0)
    image = _sphere_image(ORIENTATIONS[name], spacing)
    predictor = Predictor(SphereOracle(get_config("small")))
    target = SPHERE_CENTRE_MM + np.array([6.0, -4.0, 3.0])
    predictor.set_volume(image, focus=PatientBox.from_corners(target - 2, target + 2))
    prediction = predictor.predict(clicks=[Click(tuple(target), True)], text_features=_text())
    mask = prediction.mask_on(image)
    assert mask.GetSize() == image.GetSize() and mask.GetDirection() == image.GetDirection()
    voxels = np.argwhere(sitk.GetArrayFromImage(mask) > 0)[:, ::-1].astype(np.float64)  # (i, j, k)
    points = np.array([image.TransformContinuousIndexToPhysicalPoint(v.tolist()) for v in voxels])
    assert np.linalg.norm(points.mean(axis=0) - target) < 0.6
    # Same volume on the follow-up grid as on the 1 mm working grid (the oracle's interpolated
    # cone is a slightly smaller sphere than its nominal radius, hence the loose second bound).
    volume_mm3 = len(voxels) * float(np.prod(spacing))
    working_mm3 = float(prediction.mask().sum())
    assert volume_mm3 == pytest.approx(working_mm3, rel=0.1)
    assert 0.6 < working_mm3 / (4 / 3 * np.pi * LESION_RADIUS_VOXELS**3) < 1.05


def test_large_box_is_tiled_and_every_tile_sees_its_clicks() -> None:
    """A 200 mm box needs several 128 mm crops; a lesion in the overlap comes back whole."""
    size = (220, 60, 60)
    ramp = np.linspace(10.0, 90.0, size[0], dtype=np.float32)
    image = sitk.GetImageFromArray(np.broadcast_to(ramp, size[::-1]).copy())
    image.SetOrigin((-110.0, -30.0, -30.0))
    oracle = SphereOracle(get_config("small"))
    predictor = Predictor(oracle)
    box = PatientBox.from_corners((-100.0, -20.0, -20.0), (100.0, 20.0, 20.0))
    predictor.set_volume(image, focus=box)
    crops = predictor._require_volume().crops
    assert len(crops) == 3
    target = (0.0, 0.0, 0.0)  # lies in the overlap of neighbouring tiles
    prediction = predictor.predict(box=box, clicks=[Click(target, True)], text_features=_text())
    mask = sitk.GetArrayFromImage(prediction.mask_on(image))
    voxels = np.argwhere(mask > 0)[:, ::-1]
    points = np.array([image.TransformIndexToPhysicalPoint([int(x) for x in v]) for v in voxels])
    assert np.linalg.norm(points.mean(axis=0) - np.array(target)) < 0.6


def test_errors_are_clear(small_backend: TorchBackend) -> None:
    predictor = Predictor(small_backend)
    with pytest.raises(PromptInputError, match="set_volume"):
        predictor.predict(text_features=_text())
    image = _sphere_image(ORIENTATIONS["axial-hfs"], (1.0, 1.0, 1.0))
    predictor.set_volume(image)
    with pytest.raises(PromptInputError, match="needs text features"):
        predictor.predict()
    with pytest.raises(PromptInputError, match="takes 384"):
        predictor.predict(text_features=np.zeros(768, np.float32))
    first = predictor.predict(text_features=_text())
    predictor.set_volume(image, focus=PatientBox.from_corners((-200, -40, 0), (200, 0, 60)))
    with pytest.raises(PromptInputError, match="other crops"):
        predictor.predict(text_features=_text(), previous=first)
    blank = sitk.Image((10, 10, 10), sitk.sitkFloat32)
    with pytest.raises(PromptInputError, match="no foreground"):
        predictor.set_volume(blank)


def test_only_the_region_of_the_crops_is_resampled() -> None:
    """A long scan with a small box: the working grid is one crop, not the whole scan at 1 mm."""
    size = (60, 60, 400)
    ramp = np.linspace(10.0, 90.0, size[2], dtype=np.float32)
    image = sitk.GetImageFromArray(np.broadcast_to(ramp[:, None, None], size[::-1]).copy())
    image.SetSpacing((1.0, 1.0, 1.0))
    predictor = Predictor(SphereOracle(get_config("small")))
    target = np.array(image.TransformIndexToPhysicalPoint((30, 30, 300)))
    predictor.set_volume(image, focus=PatientBox.from_corners(target - 3, target + 3))
    state = predictor._require_volume()
    assert state.grid.size == (60, 60, 128)  # clipped in-plane, one crop along the scan
    prediction = predictor.predict(clicks=[Click(tuple(target), True)], text_features=_text())
    voxels = np.argwhere(sitk.GetArrayFromImage(prediction.mask_on(image)) > 0)[:, ::-1]
    points = np.array([image.TransformIndexToPhysicalPoint([int(x) for x in v]) for v in voxels])
    assert np.linalg.norm(points.mean(axis=0) - target) < 0.6


def test_crops_are_normalised_by_the_series_voxel_statistics(small_backend: TorchBackend) -> None:
    image = _sphere_image(ORIENTATIONS["oblique"], (0.7, 1.3, 2.5))
    backend = RecordingBackend(small_backend)
    predictor = Predictor(backend)
    predictor.set_volume(image, focus=PatientBox.from_corners(SPHERE_CENTRE_MM - 5, SPHERE_CENTRE_MM + 5))
    state = predictor._require_volume()
    values = sitk.GetArrayFromImage(image)
    foreground = values[values > 0]
    mean, std = foreground.mean(), foreground.std(ddof=1)
    expected = (state.crops[0].extract(state.grid.resample(image), 0.0) - mean) / std
    inside = state.crops[0].extract(np.ones(state.grid.size, np.float32), 0.0) > 0
    assert np.allclose(backend.volumes[0][0, 0][inside], expected[inside], atol=1e-4)
    assert np.allclose(backend.volumes[0][0, 0][~inside], -mean / std, atol=1e-5)  # raw 0 beyond the scan
