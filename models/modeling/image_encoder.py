"""3-D ViT image encoder in the SAM-Med3D ``vit_b_ori`` layout (reference/sam_med3d.md §2.1, §4.1).

Parameter names match the upstream state dict. The forward pass gives the upstream numbers,
but the windowed blocks are computed without materialising the padded window (see
:func:`windowed_attention`): with a 14³ window over an 8³ token grid, upstream attends over
2,744 tokens of which 2,232 are zero padding; only the 512 real queries matter, and all padded
keys/values are the same vector (the qkv bias), so their total weight can be folded into one
extra key. The result is exact, and the encoder costs what a 512-token ViT costs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from models.modeling.common import LayerNorm3d, MLPBlock


def relative_position_table(table: torch.Tensor, q_size: int, k_size: int, span: int) -> torch.Tensor:
    """Gather ``table[q - k + span - 1]`` for q < q_size, k < k_size: shape (q_size, k_size, C).

    ``span`` is the window side the table was made for (table length 2·span − 1); the tables
    always fit exactly here, so no interpolation is needed (unlike ViTDet's general case).
    """
    q = torch.arange(q_size, device=table.device)[:, None]
    k = torch.arange(k_size, device=table.device)[None, :]
    return table[q - k + span - 1]


def axis_terms(
    q: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor], span: int, keys: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decomposed relative-position logits per axis for q of shape (B, heads, G, G, G, C).

    Each returns (B, heads, G, G, G, keys): the term a query adds for a key at axis position
    0..keys-1. Uses the unscaled q, as MViTv2/SAM do.
    """
    grid = q.shape[2]
    r_d, r_h, r_w = (relative_position_table(t, grid, keys, span) for t in tables)
    rel_d = torch.einsum("bnxyzc,xkc->bnxyzk", q, r_d)
    rel_h = torch.einsum("bnxyzc,ykc->bnxyzk", q, r_h)
    rel_w = torch.einsum("bnxyzc,zkc->bnxyzk", q, r_w)
    return rel_d, rel_h, rel_w


def real_key_bias(rel: tuple[torch.Tensor, torch.Tensor, torch.Tensor], grid: int) -> torch.Tensor:
    """Sum the per-axis terms for the real keys: (B, heads, N, N) with N = grid³ (row-major d, h, w)."""
    rel_d, rel_h, rel_w = (r[..., :grid] for r in rel)
    b, n = rel_d.shape[:2]
    bias = rel_d[..., :, None, None] + rel_h[..., None, :, None] + rel_w[..., None, None, :]
    return bias.reshape(b, n, grid**3, grid**3)


def padded_key_log_mass(rel: tuple[torch.Tensor, torch.Tensor, torch.Tensor], grid: int) -> torch.Tensor:
    """log Σ over padded key positions of exp(relative bias): (B, heads, N, 1).

    The padded positions are the window cube minus the real cube, and the bias is a sum of
    per-axis terms, so Σ_pad = Π_axes Σ_window − Π_axes Σ_real, computed in log space.
    """
    log_window = sum(torch.logsumexp(r, dim=-1) for r in rel)
    log_real = sum(torch.logsumexp(r[..., :grid], dim=-1) for r in rel)
    assert isinstance(log_window, torch.Tensor) and isinstance(log_real, torch.Tensor)
    # log(e^W − e^R) = W + log(1 − e^(R−W)); R < W because the padded set is never empty here.
    log_mass = log_window + torch.log1p(-torch.exp(log_real - log_window))
    b, n = log_mass.shape[:2]
    return log_mass.reshape(b, n, -1, 1)


class Attention(nn.Module):
    """Multi-head attention with decomposed relative positions over a cubic token grid.

    ``span`` is the side of the attended cube: the token grid for global blocks, the window
    for windowed blocks. When the span exceeds the grid, upstream zero-pads the grid to the
    window; :meth:`forward` reproduces that exactly via one virtual key for the padding.
    """

    def __init__(self, dim: int, num_heads: int, span: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.span = span
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * span - 1, self.head_dim))
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * span - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * span - 1, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, grid, _, _, dim = x.shape
        n = grid**3
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        tables = (self.rel_pos_d, self.rel_pos_h, self.rel_pos_w)
        q_grid = q.reshape(b, self.num_heads, grid, grid, grid, self.head_dim)
        rel = axis_terms(q_grid, tables, self.span, keys=self.span)
        bias = real_key_bias(rel, grid)
        if self.span > grid:
            k, v, bias = self._add_padding_key(k, v, bias, padded_key_log_mass(rel, grid))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.permute(0, 2, 1, 3).reshape(b, grid, grid, grid, dim)
        return self.proj(out)

    def _add_padding_key(
        self, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, log_mass: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Append one key/value standing for every zero-padded token of the window.

        A padded token is zero after norm1, so its key and value are the qkv bias. With that
        key the attention adds scale·q·b_k itself; the bias column adds log Σ exp(rel-pos).
        """
        b = k.shape[0]
        if self.qkv.bias is None:
            pad_kv = torch.zeros(2, self.num_heads, self.head_dim, dtype=k.dtype, device=k.device)
        else:
            pad_kv = self.qkv.bias.reshape(3, self.num_heads, self.head_dim)[1:]
        pad_k = pad_kv[0][None, :, None, :].expand(b, -1, 1, -1)
        pad_v = pad_kv[1][None, :, None, :].expand(b, -1, 1, -1)
        return torch.cat([k, pad_k], dim=2), torch.cat([v, pad_v], dim=2), torch.cat([bias, log_mass], dim=3)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, span: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, span=span)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed3D(nn.Module):
    """Non-overlapping cubic patches → tokens, channels-last (B, G, G, G, C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)


class ImageEncoderViT3D(nn.Module):
    """(B, 1, S, S, S) z-normalised crop → (B, out_chans, G, G, G) image embedding."""

    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        out_chans: int,
        window_size: int,
        global_attn_indexes: tuple[int, ...],
    ) -> None:
        super().__init__()
        grid = img_size // patch_size
        self.img_size = img_size
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, grid, embed_dim))
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                span=grid if (i in global_attn_indexes or window_size == 0) else window_size,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv3d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm3d(out_chans),
            nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 4, 1, 2, 3))
