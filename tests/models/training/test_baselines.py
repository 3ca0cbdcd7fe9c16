"""Baseline networks: MONAI builds that keep the crop's shape, self-describing files, and a predictor
that sees exactly the voxels our promptable network sees.

The predictor is checked with networks whose output is known: the identity (logits = the
normalised image), the crop mean (tiles then differ, so overlaps show the averaging) and a
recorder of the conditions it runs under.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn
from torch.nn import functional as F

from models.build import build_model
from models.checkpoint import file_sha256, save_checkpoint
from models.errors import CheckpointError, ModelError, PromptInputError
from models.modeling.network import Sam3D
from models.predictor import OUTSIDE_LOGIT, Click, PatientBox, Predictor
from models.runtime import TorchBackend
from models.training.baselines import (
    BASELINE_ARCHS,
    BASELINE_FORMAT,
    PREVIOUS_IGNORED_NOTE,
    PROMPTS_IGNORED_NOTE,
    DenseConfig,
    DensePredictor,
    build_baseline,
    dynunet_strides,
    is_baseline_file,
    load_baseline,
    save_baseline,
)
from models.transforms import WorkingGrid, foreground_stats

# The smallest crop each architecture takes in train mode (SwinUNETR's deepest stage is crop/32).
TINY_SIDE = {"vnet": 32, "segresnet": 32, "dynunet": 32, "unetr": 32, "swinunetr": 64}
# What "paper" means, pinned: a change here changes every baseline checkpoint.
PAPER_PARAMETERS_AT_64 = {
    "vnet": 45_593_892,
    "segresnet": 4_700_897,
    "dynunet": 16_543_617,
    "unetr": 92_685_521,
    "swinunetr": 62_186_659,
}
FOLLOW_UP_SIZE = (60, 70, 40)
FOLLOW_UP_SPACING = (1.2, 0.9, 2.5)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Two trainings share this machine's two cores; the tests take one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _follow_up() -> sitk.Image:
    """An oblique, anisotropic series: a smooth positive pattern, air (0) in its first slices."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in FOLLOW_UP_SIZE[::-1]), indexing="ij")
    values = 200.0 + 80.0 * np.sin(i / 7.0) * np.cos(j / 9.0) + 3.0 * k
    values[:4] = 0.0
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing(FOLLOW_UP_SPACING)
    image.SetOrigin((-31.0, 12.5, -40.0))
    angle = np.deg2rad(20.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1]]
    )
    image.SetDirection(rotation.flatten().tolist())
    return image


def _box_around_centre(image: sitk.Image, half_extent_mm: tuple[float, float, float]) -> PatientBox:
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    half = np.asarray(half_extent_mm)
    return PatientBox.from_corners(centre - half, centre + half)


class CropMean(nn.Module):
    """Answers every voxel of a crop with the crop's mean: tiles then differ where they overlap."""

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return volume.mean(dim=(2, 3, 4), keepdim=True).expand_as(volume).clone()


class ConditionRecorder(nn.Identity):
    """The identity, noting the thread count, mode and autograd state each call runs under."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, bool, bool]] = []

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.get_num_threads(), self.training, torch.is_inference_mode_enabled()))
        return volume


class RecordingTorchBackend(TorchBackend):
    """The real Sam3D backend, keeping the crops Predictor hands to the image encoder."""

    def __init__(self, model: Sam3D) -> None:
        super().__init__(model, device="cpu", threads=1)
        self.volumes: list[np.ndarray] = []

    def embed(self, volumes: np.ndarray) -> np.ndarray:
        self.volumes.append(volumes.copy())
        return super().embed(volumes)


# -- networks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", BASELINE_ARCHS)
def test_tiny_networks_keep_the_crop_shape_in_train_and_eval_mode(arch: str) -> None:
    torch.manual_seed(0)
    side = TINY_SIDE[arch]
    batch = 1 if arch == "swinunetr" else 2  # SwinUNETR at 64³ is the slowest of the five
    model = build_baseline(arch, side, width="tiny")
    volume = torch.randn(batch, 1, side, side, side)
    with torch.no_grad():
        for training in (True, False):
            output = model.train(training)(volume)
            assert isinstance(output, torch.Tensor)
            assert output.shape == (batch, 1, side, side, side)
            assert torch.isfinite(output).all()


@pytest.mark.parametrize("arch", BASELINE_ARCHS)
def test_paper_widths_build_at_64_with_the_documented_sizes(arch: str) -> None:
    paper = build_baseline(arch, 64)
    assert _parameters(paper) == PAPER_PARAMETERS_AT_64[arch]
    if arch != "vnet":  # MONAI's VNet has no width parameter
        assert _parameters(build_baseline(arch, TINY_SIDE[arch], width="tiny")) < _parameters(paper) / 3


def test_dynunet_follows_nnunet_strides() -> None:
    assert dynunet_strides(64) == [1, 2, 2, 2, 2]  # 4³ bottleneck
    assert dynunet_strides(128) == [1, 2, 2, 2, 2, 2]
    assert dynunet_strides(48) == [1, 2, 2, 2]  # 6³: halving again would leave 3


def test_a_tiny_segresnet_learns_a_cube() -> None:
    torch.manual_seed(0)
    model = build_baseline("segresnet", 32, width="tiny").train()
    target = torch.zeros(1, 1, 32, 32, 32)
    target[:, :, 10:20, 12:22, 8:18] = 1.0
    image = target * 2.0 + 0.3 * torch.randn_like(target)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = F.binary_cross_entropy_with_logits(model(image), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


def test_an_unknown_architecture_names_the_known_ones() -> None:
    with pytest.raises(ModelError, match=r"unknown baseline network 'unet'.*vnet, segresnet, dynunet, unetr"):
        build_baseline("unet", 64)
    with pytest.raises(ModelError, match=r"unknown baseline width 'huge'.*paper, tiny"):
        build_baseline("vnet", 64, width="huge")


@pytest.mark.parametrize(
    ("arch", "img_size", "reason"),
    [
        ("swinunetr", 32, "multiple of 32 and at least 64"),
        ("swinunetr", 80, "multiple of 32"),
        ("unetr", 40, "16³ patches"),
        ("vnet", 24, "multiple of 16"),
        ("dynunet", 12, "at least 16"),
    ],
)
def test_a_crop_side_the_architecture_cannot_take_gives_the_reason(
    arch: str, img_size: int, reason: str
) -> None:
    with pytest.raises(ModelError, match=f"{arch} needs img_size.*{reason}.*got {img_size}"):
        build_baseline(arch, img_size, width="tiny")


# -- files ---------------------------------------------------------------------------------------


def test_a_saved_baseline_loads_into_the_same_network(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_baseline("dynunet", 32, width="tiny").eval()
    path = tmp_path / "nested" / "dynunet.pt"
    sha = save_baseline(model, "dynunet", 32, "tiny", path, metadata={"epoch": 7, "dice": 0.61})

    loaded = load_baseline(path)

    assert sha == file_sha256(path)
    assert loaded.weights_sha256 == sha
    assert loaded.model_id == f"dynunet@{sha[:12]}"
    assert loaded.config == DenseConfig(name="dynunet", img_size=32)
    assert loaded.metadata == {"epoch": 7, "dice": 0.61}
    assert loaded.path == path
    volume = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(volume), model(volume))
    assert is_baseline_file(path)
    assert torch.load(path, weights_only=True)["format"] == BASELINE_FORMAT


def test_other_files_are_not_baseline_files(tmp_path: Path) -> None:
    ours = tmp_path / "sam3d.pt"
    save_checkpoint(build_model("small"), ours)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))

    assert not is_baseline_file(ours)
    assert not is_baseline_file(noise)
    assert not is_baseline_file(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match=r"not a baseline network file.*'rtinjury\.checkpoint'"):
        load_baseline(ours)
    with pytest.raises(CheckpointError, match="not a PyTorch file"):
        load_baseline(noise)


def test_weights_that_do_not_fit_are_refused_with_the_keys_named(tmp_path: Path) -> None:
    state = build_baseline("dynunet", 32, width="tiny").state_dict()
    dropped = next(iter(state))
    state.pop(dropped)
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    payload = {"format": BASELINE_FORMAT, "format_version": 1, "arch": "dynunet", "img_size": 32}
    torch.save({**payload, "width": "tiny", "model_state_dict": state, "metadata": {}}, path)

    with pytest.raises(CheckpointError, match=rf"1 unexpected keys \(extra\.weight\).*{re.escape(dropped)}"):
        load_baseline(path)
    # A file naming a network this build cannot make is refused before any weights are read.
    torch.save({**payload, "arch": "unet", "width": "tiny", "model_state_dict": state}, path)
    with pytest.raises(CheckpointError, match="cannot make: unknown baseline network 'unet'"):
        load_baseline(path)


# -- predictor -----------------------------------------------------------------------------------


def test_the_dense_predictor_sees_the_crops_our_network_sees(small: Sam3D) -> None:
    """Same grid, same crops, same normalisation and padding as Predictor, voxel for voxel."""
    image = _follow_up()
    focus = _box_around_centre(image, (10.0, 8.0, 12.0))
    backend = RecordingTorchBackend(small)
    ours = Predictor(backend)
    ours.set_volume(image, focus)
    reference = ours.predict(box=focus, text_features=np.zeros(small.config.text_dim or 0, np.float32))
    dense = DensePredictor(nn.Identity(), DenseConfig("identity", small.config.img_size))
    dense.set_volume(image, focus)

    prediction = dense.predict()

    assert prediction.grid == reference.grid
    assert prediction.crops == reference.crops
    assert len(prediction.low_res) == len(backend.volumes) == 1
    np.testing.assert_array_equal(prediction.low_res[0], backend.volumes[0])
    # The 128³ crop is larger than the scan: padding is part of what both networks see.
    mean, std = foreground_stats(sitk.GetArrayViewFromImage(image))
    assert np.isclose(prediction.low_res[0], -mean / std).mean() > 0.2


def test_tiles_of_a_large_box_average_back_to_the_normalised_image() -> None:
    image = _follow_up()
    focus = _box_around_centre(image, (25.0, 10.0, 30.0))
    dense = DensePredictor(nn.Identity(), DenseConfig("identity", 32))
    dense.set_volume(image, focus)

    prediction = dense.predict()

    assert len(prediction.crops) > 2
    full = WorkingGrid.covering(image)
    start = np.rint(full.patient_to_index(np.asarray([prediction.grid.origin]))[0]).astype(int)
    assert prediction.grid == full.sub_grid(start, prediction.grid.size)
    lo, hi = focus.on_grid(prediction.grid)
    assert np.all(lo >= 0) and np.all(hi < np.asarray(prediction.grid.size))
    mean, std = foreground_stats(sitk.GetArrayViewFromImage(image))
    expected = ((prediction.grid.resample(image) - mean) / std).astype(np.float32)
    np.testing.assert_allclose(prediction.logits, expected, rtol=1e-6, atol=1e-6)


def test_overlapping_tiles_are_averaged() -> None:
    image = _follow_up()
    focus = _box_around_centre(image, (25.0, 10.0, 30.0))
    dense = DensePredictor(CropMean(), DenseConfig("crop-mean", 32))
    dense.set_volume(image, focus)

    prediction = dense.predict()

    sums = np.zeros(prediction.grid.size)
    counts = np.zeros(prediction.grid.size)
    for crop, crop_logits in zip(prediction.crops, prediction.low_res, strict=True):
        lo = np.maximum(crop.start, 0)
        hi = np.minimum(np.asarray(crop.start) + crop.size, prediction.grid.size)
        region = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        sums[region] += float(crop_logits.mean())
        counts[region] += 1
    assert counts.max() >= 2
    assert len({round(float(c.mean()), 4) for c in prediction.low_res}) > 1
    expected = np.where(counts > 0, sums / np.maximum(counts, 1), OUTSIDE_LOGIT)
    np.testing.assert_allclose(prediction.logits, expected, rtol=1e-5, atol=1e-5)


def test_the_mask_comes_back_on_the_follow_up_grid() -> None:
    image = _follow_up()
    focus = _box_around_centre(image, (20.0, 20.0, 30.0))
    dense = DensePredictor(nn.Identity(), DenseConfig("identity", 64))
    dense.set_volume(image, focus)

    mask = dense.predict().mask_on(image)

    assert mask.GetSize() == image.GetSize()
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert np.allclose(mask.GetSpacing(), image.GetSpacing())
    assert np.allclose(mask.GetOrigin(), image.GetOrigin())
    assert np.allclose(mask.GetDirection(), image.GetDirection())
    # The identity's logit is > 0 exactly where the image is above its foreground mean; away from
    # that boundary (where interpolation cannot flip it) the mask must agree.
    mean, std = foreground_stats(sitk.GetArrayViewFromImage(image))
    raw, labels = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(mask)
    clear = np.abs(raw - mean) > 0.3 * std
    assert labels.any() and not labels.all()
    working, off_border = _follow_up_voxels_on(dense.predict().grid, image)
    last = np.asarray(dense.predict().grid.size) - 1
    covered = np.all((working >= 1) & (working <= last - 1), axis=-1) & off_border
    beyond = np.any((working < -0.6) | (working > last + 0.6), axis=-1)
    assert covered.any() and beyond.any()
    assert np.array_equal(labels[clear & covered], raw[clear & covered] > mean)
    assert not labels[beyond].any()


def _follow_up_voxels_on(grid: WorkingGrid, image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Each follow-up voxel's working-grid index, (k, j, i, 3) like sitk arrays, and whether it
    lies off the series' border (working voxels beyond the last voxel centres resample to raw 0)."""
    size = np.asarray(image.GetSize())
    indices = np.stack(np.meshgrid(*(np.arange(n) for n in size), indexing="ij"), -1).reshape(-1, 3)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    points = np.asarray(image.GetOrigin()) + (indices * np.asarray(image.GetSpacing())) @ direction.T
    working = grid.patient_to_index(points).reshape(*size, 3)
    off_border = np.all((indices >= 1) & (indices <= size - 2), axis=1).reshape(*size)
    return np.transpose(working, (2, 1, 0, 3)), np.transpose(off_border, (2, 1, 0))


def test_a_working_volume_is_segmented_only_where_crops_reach() -> None:
    grid = WorkingGrid(origin=(0.0, 0.0, 0.0), size=(80, 70, 40))
    volume = np.random.default_rng(1).normal(size=grid.size).astype(np.float32)
    # A box near the top of axis 2: its 32³ crop reaches beyond the grid there and is padded.
    focus = PatientBox(grid.index_to_patient(np.array([[30.0, 30.0, 30.0], [40.0, 40.0, 39.0]])))
    dense = DensePredictor(nn.Identity(), DenseConfig("identity", 32))
    dense.set_working_volume(grid, volume, focus, pad_value=-7.5)

    prediction = dense.predict()

    (crop,) = prediction.crops
    inside = tuple(slice(max(s, 0), min(s + 32, n)) for s, n in zip(crop.start, grid.size, strict=True))
    np.testing.assert_array_equal(prediction.logits[inside], volume[inside])
    outside = np.ones(grid.size, dtype=bool)
    outside[inside] = False
    assert outside.any() and np.all(prediction.logits[outside] == OUTSIDE_LOGIT)
    assert np.sum(prediction.low_res[0] == -7.5) == 32 * 32 * (crop.start[2] + 32 - grid.size[2])


def test_prompts_are_ignored_with_a_note() -> None:
    image = _follow_up()
    focus = _box_around_centre(image, (10.0, 10.0, 10.0))
    dense = DensePredictor(nn.Identity(), DenseConfig("identity", 32))
    dense.set_volume(image, focus)
    plain = dense.predict()
    centre = tuple(float(v) for v in focus.points.mean(axis=0))

    assert plain.notes == []
    for prompted in (
        dense.predict(box=focus),
        dense.predict(clicks=[Click(point_mm=(centre[0], centre[1], centre[2]), positive=True)]),
        dense.predict(text_features=np.zeros(384, dtype=np.float32)),
    ):
        assert prompted.notes == [PROMPTS_IGNORED_NOTE]
        np.testing.assert_array_equal(prompted.logits, plain.logits)
    assert dense.predict(previous=plain).notes == [PREVIOUS_IGNORED_NOTE]


def test_the_network_runs_in_eval_mode_under_the_thread_limit_and_both_are_restored() -> None:
    image = _follow_up()
    recorder = ConditionRecorder().train()
    dense = DensePredictor(recorder, DenseConfig("recorder", 32), threads=1)
    with pytest.raises(PromptInputError, match="set_volume"):
        dense.predict()
    torch.set_num_threads(2)
    try:
        dense.set_volume(image, _box_around_centre(image, (25.0, 5.0, 5.0)))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)

    assert len(recorder.seen) == len(dense.predict().crops) > 1
    assert set(recorder.seen) == {(1, False, True)}
    assert recorder.training
    assert dense.is_volume_set and dense.encode_seconds > 0
    dense.reset()
    assert not dense.is_volume_set
