"""Loading upstream SAM-Med3D files and our own checkpoints."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest
import torch

from models.build import build_model
from models.checkpoint import (
    ADDED_BRANCH_PREFIXES,
    file_sha256,
    load_checkpoint,
    load_for_finetuning,
    save_checkpoint,
)
from models.config import get_config
from models.errors import CheckpointError
from tests.conftest import SHARED_DATA

TSV = SHARED_DATA.parent / "reference" / "sam_med3d_state_dict.tsv"


def _tsv_layout() -> list[tuple[str, tuple[int, ...]]]:
    with open(TSV, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [(row["key"], tuple(int(x) for x in row["shape"].split(","))) for row in rows]


def _upstream_file(path: Path, *, box_keys: bool, seed: int = 0, **extra: object) -> dict[str, torch.Tensor]:
    """A file in upstream's layout with exactly the tsv's keys and shapes, random values."""
    generator = torch.Generator().manual_seed(seed)
    state = {key: torch.randn(shape, generator=generator) * 0.02 for key, shape in _tsv_layout()}
    if box_keys:
        state["prompt_encoder.point_embeddings.2.weight"] = torch.randn(1, 384, generator=generator)
        state["prompt_encoder.point_embeddings.3.weight"] = torch.randn(1, 384, generator=generator)
    torch.save({"epoch": 7, "model_state_dict": state, **extra}, path)
    return state


@pytest.fixture(scope="module")
def upstream_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "sam_med3d_turbo.pth"
    _upstream_file(path, box_keys=False, args=argparse.Namespace(lr=8e-4, model_type="vit_b_ori"))
    return path


def test_tsv_layout_is_the_upstream_networks_state_dict() -> None:
    layout = _tsv_layout()
    assert len(layout) == 324
    model = build_model("sam-med3d-upstream")
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == layout
    assert sum(v.numel() for v in model.state_dict().values()) == 100_509_616


def test_upstream_file_loads_strictly_into_the_upstream_layout(upstream_path: Path) -> None:
    loaded = load_checkpoint(upstream_path, config=get_config("sam-med3d-upstream"))
    assert loaded.source == "upstream"
    assert loaded.initialised_keys == []
    assert loaded.metadata == {"epoch": 7}
    assert loaded.weights_sha256 == file_sha256(upstream_path)
    saved = torch.load(upstream_path, weights_only=False)["model_state_dict"]
    for key, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, saved[key]), key
    with torch.no_grad():
        embedding = loaded.model.embed(torch.randn(1, 1, 128, 128, 128))
        coords, labels = torch.tensor([[[64.0, 64.0, 64.0], [0, 0, 0]]]), torch.tensor([[1, -1]])
        logits, _ = loaded.model.decode(embedding, coords, labels, torch.zeros(1, 1, 32, 32, 32))
    assert logits.shape == (1, 1, 32, 32, 32) and torch.isfinite(logits).all()


def test_upstream_file_into_the_full_network_reports_the_added_branches(upstream_path: Path) -> None:
    loaded = load_checkpoint(upstream_path)
    assert loaded.config.name == "sam-med3d"
    assert loaded.initialised_keys
    assert all(k.startswith(ADDED_BRANCH_PREFIXES) for k in loaded.initialised_keys)
    assert "prompt_encoder.point_embeddings.2.weight" in loaded.initialised_keys
    assert "prompt_encoder.text_adapter.fc1.weight" in loaded.initialised_keys


def test_box_variant_fills_the_corner_embeddings(tmp_path: Path) -> None:
    path = tmp_path / "sam_med3d_turbo_bbox_init.pth"
    state = _upstream_file(path, box_keys=True, seed=3)
    loaded = load_checkpoint(path)
    assert not any(k.startswith("prompt_encoder.point_embeddings") for k in loaded.initialised_keys)
    got = loaded.model.prompt_encoder.point_embeddings[3].weight
    assert torch.equal(got.detach(), state["prompt_encoder.point_embeddings.3.weight"])


def test_wrong_shape_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.pth"
    state = {k: torch.zeros(s) for k, s in _tsv_layout()}
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 256)
    torch.save({"model_state_dict": state}, path)
    with pytest.raises(
        CheckpointError, match=r"mask_decoder\.iou_token\.weight has shape \(1, 256\).*\(1, 384\)"
    ):
        load_checkpoint(path)


def test_unexpected_and_missing_keys_are_named(tmp_path: Path) -> None:
    state = {k: torch.zeros(s) for k, s in _tsv_layout()}
    extra = tmp_path / "extra.pth"
    torch.save({"model_state_dict": {**state, "mask_decoder.extra_head.weight": torch.zeros(2)}}, extra)
    with pytest.raises(CheckpointError, match=r"1 keys .* does not: mask_decoder\.extra_head\.weight"):
        load_checkpoint(extra)
    missing = tmp_path / "missing.pth"
    del state["image_encoder.blocks.4.attn.rel_pos_h"]
    torch.save({"model_state_dict": state}, missing)
    with pytest.raises(CheckpointError, match=r"lacks 1 keys: image_encoder\.blocks\.4\.attn\.rel_pos_h"):
        load_checkpoint(missing)


def test_ddp_prefix_and_plain_state_dict_are_accepted(tmp_path: Path) -> None:
    model = build_model("small")
    path = tmp_path / "plain.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    loaded = load_checkpoint(path, config=get_config("small"))
    assert loaded.initialised_keys == []
    assert torch.equal(loaded.model.mask_decoder.iou_token.weight, model.mask_decoder.iou_token.weight)


def test_own_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_model(get_config("small").with_changes(num_text_tokens=2))
    path = tmp_path / "run" / "model.pt"
    digest = save_checkpoint(
        model, path, {"epoch": 3, "metrics": {"dice": 0.71}, "split": {"val": ["orn-000"]}}
    )
    loaded = load_checkpoint(path)
    assert loaded.source == "rtinjury"
    assert loaded.config == model.config
    assert loaded.metadata["metrics"] == {"dice": 0.71}
    assert loaded.weights_sha256 == digest
    assert loaded.model_id == f"small@{digest[:12]}"
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], tensor)
    assert not list(path.parent.glob(".*.tmp"))


def test_own_checkpoint_is_strict(tmp_path: Path) -> None:
    model = build_model("small")
    path = tmp_path / "model.pt"
    save_checkpoint(model, path)
    payload = torch.load(path, weights_only=True)
    del payload["model_state_dict"]["prompt_encoder.text_adapter.fc1.bias"]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"text_adapter\.fc1\.bias"):
        load_checkpoint(path)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)


class _Unsafe:
    """Stands for any arbitrary object a pickle could smuggle in."""


def test_arbitrary_pickles_need_explicit_trust(tmp_path: Path) -> None:
    model = build_model("small")
    path = tmp_path / "pickled.pth"
    torch.save({"model_state_dict": model.state_dict(), "extra": _Unsafe()}, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint(path, config=get_config("small"))
    loaded = load_checkpoint(path, config=get_config("small"), trust_pickle=True)
    assert loaded.source == "upstream"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"", "not a PyTorch checkpoint"),
        (b"not a checkpoint", "not a PyTorch checkpoint"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "weights.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(build_model("small"), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.pt"):
        load_checkpoint(path)


def test_finetuning_freezes_only_the_image_encoder(upstream_path: Path) -> None:
    loaded = load_for_finetuning(upstream_path)
    model = loaded.model
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    assert all(p.requires_grad for p in model.prompt_encoder.parameters())
    assert all(p.requires_grad for p in model.mask_decoder.parameters())
