"""Builders (SAM's ``build_sam.py``): one function turns a :class:`ModelConfig` into a network."""

from __future__ import annotations

from collections.abc import Callable

from models.config import CONFIGS, ModelConfig, get_config
from models.modeling.image_encoder import ImageEncoderViT3D
from models.modeling.mask_decoder import MaskDecoder3D
from models.modeling.network import Sam3D
from models.modeling.prompt_encoder import PromptEncoder3D
from models.modeling.transformer import TwoWayTransformer3D


def build_model(config: ModelConfig | str) -> Sam3D:
    """A randomly initialised network for a configuration (or its registered name)."""
    cfg = get_config(config) if isinstance(config, str) else config
    image_encoder = ImageEncoderViT3D(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        embed_dim=cfg.encoder_embed_dim,
        depth=cfg.encoder_depth,
        num_heads=cfg.encoder_num_heads,
        mlp_ratio=cfg.mlp_ratio,
        out_chans=cfg.prompt_embed_dim,
        window_size=cfg.window_size,
        global_attn_indexes=cfg.encoder_global_attn_indexes,
    )
    prompt_encoder = PromptEncoder3D(
        embed_dim=cfg.prompt_embed_dim,
        grid_size=cfg.grid_size,
        input_size=cfg.img_size,
        mask_in_chans=cfg.mask_in_chans,
        box_prompt=cfg.box_prompt,
        text_dim=cfg.text_dim,
        num_text_tokens=cfg.num_text_tokens,
    )
    mask_decoder = MaskDecoder3D(
        transformer_dim=cfg.prompt_embed_dim,
        transformer=TwoWayTransformer3D(
            depth=cfg.decoder_depth,
            embedding_dim=cfg.prompt_embed_dim,
            num_heads=cfg.decoder_num_heads,
            mlp_dim=cfg.decoder_mlp_dim,
        ),
        num_multimask_outputs=cfg.num_multimask_outputs,
        iou_head_depth=cfg.iou_head_depth,
        iou_head_hidden_dim=cfg.iou_head_hidden_dim,
    )
    return Sam3D(cfg, image_encoder, prompt_encoder, mask_decoder)


def _builder(name: str) -> Callable[[], Sam3D]:
    return lambda: build_model(CONFIGS[name])


model_registry: dict[str, Callable[[], Sam3D]] = {name: _builder(name) for name in CONFIGS}
