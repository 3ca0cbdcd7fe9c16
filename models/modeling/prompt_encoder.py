"""Prompt encoder: clicks, box corners, mask and text → sparse tokens and a dense embedding.

Upstream layout and semantics (reference/sam_med3d.md §2.2, §4.2), plus the paper's two added
branches (§3.2): box corners are two points with their own corner-type embeddings
(``point_embeddings.2`` and ``.3``, as upstream's box variant lays them out), and text features
pass through an adaptation layer to ``num_text_tokens`` tokens.

Point and corner coordinates are voxel indices of the crop in the tensor's axis order. Labels:
−1 padding, 0 negative click, 1 positive click, 2 box min corner, 3 box max corner.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.modeling.common import LayerNorm3d

PAD_LABEL = -1
NEGATIVE_LABEL = 0
POSITIVE_LABEL = 1
BOX_MIN_LABEL = 2
BOX_MAX_LABEL = 3


class PositionEmbeddingRandom3D(nn.Module):
    """Random Fourier features of normalised coordinates: [sin, cos, sin] of 2π(2c − 1)·G."""

    positional_encoding_gaussian_matrix: torch.Tensor

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        # Persistent: the checkpoint holds it; regenerating it would break pretrained weights.
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        matrix = self.positional_encoding_gaussian_matrix
        u = 2 * math.pi * ((2 * coords - 1) @ matrix.to(coords.dtype))
        return torch.cat([torch.sin(u), torch.cos(u), torch.sin(u)], dim=-1)

    def dense(self, grid: int) -> torch.Tensor:
        """(C, G, G, G) encoding of the token-grid centres, with upstream's first-two-axes swap."""
        matrix = self.positional_encoding_gaussian_matrix
        centres = (torch.arange(grid, dtype=matrix.dtype, device=matrix.device) + 0.5) / grid
        i0, i1, i2 = torch.meshgrid(centres, centres, centres, indexing="ij")
        # Upstream follows the 2-D SAM x/y convention here but not for points; the pretrained
        # weights were trained with this mismatch, so it is reproduced, not fixed.
        coords = torch.stack([i1, i0, i2], dim=-1)
        return self._encode(coords).permute(3, 0, 1, 2)

    def points(self, coords: torch.Tensor, input_size: int) -> torch.Tensor:
        """(B, N, C) encoding of voxel coordinates (already shifted to voxel centres)."""
        return self._encode(coords / input_size)


class TextAdapter(nn.Module):
    """Adaptation layer (paper §3.2.1): Linear → GELU → Linear → LayerNorm into prompt tokens."""

    def __init__(self, text_dim: int, embed_dim: int, num_tokens: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.fc1 = nn.Linear(text_dim, embed_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(embed_dim, embed_dim * num_tokens)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = self.fc2(self.act(self.fc1(features)))
        return self.norm(tokens.reshape(features.shape[0], self.num_tokens, -1))


class PromptEncoder3D(nn.Module):
    def __init__(
        self,
        *,
        embed_dim: int,
        grid_size: int,
        input_size: int,
        mask_in_chans: int,
        box_prompt: bool,
        text_dim: int | None,
        num_text_tokens: int,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.grid_size = grid_size
        self.input_size = input_size
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 3)
        num_point_embeddings = 4 if box_prompt else 2
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv3d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans),
            nn.GELU(),
            nn.Conv3d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self.text_adapter = TextAdapter(text_dim, embed_dim, num_text_tokens) if text_dim else None

    @property
    def accepts_boxes(self) -> bool:
        return len(self.point_embeddings) >= 4

    def get_dense_pe(self) -> torch.Tensor:
        return self.pe_layer.dense(self.grid_size).unsqueeze(0)

    def embed_labelled_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) voxel coordinates with (B, N) labels → (B, N, C) tokens, without branching.

        Written as arithmetic on label masks so the same code runs eagerly and in the ONNX graph.
        """
        pe = self.pe_layer.points(coords + 0.5, self.input_size)
        is_pad = (labels == PAD_LABEL).unsqueeze(-1).to(pe.dtype)
        tokens = pe * (1 - is_pad) + self.not_a_point_embed.weight * is_pad
        for label, embedding in enumerate(self.point_embeddings):
            assert isinstance(embedding, nn.Embedding)
            tokens = tokens + embedding.weight * (labels == label).unsqueeze(-1).to(pe.dtype)
        return tokens

    def embed_mask(self, masks: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mask_downscaling(masks)
        return out

    def embed_text(self, features: torch.Tensor) -> torch.Tensor:
        if self.text_adapter is None:
            raise ValueError("this network has no text branch")
        out: torch.Tensor = self.text_adapter(features)
        return out

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        text_features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Upstream calling convention; returns sparse (B, N, C) and dense (B, C, G, G, G)."""
        coords, labels = prompt_points(points, boxes)
        batch = _batch_size(coords, masks, text_features)
        device, dtype = self.no_mask_embed.weight.device, self.no_mask_embed.weight.dtype
        sparse = [torch.empty(batch, 0, self.embed_dim, device=device, dtype=dtype)]
        if coords is not None and labels is not None:
            sparse.append(self.embed_labelled_points(coords, labels))
        if text_features is not None:
            sparse.append(self.embed_text(text_features))
        if masks is not None:
            dense = self.embed_mask(masks)
        else:
            g = self.grid_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(batch, -1, g, g, g)
        return torch.cat(sparse, dim=1), dense


def prompt_points(
    points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Clicks and box corners as one labelled point list, upstream's padding rule included.

    Upstream appends one padding point after the clicks when no box is given; a box (B, 2, 3)
    becomes its two corners labelled 2 and 3 after the clicks.
    """
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    if points is not None:
        coords, labels = points
        parts.append((coords, labels))
        if boxes is None:
            pad = torch.zeros(coords.shape[0], 1, 3, dtype=coords.dtype, device=coords.device)
            pad_label = torch.full((labels.shape[0], 1), PAD_LABEL, dtype=labels.dtype, device=labels.device)
            parts.append((pad, pad_label))
    if boxes is not None:
        corner_labels = torch.tensor([BOX_MIN_LABEL, BOX_MAX_LABEL], device=boxes.device)
        parts.append((boxes.reshape(-1, 2, 3), corner_labels.expand(boxes.shape[0], 2)))
    if not parts:
        return None, None
    return torch.cat([c for c, _ in parts], dim=1), torch.cat([lab.to(torch.long) for _, lab in parts], dim=1)


def _batch_size(*tensors: torch.Tensor | None) -> int:
    for t in tensors:
        if t is not None:
            return int(t.shape[0])
    return 1
