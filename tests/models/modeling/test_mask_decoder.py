"""Decoder forward against a plain re-statement of reference/sam_med3d.md §4.3."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from models.build import build_model
from models.modeling.network import Sam3D
from models.modeling.prompt_encoder import prompt_points
from models.modeling.transformer import Attention, TwoWayAttentionBlock
from tests.models.modeling.reference_encoder import randomise_


def _attention(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    def heads(x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, attn.num_heads, c // attn.num_heads).transpose(1, 2)

    qh, kh, vh = heads(attn.q_proj(q)), heads(attn.k_proj(k)), heads(attn.v_proj(v))
    weights = (qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5).softmax(-1)
    out = (weights @ vh).transpose(1, 2)
    return attn.out_proj(out.reshape(out.shape[0], out.shape[1], -1))


def _layer(layer: TwoWayAttentionBlock, queries, keys, query_pe, key_pe, first: bool):  # type: ignore[no-untyped-def]
    if first:
        queries = _attention(layer.self_attn, queries, queries, queries)  # replaced, no residual
    else:
        queries = queries + _attention(layer.self_attn, queries + query_pe, queries + query_pe, queries)
    queries = layer.norm1(queries)
    queries = layer.norm2(
        queries + _attention(layer.cross_attn_token_to_image, queries + query_pe, keys + key_pe, keys)
    )
    queries = layer.norm3(queries + layer.mlp.lin2(F.relu(layer.mlp.lin1(queries))))
    keys = layer.norm4(
        keys + _attention(layer.cross_attn_image_to_token, keys + key_pe, queries + query_pe, queries)
    )
    return queries, keys


def reference_decode(model: Sam3D, embedding, coords, labels, mask, text):  # type: ignore[no-untyped-def]
    pe_layer = model.prompt_encoder.pe_layer
    sparse = model.prompt_encoder.embed_labelled_points(coords, labels)
    if text is not None:
        sparse = torch.cat([sparse, model.prompt_encoder.text_adapter(text)], dim=1)
    dense = model.prompt_encoder.mask_downscaling(mask)
    decoder = model.mask_decoder
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight])[None]
    tokens = torch.cat([tokens, sparse], dim=1)
    image = (embedding + dense).flatten(2).transpose(1, 2)
    image_pe = pe_layer.dense(8)[None].flatten(2).transpose(1, 2)
    queries, keys = tokens, image
    for i, layer in enumerate(decoder.transformer.layers):
        queries, keys = _layer(layer, queries, keys, tokens, image_pe, first=i == 0)
    final = decoder.transformer.final_attn_token_to_image
    queries = decoder.transformer.norm_final_attn(
        queries + _attention(final, queries + tokens, keys + image_pe, keys)
    )
    upscaled = decoder.output_upscaling(keys.transpose(1, 2).reshape(1, -1, 8, 8, 8))
    hyper = decoder.output_hypernetworks_mlps[0](queries[:, 1])
    logits = torch.einsum("bc,bcdhw->bdhw", hyper, upscaled)[:, None]
    return logits, decoder.iou_prediction_head(queries[:, 0])[:, :1]


def test_decode_matches_reference_with_clicks_box_text_and_mask() -> None:
    torch.manual_seed(0)
    model = build_model("small").eval()
    randomise_(model, seed=1)
    embedding = torch.randn(1, 192, 8, 8, 8)
    clicks = (
        torch.tensor([[[30.0, 40.0, 50.0], [70.0, 72.0, 60.0], [10.0, 100.0, 90.0]]]),
        torch.tensor([[1, 0, 1]]),
    )
    box = torch.tensor([[[20.0, 25.0, 30.0], [90.0, 95.0, 99.0]]])
    coords, labels = prompt_points(clicks, box)
    mask = torch.randn(1, 1, 32, 32, 32)
    text = torch.randn(1, 384)
    with torch.no_grad():
        logits, iou = model.decode(embedding, coords, labels, mask, text)
        ref_logits, ref_iou = reference_decode(model, embedding, coords, labels, mask, text)
    assert logits.shape == (1, 1, 32, 32, 32) and iou.shape == (1, 1)
    assert (logits - ref_logits).abs().max().item() <= 1e-4
    assert (iou - ref_iou).abs().max().item() <= 1e-4


def test_prompts_change_the_mask() -> None:
    """A check that can fail: every prompt kind moves the logits."""
    torch.manual_seed(1)
    model = build_model("small").eval()
    randomise_(model, seed=2)
    embedding = torch.randn(1, 192, 8, 8, 8)
    zero_mask = torch.zeros(1, 1, 32, 32, 32)
    coords, labels = prompt_points(None, torch.tensor([[[20.0, 20.0, 20.0], [60.0, 60.0, 60.0]]]))
    text = torch.randn(1, 384)
    with torch.no_grad():
        base, _ = model.decode(embedding, coords, labels, zero_mask, text)
        other_text, _ = model.decode(embedding, coords, labels, zero_mask, torch.randn(1, 384))
        more = prompt_points(
            (torch.tensor([[[40.0, 40.0, 40.0]]]), torch.tensor([[1]])), coords.reshape(1, 2, 3)
        )
        clicked, _ = model.decode(embedding, more[0], more[1], zero_mask, text)
        masked, _ = model.decode(embedding, coords, labels, torch.randn(1, 1, 32, 32, 32), text)
    for changed in (other_text, clicked, masked):
        assert (changed - base).abs().max().item() > 1e-3


def test_one_embedding_serves_several_prompt_sets() -> None:
    torch.manual_seed(2)
    model = build_model("small").eval()
    embedding = torch.randn(1, 192, 8, 8, 8)
    coords = torch.tensor([[[10.0, 20.0, 30.0], [0.0, 0.0, 0.0]], [[90.0, 80.0, 70.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, -1], [0, -1]])
    mask = torch.zeros(2, 1, 32, 32, 32)
    text = torch.randn(2, 384)
    with torch.no_grad():
        both, _ = model.decode(embedding, coords, labels, mask, text)
        second, _ = model.decode(embedding, coords[1:], labels[1:], mask[1:], text[1:])
    assert both.shape == (2, 1, 32, 32, 32)
    assert (both[1:] - second).abs().max().item() <= 1e-5
