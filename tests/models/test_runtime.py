"""Inference backends: PyTorch eager and onnxruntime agree, and a broken export is a clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.build import build_model
from models.config import get_config
from models.errors import ModelError, PromptInputError
from models.export_onnx import export_onnx
from models.modeling.network import Sam3D
from models.runtime import InferenceBackend, OnnxBackend, TorchBackend, default_providers, open_backend
from tests.models.conftest import PLAIN

TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def export_dir(small: Sam3D, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Parity of the export itself is test_export_onnx's job; here the backends are compared.
    out_dir = tmp_path_factory.mktemp("small-onnx")
    export_onnx(small, out_dir, check=False)
    return out_dir


@pytest.fixture(scope="module")
def torch_backend(small: Sam3D) -> TorchBackend:
    return TorchBackend(small, device="cpu")


@pytest.fixture(scope="module")
def onnx_backend(export_dir: Path) -> OnnxBackend:
    return OnnxBackend(export_dir, threads=2)


def _volumes(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 1, 128, 128, 128), dtype=np.float32)


def _prompts(labels: list[list[int]], seed: int, text: bool = True) -> dict[str, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    b, n = len(labels), len(labels[0])
    return {
        "point_coords": rng.uniform(0, 127, (b, n, 3)).astype(np.float32),
        "point_labels": np.asarray(labels, dtype=np.int64),
        "mask_input": rng.standard_normal((b, 1, 32, 32, 32), dtype=np.float32),
        "text_features": rng.standard_normal((b, 384), dtype=np.float32) if text else None,
    }


def _decode(
    backend: InferenceBackend, embedding: np.ndarray, prompts: dict[str, np.ndarray | None]
) -> tuple[np.ndarray, np.ndarray]:
    coords, labels, mask = (prompts[k] for k in ("point_coords", "point_labels", "mask_input"))
    assert coords is not None and labels is not None and mask is not None
    return backend.decode(embedding, coords, labels, mask, prompts["text_features"])


def test_backends_describe_themselves(torch_backend: TorchBackend, onnx_backend: OnnxBackend) -> None:
    assert (torch_backend.name, torch_backend.device) == ("torch", "cpu")
    # No GPU build of onnxruntime here: the default providers come down to the CPU one.
    assert default_providers() == ["CPUExecutionProvider"]
    assert (onnx_backend.name, onnx_backend.device) == ("onnxruntime", "CPUExecutionProvider")
    assert onnx_backend.config == torch_backend.config == get_config("small")
    assert onnx_backend.needs_text_features


def test_torch_backend_defaults_to_cpu_without_cuda(small: Sam3D) -> None:
    backend = TorchBackend(small)
    assert backend.device == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("batch", [1, 2])
def test_embed_agrees(torch_backend: TorchBackend, onnx_backend: OnnxBackend, batch: int) -> None:
    volumes = _volumes(batch, seed=batch)
    ours, theirs = torch_backend.embed(volumes), onnx_backend.embed(volumes)
    for out in (ours, theirs):
        assert out.shape == (batch, 192, 8, 8, 8)
        assert out.dtype == np.float32 and out.flags.c_contiguous
    assert np.max(np.abs(ours - theirs)) <= TOLERANCE


LAYOUTS = {
    "box only": [[2, 3]],
    "1 click": [[1, -1]],
    "3 clicks + box": [[1, 0, 1, 2, 3]],
    "2 prompt sets": [[1, 0, -1], [1, 2, 3]],
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_decode_agrees(torch_backend: TorchBackend, onnx_backend: OnnxBackend, layout: str) -> None:
    embedding = torch_backend.embed(_volumes(1, seed=7))
    prompts = _prompts(LAYOUTS[layout], seed=8)
    batch = len(LAYOUTS[layout])
    ours = _decode(torch_backend, embedding, prompts)
    theirs = _decode(onnx_backend, embedding, prompts)
    for got, shape in zip(theirs, [(batch, 1, 32, 32, 32), (batch, 1)], strict=True):
        assert got.shape == shape and got.dtype == np.float32 and got.flags.c_contiguous
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        assert np.max(np.abs(a - b)) <= TOLERANCE


def test_torch_backend_threads_are_restored(small: Sam3D) -> None:
    backend = TorchBackend(small, device="cpu", threads=1)
    before = torch.get_num_threads()
    backend.embed(_volumes(1, seed=3))
    assert torch.get_num_threads() == before


def test_open_backend(small: Sam3D, export_dir: Path) -> None:
    backends: list[InferenceBackend] = [
        open_backend("torch", small, device="cpu"),
        open_backend("onnxruntime", export_dir, device="cpu"),
    ]
    assert [b.name for b in backends] == ["torch", "onnxruntime"]
    with pytest.raises(ModelError, match="export directory"):
        open_backend("onnxruntime", small)
    with pytest.raises(ModelError, match="unknown onnxruntime device"):
        open_backend("onnxruntime", export_dir, device="tpu")


# -- prompt errors -------------------------------------------------------------------------------


def test_text_graph_without_text_features_is_a_clear_error(
    torch_backend: TorchBackend, onnx_backend: OnnxBackend
) -> None:
    embedding = torch_backend.embed(_volumes(1, seed=4))
    prompts = _prompts([[1, -1]], seed=5, text=False)
    with pytest.raises(PromptInputError, match=r"needs text features \(shape \(B, 384\)\)"):
        _decode(onnx_backend, embedding, prompts)


def test_text_features_for_a_network_without_text_branch_are_refused() -> None:
    torch.manual_seed(0)
    backend = TorchBackend(build_model(PLAIN), device="cpu")
    embedding = backend.embed(_volumes(1, seed=4))
    with pytest.raises(PromptInputError, match="no text branch"):
        _decode(backend, embedding, _prompts([[1, -1]], seed=5))


@pytest.mark.parametrize(
    ("field", "bad", "message"),
    [
        ("point_coords", np.zeros((1, 2, 2), np.float32), r"point_coords must have shape \(B, N, 3\)"),
        ("point_labels", np.zeros((1, 3), np.int64), r"point_labels must have shape \(1, 2\)"),
        ("mask_input", np.zeros((1, 1, 16, 16, 16), np.float32), r"mask_input must have shape \(1, 1, 32"),
        ("text_features", np.zeros((1, 12), np.float32), r"text_features must have shape \(1, 384\)"),
    ],
)
def test_misfit_prompts_are_the_same_error_on_both_backends(
    torch_backend: TorchBackend, onnx_backend: OnnxBackend, field: str, bad: np.ndarray, message: str
) -> None:
    embedding = np.zeros((1, 192, 8, 8, 8), np.float32)
    prompts: dict[str, np.ndarray | None] = {**_prompts([[1, -1]], seed=6), field: bad}
    for backend in (torch_backend, onnx_backend):
        with pytest.raises(PromptInputError, match=message):
            _decode(backend, embedding, prompts)


def test_misfit_volume_is_a_model_error(torch_backend: TorchBackend, onnx_backend: OnnxBackend) -> None:
    for backend in (torch_backend, onnx_backend):
        with pytest.raises(ModelError, match=r"crops must have shape \(B, 1, 128, 128, 128\)"):
            backend.embed(np.zeros((1, 1, 64, 64, 64), np.float32))


# -- broken export directories -------------------------------------------------------------------


def _copy(export_dir: Path, dest: Path, skip: str | None = None) -> Path:
    shutil.copytree(export_dir, dest, ignore=None if skip is None else shutil.ignore_patterns(skip))
    return dest


def test_directory_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="missing") as info:
        OnnxBackend(tmp_path)
    assert str(tmp_path / "manifest.json") in str(info.value)
    assert info.value.code == "invalid-onnx-export"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"format": "rtinjury-sam3d-onnx", "format_ver', "unreadable ONNX export manifest"),
        ("[1, 2, 3]", "not an rtinjury-sam3d-onnx manifest"),
        ('{"format": "rtinjury-sam3d-onnx", "format_version": 99}', "format version 99 is not supported"),
        ('{"format": "rtinjury-sam3d-onnx", "format_version": 1}', "no model configuration"),
        (
            '{"format": "rtinjury-sam3d-onnx", "format_version": 1, "config": {"depth": 3}}',
            "invalid model configuration",
        ),
    ],
)
def test_corrupt_manifest(export_dir: Path, tmp_path: Path, content: str, message: str) -> None:
    broken = _copy(export_dir, tmp_path / "broken")
    (broken / "manifest.json").write_text(content)
    with pytest.raises(ModelError, match=message) as info:
        OnnxBackend(broken)
    assert str(broken / "manifest.json") in str(info.value)


def test_missing_decoder_graph(export_dir: Path, tmp_path: Path) -> None:
    broken = _copy(export_dir, tmp_path / "broken", skip="decoder.onnx")
    with pytest.raises(ModelError, match="missing; the ONNX export is incomplete") as info:
        OnnxBackend(broken)
    assert str(broken / "decoder.onnx") in str(info.value)


def test_corrupt_decoder_graph(export_dir: Path, tmp_path: Path) -> None:
    broken = _copy(export_dir, tmp_path / "broken")
    data = (broken / "decoder.onnx").read_bytes()
    (broken / "decoder.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="onnxruntime cannot load it") as info:
        OnnxBackend(broken)
    assert str(broken / "decoder.onnx") in str(info.value)


def test_manifest_round_trip_survives_json(export_dir: Path) -> None:
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert OnnxBackend(export_dir).manifest == manifest


def test_torch_backend_on_cuda_runs_or_says_why_not(small: Sam3D) -> None:
    if torch.cuda.is_available():  # a GPU worker
        assert TorchBackend(build_model("small"), device="cuda").device.startswith("cuda")
    else:
        with pytest.raises(ModelError, match="cannot run the network on device 'cuda'"):
            TorchBackend(small, device="cuda")
    with pytest.raises(ModelError, match="cannot run the network on device 'gpu0'"):
        TorchBackend(small, device="gpu0")
