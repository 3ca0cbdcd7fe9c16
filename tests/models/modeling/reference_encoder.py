"""A straightforward re-statement of upstream's encoder forward, used only to check ours.

Windowed blocks zero-pad the token grid to the window (14³ for an 8³ grid) after norm1 and attend
over every padded token with the full decomposed relative-position bias, exactly as
reference/sam_med3d.md §4.1 describes. Slow (2,744 tokens per windowed block) and obvious on purpose.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from models.modeling.image_encoder import Attention, Block, ImageEncoderViT3D


def _rel_table(table: torch.Tensor, size: int) -> torch.Tensor:
    coords = torch.arange(size)
    return table[coords[:, None] - coords[None, :] + size - 1]


def reference_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    b, grid, _, _, dim = x.shape
    span = attn.span
    if span > grid:
        pad = span - grid
        x = F.pad(x, (0, 0, 0, pad, 0, pad, 0, pad))
    s = x.shape[1]
    n = s**3
    heads, hd = attn.num_heads, attn.head_dim
    qkv = attn.qkv(x).reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4).reshape(3, b * heads, n, hd)
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = (q * hd**-0.5) @ k.transpose(-2, -1)
    r_q = q.reshape(b * heads, s, s, s, hd)
    rd = torch.einsum("bdhwc,dkc->bdhwk", r_q, _rel_table(attn.rel_pos_d, s))
    rh = torch.einsum("bdhwc,hkc->bdhwk", r_q, _rel_table(attn.rel_pos_h, s))
    rw = torch.einsum("bdhwc,wkc->bdhwk", r_q, _rel_table(attn.rel_pos_w, s))
    logits = logits.reshape(b * heads, s, s, s, s, s, s)
    logits = (
        logits + rd[:, :, :, :, :, None, None] + rh[:, :, :, :, None, :, None] + rw[:, :, :, :, None, None, :]
    ).reshape(b * heads, n, n)
    out = logits.softmax(dim=-1) @ v
    out = out.reshape(b, heads, s, s, s, hd).permute(0, 2, 3, 4, 1, 5).reshape(b, s, s, s, dim)
    out = attn.proj(out)
    return out[:, :grid, :grid, :grid, :]


def reference_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    x = x + reference_attention(block.attn, block.norm1(x))
    return x + block.mlp(block.norm2(x))


def reference_encoder(encoder: ImageEncoderViT3D, volume: torch.Tensor) -> torch.Tensor:
    x = encoder.patch_embed(volume) + encoder.pos_embed
    for block in encoder.blocks:
        assert isinstance(block, Block)
        x = reference_block(block, x)
    out: torch.Tensor = encoder.neck(x.permute(0, 4, 1, 2, 3))
    return out


def randomise_(module: torch.nn.Module, seed: int, scale: float = 0.5) -> None:
    """Non-zero values everywhere: upstream initialises rel-pos tables and pos_embed to zero,
    which would hide exactly the terms under test."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * scale)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
