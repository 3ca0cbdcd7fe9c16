"""Network configurations (the nanoGPT ``GPTConfig`` pattern: one frozen dataclass per build).

``sam-med3d`` is the upstream ``vit_b_ori`` layout (../shared/reference/sam_med3d.md §1) plus
the paper's two added prompt branches: box corners (``point_embeddings.2/.3``, as the upstream
box variant lays them out) and the text adaptation layer. ``sam-med3d-upstream`` is the same
network without the added branches: its state dict is exactly the official checkpoint's 324
keys. ``small`` keeps the geometry (128³ input, 16³ patches, 8³ tokens) with a narrower, shallower
network that runs on a CPU-only site; ``small-64`` (the shipped demo network) is ``small`` on 64³
crops with 8³ patches; ``tiny`` exists for tests and CI smoke runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from models.errors import CheckpointError


@dataclass(frozen=True)
class ModelConfig:
    """Every hyper-parameter that changes the state dict or the forward pass."""

    name: str = "sam-med3d"
    # Image encoder (ViT, ViTDet-style windowed/global blocks).
    img_size: int = 128
    patch_size: int = 16
    in_chans: int = 1
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    mlp_ratio: float = 4.0
    # Prompt space, mask decoder.
    prompt_embed_dim: int = 384
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    # Added prompt branches (paper §3.2). text_dim None: no text branch.
    box_prompt: bool = True
    text_dim: int | None = 384
    num_text_tokens: int = 1

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise CheckpointError(f"config {self.name}: img_size {self.img_size} is not a multiple of patch")
        if self.prompt_embed_dim % 3:
            # The random Fourier encoding gives [sin, cos, sin] of prompt_embed_dim // 3 frequencies.
            raise CheckpointError(f"config {self.name}: prompt_embed_dim must be divisible by 3")
        if 0 < self.window_size < self.img_size // self.patch_size:
            # Windows smaller than the token grid would split it into several windows; every
            # configuration here (and upstream's) pads the whole grid into one window instead.
            raise CheckpointError(f"config {self.name}: window_size must be 0 or at least the token grid")
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise CheckpointError(f"config {self.name}: encoder_embed_dim must be divisible by the heads")

    @property
    def grid_size(self) -> int:
        """Tokens per axis of the image embedding (8 for 128³ and 16³ patches)."""
        return self.img_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's mask logits (two ×2 upscalings of the token grid)."""
        return self.grid_size * 4

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"checkpoint config has unknown fields: {', '.join(unknown)}")
        values = dict(data)
        if "encoder_global_attn_indexes" in values:
            values["encoder_global_attn_indexes"] = tuple(values["encoder_global_attn_indexes"])
        return cls(**values)

    def with_changes(self, **changes: Any) -> ModelConfig:
        return replace(self, **changes)


SAM_MED3D = ModelConfig()
SAM_MED3D_UPSTREAM = ModelConfig(name="sam-med3d-upstream", box_prompt=False, text_dim=None)
SMALL = ModelConfig(
    name="small",
    encoder_embed_dim=192,
    encoder_depth=4,
    encoder_num_heads=6,
    encoder_global_attn_indexes=(1, 3),
    prompt_embed_dim=192,
    decoder_num_heads=8,
    decoder_mlp_dim=768,
    iou_head_hidden_dim=128,
)

# The shipped demo network: ``small`` on 64³ crops with 8³ patches. Same 8³ token grid and cost,
# but the decoder's mask logits come at 2 mm instead of 4 mm, which is what lesions of 0.4–5 cc
# (5–10 mm radius) need; boxes larger than 64 mm are tiled by the predictor.
SMALL_64 = SMALL.with_changes(name="small-64", img_size=64, patch_size=8)

# For tests and CI smoke runs only: the same code paths at a size that trains a step in ~0.1 s.
TINY = ModelConfig(
    name="tiny",
    img_size=32,
    patch_size=4,
    encoder_embed_dim=48,
    encoder_depth=2,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(1,),
    prompt_embed_dim=48,
    mask_in_chans=8,
    decoder_num_heads=4,
    decoder_mlp_dim=96,
    iou_head_hidden_dim=32,
)

CONFIGS: dict[str, ModelConfig] = {c.name: c for c in (SAM_MED3D, SAM_MED3D_UPSTREAM, SMALL, SMALL_64, TINY)}


def get_config(name: str) -> ModelConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise CheckpointError(
            f"unknown model configuration {name!r}; known: {', '.join(sorted(CONFIGS))}"
        ) from None
