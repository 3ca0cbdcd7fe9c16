"""ONNX export of a :class:`Sam3D` as two graphs, the split 2-D SAM uses (reference/sam_med3d.md §7).

``encoder.onnx`` is the heavy ViT, run once per crop (dynamic batch). ``decoder.onnx`` is prompt
encoder + mask decoder, run once per interaction on a cached embedding, with the number of
prompt points as a dynamic axis so one session serves any number of clicks. ``manifest.json``
describes both (config, shapes, versions, parity) and is written last: a directory whose
manifest exists holds a complete, checked export.

Every file is written under a temporary name in the output directory and renamed into place,
so an interrupted export never leaves a truncated file under a final name, and a failed export
leaves a previous export in the same directory as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from models.build import build_model
from models.config import ModelConfig
from models.errors import ExportError
from models.files import FILE_MODE, write_atomically
from models.modeling.network import Sam3D
from models.modeling.prompt_encoder import (
    BOX_MAX_LABEL,
    BOX_MIN_LABEL,
    NEGATIVE_LABEL,
    PAD_LABEL,
    POSITIVE_LABEL,
)
from models.runtime import DECODER_FILE, ENCODER_FILE, FORMAT_NAME, FORMAT_VERSION, MANIFEST_FILE

#: Largest accepted |onnxruntime − PyTorch| on any output element.
PARITY_TOLERANCE = 1e-3
#: Batch of the encoder parity run: 2, so a batch size baked into the graph shows up.
_PARITY_BATCH = 2

Shape = list[int | str]


@dataclass(frozen=True)
class OnnxExport:
    encoder_path: Path
    decoder_path: Path
    manifest_path: Path
    #: Max |onnxruntime − PyTorch| over the parity runs; None when exported with check=False.
    encoder_max_abs_diff: float | None
    decoder_max_abs_diff: float | None


@dataclass(frozen=True)
class _TensorSpec:
    name: str
    shape: Shape
    dtype: str  # numpy dtype name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class _GraphSpec:
    file: str
    inputs: tuple[_TensorSpec, ...]
    outputs: tuple[_TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            for t in (*self.inputs, *self.outputs)
            if any(isinstance(d, str) for d in t.shape)
        }


def encoder_spec(config: ModelConfig) -> _GraphSpec:
    s, g, c = config.img_size, config.grid_size, config.prompt_embed_dim
    return _GraphSpec(
        ENCODER_FILE,
        inputs=(_TensorSpec("volume", ["batch", config.in_chans, s, s, s], "float32"),),
        outputs=(_TensorSpec("image_embeddings", ["batch", c, g, g, g], "float32"),),
    )


def decoder_spec(config: ModelConfig, has_text: bool) -> _GraphSpec:
    g, c, low = config.grid_size, config.prompt_embed_dim, config.low_res_size
    inputs = [
        _TensorSpec("image_embeddings", [1, c, g, g, g], "float32"),
        _TensorSpec("point_coords", [1, "num_points", 3], "float32"),
        _TensorSpec("point_labels", [1, "num_points"], "int64"),
        _TensorSpec("mask_input", [1, 1, low, low, low], "float32"),
    ]
    if has_text:
        assert config.text_dim is not None  # has_text comes from the built text branch
        inputs.append(_TensorSpec("text_features", [1, config.text_dim], "float32"))
    return _GraphSpec(
        DECODER_FILE,
        inputs=tuple(inputs),
        outputs=(
            _TensorSpec("low_res_logits", [1, 1, low, low, low], "float32"),
            _TensorSpec("iou_predictions", [1, 1], "float32"),
        ),
    )


class _EncoderGraph(nn.Module):
    """What the encoder graph traces: ``Sam3D.embed`` (the tracer needs a ``forward``)."""

    def __init__(self, model: Sam3D) -> None:
        super().__init__()
        self.model = model

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.model.embed(volume)


class _DecoderGraph(nn.Module):
    """What the decoder graph traces: ``Sam3D.decode``, text features only when passed."""

    def __init__(self, model: Sam3D) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings, coords, labels, mask = inputs[:4]
        text = inputs[4] if len(inputs) > 4 else None
        return self.model.decode(embeddings, coords, labels, mask, text)


def export_onnx(
    model: Sam3D,
    out_dir: Path,
    *,
    opset: int = 17,
    check: bool = True,
    weights_sha256: str | None = None,
    half_weights: bool = False,
) -> OnnxExport:
    """Write ``encoder.onnx``, ``decoder.onnx`` and ``manifest.json`` into ``out_dir``.

    With ``check`` both graphs run in onnxruntime (CPU) on fixed random inputs and must match
    PyTorch eager within :data:`PARITY_TOLERANCE`, else :class:`ExportError`. The model is put
    in eval mode; a model on a GPU is exported from a CPU copy.

    ``half_weights`` stores the large weight tensors as float16, each behind a Cast to float32
    (ONNX Runtime folds the Casts when it loads the graph, so it still computes in float32):
    half the file size, for shipping. Exact only for weights already representable in float16
    (see :func:`models.checkpoint.round_to_half`); otherwise the parity check measures the loss.
    """
    out_dir = Path(out_dir)
    config: ModelConfig = model.config
    model = _on_cpu(model.eval())
    enc_spec, dec_spec = encoder_spec(config), decoder_spec(config, model.has_text_branch)
    _make_dir(out_dir)
    with _temp_files(out_dir, 2) as (enc_tmp, dec_tmp):
        enc_inputs = _encoder_example(config, np.random.default_rng(0))
        enc_sha = _export_graph(
            _EncoderGraph(model), enc_inputs, enc_tmp, enc_spec, opset, "encoder", half_weights
        )
        enc_expected = _eager(_EncoderGraph(model), enc_inputs)
        # A real embedding (not noise) feeds the decoder, so its parity runs see realistic values.
        dec_cases = _decoder_cases(model, enc_expected[0][:1], np.random.default_rng(1))
        dec_sha = _export_graph(
            _DecoderGraph(model), dec_cases[0][1], dec_tmp, dec_spec, opset, "decoder", half_weights
        )
        enc_diff = dec_diff = None
        if check:
            enc_diff = _check_parity("encoder", enc_tmp, [("batch of 2", enc_inputs, enc_expected)])
            dec_cases_expected = [(n, x, _eager(_DecoderGraph(model), x)) for n, x in dec_cases]
            dec_diff = _check_parity("decoder", dec_tmp, dec_cases_expected)
        manifest = _manifest(config, opset, enc_spec, dec_spec, enc_sha, dec_sha, weights_sha256)
        manifest["stored_weights"] = "float16" if half_weights else "float32"
        manifest["parity"] = _parity_record(enc_diff, dec_diff)
        encoder_path, decoder_path = out_dir / ENCODER_FILE, out_dir / DECODER_FILE
        manifest_path = out_dir / MANIFEST_FILE
        try:
            # The old manifest goes first: while the graphs are swapped, the directory must not
            # claim to be a complete export.
            manifest_path.unlink(missing_ok=True)
            os.replace(enc_tmp, encoder_path)
            os.replace(dec_tmp, decoder_path)
            write_atomically(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
        except OSError as exc:
            raise ExportError(f"cannot write the ONNX export into {out_dir}: {_brief(exc)}") from exc
    return OnnxExport(encoder_path, decoder_path, manifest_path, enc_diff, dec_diff)


def _on_cpu(model: Sam3D) -> Sam3D:
    """The model itself when on the CPU, else a CPU copy.

    The graph does not depend on the device, and the parity reference must be CPU float32:
    cuDNN's TF32 convolutions alone can differ from onnxruntime's CPU results by about 1e-3.
    """
    if all(t.device.type == "cpu" for t in model.state_dict().values()):
        return model
    # Built afresh rather than deep-copied, so the GPU never holds two copies.
    cpu_model = build_model(model.config)
    cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    return cpu_model.eval()


# -- files ---------------------------------------------------------------------------------------


def _make_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the ONNX export directory {out_dir}: {_brief(exc)}") from exc


@contextlib.contextmanager
def _temp_files(out_dir: Path, count: int) -> Iterator[list[Path]]:
    """Temporary file names in ``out_dir`` (same filesystem, so os.replace is atomic); removed after."""
    paths: list[Path] = []
    try:
        for _ in range(count):
            fd, name = tempfile.mkstemp(dir=out_dir, prefix=".export-", suffix=".onnx.tmp")
            os.close(fd)
            paths.append(Path(name))
            os.chmod(name, FILE_MODE)
    except OSError as exc:
        _remove(paths)
        raise ExportError(f"cannot write into the ONNX export directory {out_dir}: {_brief(exc)}") from exc
    try:
        yield paths
    finally:
        _remove(paths)  # already renamed on success; the leftovers of a failure otherwise


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


# -- export --------------------------------------------------------------------------------------


#: Smaller tensors (biases, norms) stay float32: they cost little and keep full precision.
_HALF_MIN_ELEMENTS = 1024


def _export_graph(
    module: nn.Module,
    inputs: Mapping[str, np.ndarray],
    path: Path,
    spec: _GraphSpec,
    opset: int,
    graph: str,
    half_weights: bool = False,
) -> str:
    """Trace ``module`` into ``path``, stamp the declared I/O shapes, check it; returns its sha256."""
    args = tuple(torch.from_numpy(inputs[name]) for name in spec.input_names)
    try:
        with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                opset_version=opset,
                do_constant_folding=True,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(),
            )
        proto = onnx.load(str(path))
        _stamp_shapes(proto, spec)
        if half_weights:
            _store_weights_as_half(proto)
        # full_check runs strict shape inference, so the stamped shapes must agree with the graph.
        onnx.checker.check_model(proto, full_check=True)
        data = proto.SerializeToString()
    except Exception as exc:  # torch and onnx raise many unrelated types; all mean "export failed"
        raise ExportError(f"ONNX export of the {graph} graph failed: {_brief(exc)}") from exc
    try:
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise ExportError(f"cannot write the {graph} graph to {path.parent}: {_brief(exc)}") from exc
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the tracer's expected warnings; errors still propagate.

    TracerWarnings flag Python-level shape checks (e.g. the encoder's window-padding test), which
    are constants for the fixed crop size and decoder batch, so freezing them is what we want.
    The legacy exporter is chosen on purpose (the dynamo one needs onnxscript).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings(
            "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        yield


def _stamp_shapes(proto: onnx.ModelProto, spec: _GraphSpec) -> None:
    """Write the declared shapes onto the graph outputs.

    The tracer leaves generated names like ``Slicelow_res_logits_dim_1`` on outputs whose size it
    cannot prove static; consumers (and the manifest) should see the real, fixed sizes.
    """
    declared = {t.name: t for t in spec.outputs}
    for value in proto.graph.output:
        tensor = declared[value.name]
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for size in tensor.shape:
            dim = dims.add()
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size


def _store_weights_as_half(proto: onnx.ModelProto) -> None:
    """Replace each large float32 initializer by a float16 one and a Cast back to float32."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    casts = []
    for index, initializer in enumerate(list(graph.initializer)):
        if initializer.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(initializer)
        if values.size < _HALF_MIN_ELEMENTS:
            continue
        name = initializer.name  # read before CopyFrom overwrites this very message
        half_name = f"{name}__float16"
        graph.initializer[index].CopyFrom(numpy_helper.from_array(values.astype(np.float16), half_name))
        casts.append(helper.make_node("Cast", [half_name], [name], to=onnx.TensorProto.FLOAT))
    # The Casts must come before every node that reads the weights: prepend them.
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*casts, *nodes])


# -- parity --------------------------------------------------------------------------------------


def _encoder_example(config: ModelConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    s = config.img_size
    volume = rng.standard_normal((_PARITY_BATCH, config.in_chans, s, s, s), dtype=np.float32)
    return {"volume": volume}


def _decoder_cases(
    model: Sam3D, embedding: np.ndarray, rng: np.random.Generator
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Prompt layouts the predictor sends: clicks with a box or padding, and no clicks at all.

    The first case (most points) is also the one traced.
    """
    config: ModelConfig = model.config
    if model.prompt_encoder.accepts_boxes:
        tail, tail_name = [BOX_MIN_LABEL, BOX_MAX_LABEL], "box"
    else:
        tail, tail_name = [PAD_LABEL], "padding"
    layouts = [
        (f"3 clicks + {tail_name}", [POSITIVE_LABEL, NEGATIVE_LABEL, POSITIVE_LABEL, *tail], False),
        (f"no clicks, {tail_name} only", tail, True),
        ("1 click + padding", [POSITIVE_LABEL, PAD_LABEL], True),
    ]
    low = config.low_res_size
    cases = []
    for name, labels, with_mask in layouts:
        n = len(labels)
        inputs = {
            "image_embeddings": embedding,
            "point_coords": rng.uniform(0, config.img_size - 1, (1, n, 3)).astype(np.float32),
            "point_labels": np.asarray([labels], dtype=np.int64),
            # Zeros are the first pass; a previous pass's logits come back as the mask prompt.
            "mask_input": (
                rng.standard_normal((1, 1, low, low, low), dtype=np.float32) * 4
                if with_mask
                else np.zeros((1, 1, low, low, low), np.float32)
            ),
        }
        if model.has_text_branch:
            assert config.text_dim is not None
            inputs["text_features"] = rng.standard_normal((1, config.text_dim), dtype=np.float32)
        cases.append((name, inputs))
    return cases


def _eager(module: nn.Module, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    with torch.inference_mode():
        out = module(*(torch.from_numpy(a) for a in inputs.values()))
    outs = out if isinstance(out, tuple) else (out,)
    return [t.float().numpy() for t in outs]


def _check_parity(
    graph: str, path: Path, cases: Sequence[tuple[str, Mapping[str, np.ndarray], list[np.ndarray]]]
) -> float:
    """Max |onnxruntime − eager| over all cases and outputs; ExportError above the tolerance."""
    import onnxruntime as ort  # deferred: only the check needs it, and it is slow to import

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load the exported {graph} graph: {_brief(exc)}") from exc
    worst = 0.0
    for name, inputs, expected in cases:
        try:
            got = session.run(None, dict(inputs))
        except Exception as exc:
            raise ExportError(f"onnxruntime failed on the {graph} graph ({name}): {_brief(exc)}") from exc
        diff = max(float(np.max(np.abs(np.asarray(g) - e))) for g, e in zip(got, expected, strict=True))
        if not diff <= PARITY_TOLERANCE:  # also catches NaN
            raise ExportError(
                f"the exported {graph} graph disagrees with PyTorch ({name}): "
                f"max abs difference {diff:.3g} > {PARITY_TOLERANCE:g}"
            )
        worst = max(worst, diff)
    return worst


# -- manifest ------------------------------------------------------------------------------------


def _manifest(
    config: ModelConfig,
    opset: int,
    enc: _GraphSpec,
    dec: _GraphSpec,
    enc_sha: str,
    dec_sha: str,
    weights_sha256: str | None,
) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "opset": opset,
        "graphs": {
            "encoder": _graph_record(enc, enc_sha),
            "decoder": _graph_record(dec, dec_sha),
        },
        "weights_sha256": weights_sha256,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
    }


def _graph_record(spec: _GraphSpec, sha256: str) -> dict[str, Any]:
    return {
        "file": spec.file,
        "sha256": sha256,
        "inputs": [t.to_dict() for t in spec.inputs],
        "outputs": [t.to_dict() for t in spec.outputs],
    }


def _parity_record(enc_diff: float | None, dec_diff: float | None) -> dict[str, Any] | None:
    if enc_diff is None or dec_diff is None:
        return None
    import onnxruntime as ort

    return {
        "tolerance": PARITY_TOLERANCE,
        "encoder_max_abs_diff": enc_diff,
        "decoder_max_abs_diff": dec_diff,
        "onnxruntime": ort.__version__,
        "provider": "CPUExecutionProvider",
    }


def _brief(exc: BaseException) -> str:
    """One line naming the exception: torch's messages can run to pages of graph dumps."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
