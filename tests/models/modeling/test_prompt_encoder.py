"""Prompt encoder semantics that the pretrained weights depend on (reference/sam_med3d.md §4.2)."""

from __future__ import annotations

import math

import pytest
import torch

from models.build import build_model
from models.modeling.prompt_encoder import (
    BOX_MAX_LABEL,
    BOX_MIN_LABEL,
    PAD_LABEL,
    PositionEmbeddingRandom3D,
    prompt_points,
)


def _fourier(coords: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    u = 2 * math.pi * ((2 * coords - 1) @ matrix)
    return torch.cat([torch.sin(u), torch.cos(u), torch.sin(u)], dim=-1)


def test_point_encoding_is_random_fourier_of_voxel_centres() -> None:
    pe = PositionEmbeddingRandom3D(128)
    coords = torch.tensor([[[10.0, 64.0, 127.0]]])
    expected = _fourier((coords + 0.5) / 128, pe.positional_encoding_gaussian_matrix)
    assert torch.allclose(pe.points(coords + 0.5, 128), expected, atol=1e-6)
    assert expected.shape == (1, 1, 384)


def test_dense_encoding_swaps_the_first_two_axes_relative_to_points() -> None:
    """A point at grid cell (p0, p1, p2) is encoded like dense cell (p1, p0, p2), as upstream trained."""
    pe = PositionEmbeddingRandom3D(128)
    dense = pe.dense(8)
    assert dense.shape == (384, 8, 8, 8)
    for p0, p1, p2 in [(0, 5, 2), (7, 1, 3), (2, 6, 6)]:
        # Voxel 16·p + 7.5 has normalised centre (p + 0.5) / 8.
        voxel = torch.tensor([[16 * p0 + 7.5, 16 * p1 + 7.5, 16 * p2 + 7.5]])
        point = pe.points(voxel + 0.5, 128)[0]
        assert torch.allclose(point, dense[:, p1, p0, p2], atol=1e-5)
        if p0 != p1:
            assert not torch.allclose(point, dense[:, p0, p1, p2], atol=1e-3)


def test_padding_point_is_added_after_clicks_only_without_a_box() -> None:
    clicks = (torch.tensor([[[1.0, 2.0, 3.0]]]), torch.tensor([[1]]))
    coords, labels = prompt_points(clicks, None)
    assert labels.tolist() == [[1, PAD_LABEL]]
    box = torch.tensor([[[10.0, 11.0, 12.0], [40.0, 41.0, 42.0]]])
    coords, labels = prompt_points(clicks, box)
    assert labels.tolist() == [[1, BOX_MIN_LABEL, BOX_MAX_LABEL]]
    assert coords[0, 1:].tolist() == box[0].tolist()
    assert prompt_points(None, None) == (None, None)


def test_token_embeddings_per_label() -> None:
    model = build_model("small")
    encoder = model.prompt_encoder
    coords = torch.tensor([[[20.0, 30.0, 40.0]] * 5])
    labels = torch.tensor([[PAD_LABEL, 0, 1, BOX_MIN_LABEL, BOX_MAX_LABEL]])
    with torch.no_grad():
        tokens = encoder.embed_labelled_points(coords, labels)[0]
        pe = encoder.pe_layer.points(coords[0, :1] + 0.5, 128)[0]
    # Padding: positional encoding zeroed, not_a_point_embed instead.
    assert torch.allclose(tokens[0], encoder.not_a_point_embed.weight[0])
    for position, label in enumerate([0, 1, 2, 3], start=1):
        assert torch.allclose(tokens[position], pe + encoder.point_embeddings[label].weight[0], atol=1e-6)


def test_upstream_layout_has_no_box_or_text_branch() -> None:
    model = build_model("sam-med3d-upstream")
    assert not model.prompt_encoder.accepts_boxes
    assert not model.has_text_branch
    with pytest.raises(ValueError, match="no text branch"):
        model.prompt_encoder.embed_text(torch.zeros(1, 384))


def test_text_adapter_gives_normalised_prompt_tokens() -> None:
    model = build_model(build_model("small").config.with_changes(num_text_tokens=2))
    features = torch.randn(3, 384)
    tokens = model.prompt_encoder.embed_text(features)
    assert tokens.shape == (3, 2, 192)
    # LayerNorm with its initial affine: zero mean, unit variance per token.
    assert tokens.mean(-1).abs().max().item() < 1e-5
    assert (tokens.var(-1, unbiased=False) - 1).abs().max().item() < 1e-3


def test_forward_in_upstream_convention() -> None:
    model = build_model("small")
    points = (torch.tensor([[[5.0, 6.0, 7.0], [50.0, 60.0, 70.0]]]), torch.tensor([[1, 0]]))
    box = torch.tensor([[[10.0, 10.0, 10.0], [90.0, 90.0, 90.0]]])
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points, box, None, torch.randn(1, 384))
        _, dense_mask = model.prompt_encoder(None, None, torch.zeros(1, 1, 32, 32, 32))
    assert sparse.shape == (1, 2 + 2 + 1, 192)  # clicks, corners, one text token
    assert dense.shape == dense_mask.shape == (1, 192, 8, 8, 8)
    expected = model.prompt_encoder.no_mask_embed.weight.reshape(-1)
    assert torch.allclose(dense[0, :, 3, 4, 5], expected)
