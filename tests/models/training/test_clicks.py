"""Error-driven click simulation (paper §3.2.3): where the clicks land, how many, and their labels."""

from __future__ import annotations

import pytest
import torch

from models.modeling import prompt_encoder
from models.modeling.prompt_encoder import PromptEncoder3D
from models.training.clicks import (
    NEGATIVE_LABEL,
    PAD_LABEL,
    POSITIVE_LABEL,
    ClickSimulation,
    simulate_clicks,
)

SHAPE = (8, 8, 8)


def _errors_case() -> tuple[torch.Tensor, torch.Tensor]:
    """(2, 8, 8, 8) prediction and target that overlap, each with misses and stray voxels."""
    target = torch.zeros(2, *SHAPE, dtype=torch.bool)
    prediction = torch.zeros_like(target)
    target[0, 2:6, 2:6, 2:6] = True
    prediction[0, 3:7, 3:7, 2:6] = True
    target[1, 0:3, 0:3, 0:3] = True
    prediction[1, 1:4, 0:2, 0:3] = True
    return prediction, target


def _at(mask: torch.Tensor, sample: int, coords: torch.Tensor) -> torch.Tensor:
    """``mask[sample]`` at each (d, h, w) row of ``coords``."""
    index = coords.long()
    return mask[sample][index[:, 0], index[:, 1], index[:, 2]]


def test_labels_are_the_prompt_encoders() -> None:
    assert (POSITIVE_LABEL, NEGATIVE_LABEL, PAD_LABEL) == (1, 0, -1)
    assert POSITIVE_LABEL == prompt_encoder.POSITIVE_LABEL
    assert NEGATIVE_LABEL == prompt_encoder.NEGATIVE_LABEL
    assert PAD_LABEL == prompt_encoder.PAD_LABEL


def test_paper_setting_is_three_rounds_of_four_clicks() -> None:
    assert ClickSimulation() == ClickSimulation(iterations=3, clicks_per_iteration=4)


def test_shapes_and_dtypes() -> None:
    prediction, target = _errors_case()
    coords, labels = simulate_clicks(prediction, target, 5, torch.Generator().manual_seed(0))
    assert coords.shape == (2, 5, 3) and coords.dtype == torch.float32
    assert labels.shape == (2, 5) and labels.dtype == torch.int64
    # Plain voxel indices: whole numbers inside the crop (the encoder adds the +0.5 itself).
    assert torch.equal(coords, coords.round())
    assert coords.min() >= 0 and coords.max() <= SHAPE[0] - 1


@pytest.mark.parametrize("seed", range(5))
def test_positive_clicks_lie_in_misses_and_negative_clicks_in_strays(seed: int) -> None:
    prediction, target = _errors_case()
    missed, stray = target & ~prediction, prediction & ~target
    coords, labels = simulate_clicks(prediction, target, 4, torch.Generator().manual_seed(seed))
    for b in range(2):
        positive, negative = labels[b] == POSITIVE_LABEL, labels[b] == NEGATIVE_LABEL
        assert int(positive.sum()) == 2 and int(negative.sum()) == 2
        assert _at(missed, b, coords[b][positive]).all()
        assert _at(stray, b, coords[b][negative]).all()


def test_odd_count_gives_the_extra_click_to_the_misses() -> None:
    prediction, target = _errors_case()
    _, labels = simulate_clicks(prediction, target, 3, torch.Generator().manual_seed(0))
    assert labels.tolist() == [[POSITIVE_LABEL, POSITIVE_LABEL, NEGATIVE_LABEL]] * 2


def test_all_clicks_come_from_the_only_error_kind() -> None:
    _, target = _errors_case()
    nothing = torch.zeros_like(target)
    g = torch.Generator().manual_seed(0)
    # Nothing predicted: every error is a miss.
    coords, labels = simulate_clicks(nothing, target, 4, g)
    assert (labels == POSITIVE_LABEL).all()
    assert _at(target, 0, coords[0]).all() and _at(target, 1, coords[1]).all()
    # Nothing to find: every predicted voxel is a stray.
    coords, labels = simulate_clicks(target, nothing, 4, g)
    assert (labels == NEGATIVE_LABEL).all()
    assert _at(target, 0, coords[0]).all() and _at(target, 1, coords[1]).all()


def test_perfect_sample_gets_padding_points_only() -> None:
    prediction, target = _errors_case()
    prediction[1] = target[1]
    coords, labels = simulate_clicks(prediction, target, 4, torch.Generator().manual_seed(0))
    assert (labels[1] == PAD_LABEL).all() and torch.equal(coords[1], torch.zeros(4, 3))
    assert (labels[0] != PAD_LABEL).all()


def test_padding_points_get_the_not_a_point_embedding() -> None:
    target = torch.zeros(1, *SHAPE, dtype=torch.bool)
    target[0, 1, 2, 3] = True
    coords, labels = simulate_clicks(target, target, 2)
    encoder = PromptEncoder3D(
        embed_dim=48,
        grid_size=4,
        input_size=SHAPE[0],
        mask_in_chans=16,
        box_prompt=True,
        text_dim=None,
        num_text_tokens=0,
    )
    tokens = encoder.embed_labelled_points(coords, labels)
    assert torch.equal(tokens, encoder.not_a_point_embed.weight.expand(1, 2, 48))


def test_same_seed_same_clicks_and_other_seeds_other_clicks() -> None:
    prediction, target = _errors_case()

    def clicks(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return simulate_clicks(prediction, target, 4, torch.Generator().manual_seed(seed))

    first, again = clicks(7), clicks(7)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    distinct = {tuple(clicks(seed)[0].flatten().tolist()) for seed in range(10)}
    assert len(distinct) == 10


def test_a_one_voxel_error_set_is_sampled_with_replacement() -> None:
    target = torch.zeros(1, *SHAPE, dtype=torch.bool)
    target[0, 5, 1, 6] = True
    coords, labels = simulate_clicks(torch.zeros_like(target), target, 4, torch.Generator().manual_seed(0))
    assert (labels == POSITIVE_LABEL).all()
    assert torch.equal(coords[0], torch.tensor([[5.0, 1.0, 6.0]]).expand(4, 3))


def test_an_error_set_as_large_as_the_count_is_sampled_without_replacement() -> None:
    target = torch.zeros(1, *SHAPE, dtype=torch.bool)
    target[0, 4, 0:2, 0:2] = True
    nothing = torch.zeros_like(target)
    # Drawn with replacement, 4 of 4 would all differ only 4!/4**4 ≈ 9 % of the time; so every seed.
    for seed in range(20):
        coords, _ = simulate_clicks(nothing, target, 4, torch.Generator().manual_seed(seed))
        assert sorted(map(tuple, coords[0].tolist())) == [(4, 0, 0), (4, 0, 1), (4, 1, 0), (4, 1, 1)]


def test_a_channel_axis_is_accepted() -> None:
    prediction, target = _errors_case()
    with_channel = simulate_clicks(prediction[:, None], target[:, None], 4, torch.Generator().manual_seed(2))
    without = simulate_clicks(prediction, target, 4, torch.Generator().manual_seed(2))
    assert torch.equal(with_channel[0], without[0]) and torch.equal(with_channel[1], without[1])


def test_zero_clicks_is_an_empty_prompt() -> None:
    prediction, target = _errors_case()
    coords, labels = simulate_clicks(prediction, target, 0)
    assert coords.shape == (2, 0, 3) and labels.shape == (2, 0)


def test_probability_maps_and_mismatched_masks_are_refused() -> None:
    prediction, target = _errors_case()
    with pytest.raises(TypeError, match="bool"):
        simulate_clicks(prediction.float(), target, 4)
    with pytest.raises(ValueError, match="differ"):
        simulate_clicks(prediction[:, :4], target, 4)
    with pytest.raises(ValueError, match="negative"):
        simulate_clicks(prediction, target, -1)
