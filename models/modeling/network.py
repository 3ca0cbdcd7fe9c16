"""Composition root: the three parts and the two calls a predictor needs.

``embed`` runs the image encoder once per crop; ``decode`` runs prompt encoder and mask decoder
many times on that embedding. ``decode`` takes prompts already laid out as one labelled point
list (clicks, padding, box corners; see ``prompt_encoder.prompt_points``) and always a mask
prompt (zeros on the first pass, as upstream trained), so it has no branches and exports to ONNX
as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from models.config import ModelConfig
from models.modeling.image_encoder import ImageEncoderViT3D
from models.modeling.mask_decoder import MaskDecoder3D
from models.modeling.prompt_encoder import PromptEncoder3D


class Sam3D(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        image_encoder: ImageEncoderViT3D,
        prompt_encoder: PromptEncoder3D,
        mask_decoder: MaskDecoder3D,
    ) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    @property
    def has_text_branch(self) -> bool:
        return self.prompt_encoder.text_adapter is not None

    def embed(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S, S) normalised crops → (B, C, G, G, G) image embeddings."""
        out: torch.Tensor = self.image_encoder(volume)
        return out

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        text_features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask-0 logits (B, 1, 4G, 4G, 4G) and its IoU prediction (B, 1)."""
        sparse = self.prompt_encoder.embed_labelled_points(point_coords, point_labels)
        if text_features is not None:
            sparse = torch.cat([sparse, self.prompt_encoder.embed_text(text_features)], dim=1)
        dense = self.prompt_encoder.embed_mask(mask_input)
        return self.mask_decoder(
            image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=False
        )

    def forward(
        self,
        volume: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        text_features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(self.embed(volume), point_coords, point_labels, mask_input, text_features)
