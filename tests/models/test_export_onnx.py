"""ONNX export: real exports of the ``small`` network, checked in onnxruntime against PyTorch."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models.build import build_model
from models.config import ModelConfig, get_config
from models.errors import ExportError
from models.export_onnx import PARITY_TOLERANCE, OnnxExport, export_onnx
from models.modeling.network import Sam3D
from tests.models.conftest import PLAIN

WEIGHTS_SHA = "ab" * 32


def _model(config: ModelConfig | str, seed: int) -> Sam3D:
    torch.manual_seed(seed)
    return build_model(config).eval()


@pytest.fixture(scope="module")
def small_export(small: Sam3D, tmp_path_factory: pytest.TempPathFactory) -> OnnxExport:
    return export_onnx(small, tmp_path_factory.mktemp("small-onnx"), weights_sha256=WEIGHTS_SHA)


@pytest.fixture(scope="module")
def plain() -> Sam3D:
    return _model(PLAIN, seed=1)


@pytest.fixture(scope="module")
def plain_export(plain: Sam3D, tmp_path_factory: pytest.TempPathFactory) -> OnnxExport:
    return export_onnx(plain, tmp_path_factory.mktemp("plain-onnx"))


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def small_sessions(small_export: OnnxExport) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    return _session(small_export.encoder_path), _session(small_export.decoder_path)


def _manifest(export: OnnxExport) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(export.manifest_path.read_text())
    return data


# -- files and manifest --------------------------------------------------------------------------


def test_export_writes_three_checked_files_and_no_leftovers(small_export: OnnxExport) -> None:
    out_dir = small_export.manifest_path.parent
    assert sorted(p.name for p in out_dir.iterdir()) == ["decoder.onnx", "encoder.onnx", "manifest.json"]
    for path in (small_export.encoder_path, small_export.decoder_path):
        onnx.checker.check_model(str(path), full_check=True)
        assert path.stat().st_mode & 0o777 == 0o644


def test_manifest_describes_the_export(small: Sam3D, small_export: OnnxExport) -> None:
    manifest = _manifest(small_export)
    assert manifest["format"] == "rtinjury-sam3d-onnx"
    assert manifest["format_version"] == 1
    assert ModelConfig.from_dict(manifest["config"]) == small.config
    assert manifest["opset"] == 17
    assert manifest["weights_sha256"] == WEIGHTS_SHA
    assert manifest["versions"] == {"torch": torch.__version__, "onnx": onnx.__version__}
    parity = manifest["parity"]
    assert parity["encoder_max_abs_diff"] == small_export.encoder_max_abs_diff
    assert parity["decoder_max_abs_diff"] == small_export.decoder_max_abs_diff
    assert parity["tolerance"] == PARITY_TOLERANCE
    for key, path in (("encoder", small_export.encoder_path), ("decoder", small_export.decoder_path)):
        graph = manifest["graphs"][key]
        assert graph["file"] == path.name
        assert graph["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    encoder = manifest["graphs"]["encoder"]
    assert encoder["inputs"] == [{"name": "volume", "shape": ["batch", 1, 128, 128, 128], "dtype": "float32"}]
    assert encoder["outputs"][0]["shape"] == ["batch", 192, 8, 8, 8]
    decoder = manifest["graphs"]["decoder"]
    assert [(t["name"], t["shape"], t["dtype"]) for t in decoder["inputs"]] == [
        ("image_embeddings", [1, 192, 8, 8, 8], "float32"),
        ("point_coords", [1, "num_points", 3], "float32"),
        ("point_labels", [1, "num_points"], "int64"),
        ("mask_input", [1, 1, 32, 32, 32], "float32"),
        ("text_features", [1, 384], "float32"),
    ]
    assert [(t["name"], t["shape"]) for t in decoder["outputs"]] == [
        ("low_res_logits", [1, 1, 32, 32, 32]),
        ("iou_predictions", [1, 1]),
    ]


def test_graph_signatures_as_onnxruntime_sees_them(small_sessions: tuple[Any, Any]) -> None:
    encoder, decoder = small_sessions
    assert [(i.name, i.shape) for i in encoder.get_inputs()] == [("volume", ["batch", 1, 128, 128, 128])]
    assert [(o.name, o.shape) for o in encoder.get_outputs()] == [
        ("image_embeddings", ["batch", 192, 8, 8, 8])
    ]
    inputs = {i.name: (i.shape, i.type) for i in decoder.get_inputs()}
    assert inputs["point_coords"] == ([1, "num_points", 3], "tensor(float)")
    assert inputs["point_labels"] == ([1, "num_points"], "tensor(int64)")
    assert inputs["text_features"] == ([1, 384], "tensor(float)")
    outputs = [(o.name, o.shape) for o in decoder.get_outputs()]
    assert outputs == [("low_res_logits", [1, 1, 32, 32, 32]), ("iou_predictions", [1, 1])]


def test_export_parity_figures_are_within_tolerance(small_export: OnnxExport) -> None:
    assert small_export.encoder_max_abs_diff is not None
    assert small_export.decoder_max_abs_diff is not None
    assert 0 <= small_export.encoder_max_abs_diff <= PARITY_TOLERANCE
    assert 0 <= small_export.decoder_max_abs_diff <= PARITY_TOLERANCE


# -- parity, measured here with other inputs than the export's own check -------------------------


@pytest.mark.parametrize("batch", [1, 3])
def test_encoder_matches_torch_for_any_batch(
    small: Sam3D, small_sessions: tuple[Any, Any], batch: int
) -> None:
    volume = np.random.default_rng(10 + batch).standard_normal((batch, 1, 128, 128, 128), dtype=np.float32)
    (got,) = small_sessions[0].run(None, {"volume": volume})
    with torch.inference_mode():
        expected = small.embed(torch.from_numpy(volume)).numpy()
    assert got.shape == (batch, 192, 8, 8, 8)
    assert np.max(np.abs(got - expected)) <= PARITY_TOLERANCE


def _decoder_feed(model: Sam3D, labels: list[int], seed: int, text: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cfg = model.config
    with torch.inference_mode():
        volume = torch.from_numpy(rng.standard_normal((1, 1, 128, 128, 128), dtype=np.float32))
        embedding = model.embed(volume).numpy()
    feed = {
        "image_embeddings": embedding,
        "point_coords": rng.uniform(0, 127, (1, len(labels), 3)).astype(np.float32),
        "point_labels": np.asarray([labels], dtype=np.int64),
        "mask_input": rng.standard_normal((1, 1, 32, 32, 32), dtype=np.float32) * 3,
    }
    if text:
        assert cfg.text_dim is not None
        feed["text_features"] = rng.standard_normal((1, cfg.text_dim), dtype=np.float32)
    return feed


def _decoder_diff(model: Sam3D, session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> float:
    got = session.run(None, feed)
    with torch.inference_mode():
        tensors = [torch.from_numpy(a) for a in feed.values()]
        expected = model.decode(*tensors)
    assert [g.shape for g in got] == [(1, 1, 32, 32, 32), (1, 1)]
    return max(float(np.max(np.abs(g - e.numpy()))) for g, e in zip(got, expected, strict=True))


# One session serves all point counts: N is a dynamic axis.
BOXED_LAYOUTS = {
    "0 clicks, box only": [2, 3],
    "1 click": [1, -1],
    "1 click + box": [1, 2, 3],
    "4 clicks + box": [1, 0, 1, 0, 2, 3],
}
PLAIN_LAYOUTS = {"0 clicks, padding only": [-1], "1 click": [1, -1], "4 clicks": [1, 0, 1, 0, -1]}


@pytest.mark.parametrize("layout", BOXED_LAYOUTS)
def test_decoder_with_text_matches_torch(small: Sam3D, small_sessions: tuple[Any, Any], layout: str) -> None:
    feed = _decoder_feed(small, BOXED_LAYOUTS[layout], seed=20, text=True)
    assert _decoder_diff(small, small_sessions[1], feed) <= PARITY_TOLERANCE


@pytest.mark.parametrize("layout", PLAIN_LAYOUTS)
def test_decoder_without_text_matches_torch(plain: Sam3D, plain_export: OnnxExport, layout: str) -> None:
    feed = _decoder_feed(plain, PLAIN_LAYOUTS[layout], seed=30, text=False)
    assert _decoder_diff(plain, _session(plain_export.decoder_path), feed) <= PARITY_TOLERANCE


def test_network_without_text_branch_exports_a_graph_without_text_input(plain_export: OnnxExport) -> None:
    names = [i.name for i in _session(plain_export.decoder_path).get_inputs()]
    assert names == ["image_embeddings", "point_coords", "point_labels", "mask_input"]
    manifest = _manifest(plain_export)
    assert [t["name"] for t in manifest["graphs"]["decoder"]["inputs"]] == names
    assert ModelConfig.from_dict(manifest["config"]) == PLAIN
    assert manifest["weights_sha256"] is None
    assert plain_export.decoder_max_abs_diff is not None


def test_check_false_skips_parity(plain: Sam3D, tmp_path: Path) -> None:
    result = export_onnx(plain, tmp_path / "unchecked", check=False)
    assert result.encoder_max_abs_diff is None and result.decoder_max_abs_diff is None
    assert _manifest(result)["parity"] is None
    assert result.decoder_path.is_file()


# -- failures ------------------------------------------------------------------------------------


def test_out_dir_that_cannot_be_created_is_an_export_error(plain: Sam3D, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ExportError, match="cannot create the ONNX export directory") as info:
        export_onnx(plain, blocker / "out")
    assert str(blocker / "out") in str(info.value)
    assert info.value.code == "export-failed"


def test_unwritable_out_dir_is_an_export_error(
    plain: Sam3D, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Failure injection: the disk refuses the write (full, read-only mount, permissions)."""
    out_dir = tmp_path / "ro"
    out_dir.mkdir()

    def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(ExportError, match="cannot write into the ONNX export directory") as info:
        export_onnx(plain, out_dir)
    assert "No space left" in str(info.value)
    assert list(out_dir.iterdir()) == []


def _copy_export(export: OnnxExport, dest: Path) -> dict[str, bytes]:
    shutil.copytree(export.manifest_path.parent, dest)
    return {p.name: p.read_bytes() for p in dest.iterdir()}


def test_exporter_exception_is_an_export_error_and_keeps_the_previous_export(
    plain: Sam3D, plain_export: OnnxExport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out_dir = tmp_path / "previous"
    before = _copy_export(plain_export, out_dir)

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("injected failure\n  File 'x.py', line 1, in <module>\n    boom()")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(ExportError) as info:
        export_onnx(plain, out_dir)
    message = str(info.value)
    assert message == "ONNX export of the encoder graph failed: RuntimeError: injected failure"
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before


def test_decoder_failure_after_encoder_export_leaves_no_partial_export(
    plain: Sam3D, plain_export: OnnxExport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out_dir = tmp_path / "previous"
    before = _copy_export(plain_export, out_dir)
    real_export = torch.onnx.export

    def fail_on_decoder(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if "point_coords" in kwargs.get("input_names", []):
            raise torch.onnx.errors.OnnxExporterError("unsupported operator")
        return real_export(module, *args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", fail_on_decoder)
    with pytest.raises(ExportError, match="decoder graph failed: OnnxExporterError: unsupported operator"):
        export_onnx(_model(PLAIN, seed=5), out_dir)
    # The new encoder never replaced the old one: the directory is the previous, complete export.
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before


def test_parity_failure_names_graph_and_difference(
    plain: Sam3D, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("models.export_onnx.PARITY_TOLERANCE", -1.0)
    with pytest.raises(ExportError, match=r"exported encoder graph disagrees .*max abs difference"):
        export_onnx(plain, tmp_path / "strict")
    assert not (tmp_path / "strict" / "manifest.json").exists()
    assert list((tmp_path / "strict").iterdir()) == []


# -- the full network ----------------------------------------------------------------------------


@pytest.mark.slow
def test_full_sam_med3d_export_parity(tmp_path: Path) -> None:
    model = _model("sam-med3d", seed=0)
    result = export_onnx(model, tmp_path / "full")
    assert result.encoder_max_abs_diff is not None and result.decoder_max_abs_diff is not None
    assert result.encoder_max_abs_diff <= PARITY_TOLERANCE
    assert result.decoder_max_abs_diff <= PARITY_TOLERANCE
    encoder_mb = result.encoder_path.stat().st_size / 2**20
    assert 300 < encoder_mb < 500  # ~90 M float32 parameters, inline (no external data file)
    manifest = _manifest(result)
    assert ModelConfig.from_dict(manifest["config"]) == get_config("sam-med3d")
