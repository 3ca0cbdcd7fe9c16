"""Shipping in half precision: weights rounded to float16 once, then stored at half the size, exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from models.build import build_model
from models.checkpoint import load_checkpoint, round_to_half, save_checkpoint
from models.export_onnx import export_onnx
from models.loading import open_model


def test_a_half_checkpoint_restores_the_rounded_network_exactly(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = round_to_half(build_model("tiny"))
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    save_checkpoint(model, full)
    save_checkpoint(model, half, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    restored = load_checkpoint(half).model.state_dict()
    for key, value in model.state_dict().items():
        assert restored[key].dtype == value.dtype and torch.equal(restored[key], value), key


def test_rounding_changes_weights_by_float16_precision_only() -> None:
    torch.manual_seed(4)
    model = build_model("tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    round_to_half(model)
    changed = 0
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, before[key], rtol=1e-3, atol=1e-7), key
            changed += int(not torch.equal(value, before[key]))
    assert changed > 0


def test_half_weight_onnx_export_is_half_the_size_and_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(5)
    model = round_to_half(build_model("tiny"))
    plain = export_onnx(model, tmp_path / "plain", check=False)
    half = export_onnx(model, tmp_path / "half", half_weights=True)
    plain_size = plain.encoder_path.stat().st_size + plain.decoder_path.stat().st_size
    half_size = half.encoder_path.stat().st_size + half.decoder_path.stat().st_size
    # The tiny network has many small tensors that stay float32; a real one comes closer to 0.5.
    assert half_size < 0.7 * plain_size
    assert half.encoder_max_abs_diff is not None and half.encoder_max_abs_diff <= 1e-4
    assert half.decoder_max_abs_diff is not None and half.decoder_max_abs_diff <= 1e-4
    graph = onnx.load(str(half.encoder_path)).graph
    stored = {i.data_type for i in graph.initializer if np.prod(i.dims) >= 1024}
    assert stored == {onnx.TensorProto.FLOAT16}
    # The export runs through the loader like any other model.
    loaded = open_model(tmp_path / "half")
    assert loaded.config.name == "tiny" and loaded.metadata["stored_weights"] == "float16"


def test_shipping_writes_one_rounded_network_in_two_formats(tmp_path: Path) -> None:
    from models.shipping import ship_model

    torch.manual_seed(6)
    trained = tmp_path / "trained.pt"
    save_checkpoint(build_model("tiny"), trained, {"variant": "base-t-b-c-l"})
    shipped = ship_model(trained, tmp_path / "demo.pt", tmp_path / "demo-onnx")
    checkpoint = load_checkpoint(shipped.checkpoint)
    assert checkpoint.metadata["variant"] == "base-t-b-c-l"
    assert checkpoint.metadata["trained_weights_sha256"] == load_checkpoint(trained).weights_sha256
    assert shipped.onnx.decoder_max_abs_diff is not None and shipped.onnx.decoder_max_abs_diff <= 1e-4
    exported = open_model(tmp_path / "demo-onnx")
    assert exported.weights_sha256 == shipped.weights_sha256 == checkpoint.weights_sha256
