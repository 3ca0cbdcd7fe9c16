"""``rtinjury export-onnx`` as a user runs it: real process, real checkpoint, real ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from models.build import build_model
from models.checkpoint import save_checkpoint
from models.config import get_config
from tests.service.cli.runner import rtinjury


def test_exports_our_checkpoint_with_its_hash_and_parity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    checkpoint = tmp_path / "small.pt"
    digest = save_checkpoint(build_model("small"), checkpoint, {"note": "test"})
    out = tmp_path / "onnx"
    result = rtinjury("export-onnx", "--checkpoint", str(checkpoint), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["config"] == "small" and report["weights_sha256"] == digest
    assert report["encoder_max_abs_diff"] <= 1e-3 and report["decoder_max_abs_diff"] <= 1e-3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights_sha256"] == digest
    session = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    embedding = session.run(None, {"volume": np.zeros((1, 1, 128, 128, 128), np.float32)})[0]
    assert embedding.shape == (1, 192, 8, 8, 8)


def test_random_weights_are_labelled_as_such(tmp_path: Path) -> None:
    result = rtinjury("export-onnx", "--random-weights", "small", "--out", str(tmp_path / "o"), "--no-check")
    assert result.returncode == 0, result.stderr
    assert "random weights" in result.stdout and "not for patients" in result.stdout


def test_bad_checkpoint_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"\x00" * 100)
    result = rtinjury("export-onnx", "--checkpoint", str(bad), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert result.stderr.startswith("rtinjury: error: checkpoint") and "Traceback" not in result.stderr
    assert "not a PyTorch checkpoint" in result.stderr
    unknown = rtinjury("export-onnx", "--random-weights", "huge", "--out", str(tmp_path / "o"))
    assert unknown.returncode == 2 and "unknown model configuration 'huge'" in unknown.stderr
    assert not (tmp_path / "o" / "encoder.onnx").exists()


def test_upstream_file_reports_the_added_branches(tmp_path: Path) -> None:
    model = build_model(get_config("small").with_changes(box_prompt=False, text_dim=None))
    path = tmp_path / "upstream.pth"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 1}, path)
    result = rtinjury(
        "export-onnx",
        "--checkpoint",
        str(path),
        "--config",
        "small",
        "--out",
        str(tmp_path / "o"),
        "--no-check",
    )
    assert result.returncode == 0, result.stderr
    assert "freshly initialised" in result.stdout and "point_embeddings.2.weight" in result.stdout
