"""Inference backends: one interface over PyTorch eager and an onnxruntime export.

The predictor calls ``embed`` once per crop and ``decode`` once per interaction, with numpy in
and out, and does not care which runtime runs them. :class:`TorchBackend` runs a :class:`Sam3D`;
:class:`OnnxBackend` runs the two graphs :func:`models.export_onnx.export_onnx` writes. Neither
module imports the other runtime at load time, so a site can ship only one of them.

Both backends check input shapes against the configuration before running, so a misfit
prompt gives the same :class:`PromptInputError` whatever runs underneath.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from models.config import ModelConfig
from models.errors import ModelError, PromptInputError

if TYPE_CHECKING:
    import onnxruntime as ort
    import torch

    from models.modeling.network import Sam3D

# The export directory's layout. Defined here, not in models.export_onnx, so that reading an
# export needs neither torch nor onnx; the exporter imports these.
FORMAT_NAME = "rtinjury-sam3d-onnx"
FORMAT_VERSION = 1
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
MANIFEST_FILE = "manifest.json"
#: Code of the errors about an ONNX export directory (missing, corrupt, not an export).
INVALID_EXPORT = "invalid-onnx-export"
_DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input")


class InferenceBackend(Protocol):
    config: ModelConfig
    name: str  # "torch" or "onnxruntime"
    device: str  # "cpu", "cuda", "CPUExecutionProvider", ...

    def embed(self, volumes: np.ndarray) -> np.ndarray:
        """(B, 1, S, S, S) float32 crops → (B, C, G, G, G) float32 embeddings."""
        ...

    def decode(
        self,
        embedding: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        text_features: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Low-res mask logits (B, 1, L, L, L) and IoU predictions (B, 1), float32."""
        ...


# -- input checks shared by both backends --------------------------------------------------------


@dataclass(frozen=True)
class _DecodeInputs:
    embedding: np.ndarray  # (1 or B, C, G, G, G) float32
    coords: np.ndarray  # (B, N, 3) float32
    labels: np.ndarray  # (B, N) int64
    mask: np.ndarray  # (B, 1, L, L, L) float32
    text: np.ndarray | None  # (B, text_dim) float32

    @property
    def batch(self) -> int:
        return int(self.coords.shape[0])


def _f32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def _check_volumes(config: ModelConfig, volumes: np.ndarray) -> np.ndarray:
    arr = _f32(volumes)
    s = config.img_size
    if arr.ndim != 5 or arr.shape[1:] != (config.in_chans, s, s, s):
        raise ModelError(f"crops must have shape (B, {config.in_chans}, {s}, {s}, {s}); got {arr.shape}")
    return arr


def _check_decode_inputs(
    config: ModelConfig,
    has_text_branch: bool,
    embedding: np.ndarray,
    point_coords: np.ndarray,
    point_labels: np.ndarray,
    mask_input: np.ndarray,
    text_features: np.ndarray | None,
) -> _DecodeInputs:
    """Contiguous arrays of the graph's dtypes, with shapes checked against the configuration."""
    x = _DecodeInputs(
        _f32(embedding),
        _f32(point_coords),
        np.ascontiguousarray(point_labels, dtype=np.int64),
        _f32(mask_input),
        None if text_features is None else _f32(text_features),
    )
    if x.text is not None and not has_text_branch:
        raise PromptInputError("this network has no text branch; decode without text features")
    if x.coords.ndim != 3 or x.coords.shape[2] != 3:
        raise PromptInputError(f"point_coords must have shape (B, N, 3); got {x.coords.shape}")
    b, n, _ = x.coords.shape
    g, c, low = config.grid_size, config.prompt_embed_dim, config.low_res_size
    # One embedding may serve a batch of prompt sets (upstream's repeat_interleave case).
    emb_batch = 1 if x.embedding.shape[:1] == (1,) else b
    expected: list[tuple[str, np.ndarray, tuple[int, ...]]] = [
        ("point_labels", x.labels, (b, n)),
        ("mask_input", x.mask, (b, 1, low, low, low)),
        ("embedding", x.embedding, (emb_batch, c, g, g, g)),
    ]
    if x.text is not None:
        expected.append(("text_features", x.text, (b, config.text_dim or 0)))
    for name, array, shape in expected:
        if array.shape != shape:
            raise PromptInputError(f"{name} must have shape {shape}; got {array.shape}")
    return x


# -- PyTorch -------------------------------------------------------------------------------------


class TorchBackend:
    """Eager PyTorch on ``device`` (CUDA when available and none is named, else CPU).

    The model is moved to the device and put in eval mode. ``threads`` limits torch's intra-op
    threads during each call only (torch's setting is process-wide, so it is restored after).
    """

    name = "torch"

    def __init__(self, model: Sam3D, device: str | None = None, threads: int | None = None) -> None:
        import torch

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self._device = torch.device(device)
            self.model = model.to(self._device).eval()
        except (RuntimeError, AssertionError) as exc:  # unknown device string, torch without CUDA
            raise ModelError(f"cannot run the network on device {device!r}: {exc}") from exc
        self.config: ModelConfig = model.config
        self.device = str(self._device)
        self.threads = threads

    def embed(self, volumes: np.ndarray) -> np.ndarray:
        arr = _check_volumes(self.config, volumes)
        import torch

        with self._scope():
            out = self.model.embed(torch.from_numpy(arr).to(self._device))
        return _to_numpy(out)

    def decode(
        self,
        embedding: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        text_features: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        x = _check_decode_inputs(
            self.config,
            self.model.has_text_branch,
            embedding,
            point_coords,
            point_labels,
            mask_input,
            text_features,
        )
        import torch

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(self._device)

        with self._scope():
            text = None if x.text is None else tensor(x.text)
            logits, iou = self.model.decode(
                tensor(x.embedding), tensor(x.coords), tensor(x.labels), tensor(x.mask), text
            )
        return _to_numpy(logits), _to_numpy(iou)

    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        import torch

        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                yield
        finally:
            if self.threads:
                torch.set_num_threads(previous)


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().float().cpu().numpy())


# -- onnxruntime ---------------------------------------------------------------------------------


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, then CPU (always present)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def read_manifest(export_dir: Path) -> dict[str, Any]:
    """The export's manifest, checked for format and version; ModelError naming the file otherwise."""
    path = Path(export_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ModelError(f"{path}: missing; {export_dir} is not a complete ONNX export", code=INVALID_EXPORT)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable ONNX export manifest ({exc})", code=INVALID_EXPORT) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ModelError(f"{path}: not an {FORMAT_NAME} manifest", code=INVALID_EXPORT)
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(
            f"{path}: format version {version!r} is not supported (this build reads up to {FORMAT_VERSION})",
            code=INVALID_EXPORT,
        )
    return data


def _config_from_manifest(export_dir: Path, manifest: dict[str, Any]) -> ModelConfig:
    path = Path(export_dir) / MANIFEST_FILE
    raw = manifest.get("config")
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: no model configuration", code=INVALID_EXPORT)
    try:
        return ModelConfig.from_dict(raw)
    except (ModelError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: invalid model configuration: {exc}", code=INVALID_EXPORT) from exc


class OnnxBackend:
    """The two graphs of an export directory in onnxruntime sessions.

    ``providers`` defaults to :func:`default_providers`; ``device`` reports the provider the
    encoder session actually got (onnxruntime falls back to CPU when CUDA cannot start).
    The decoder graph takes one prompt set; a batch of B prompt sets runs as B calls.
    """

    name = "onnxruntime"

    def __init__(
        self, export_dir: Path, providers: Sequence[str] | None = None, threads: int | None = None
    ) -> None:
        self.export_dir = Path(export_dir)
        manifest = read_manifest(self.export_dir)
        self.config: ModelConfig = _config_from_manifest(self.export_dir, manifest)
        self.manifest = manifest
        chosen = list(providers) if providers else default_providers()
        self._encoder = _session(self.export_dir / ENCODER_FILE, chosen, threads)
        self._decoder = _session(self.export_dir / DECODER_FILE, chosen, threads)
        decoder_inputs = {i.name for i in self._decoder.get_inputs()}
        missing = [name for name in _DECODER_INPUTS if name not in decoder_inputs]
        if missing:
            raise ModelError(
                f"{self.export_dir / DECODER_FILE}: decoder graph lacks inputs {', '.join(missing)}",
                code=INVALID_EXPORT,
            )
        self.needs_text_features = "text_features" in decoder_inputs
        self.providers: list[str] = list(self._encoder.get_providers())
        self.device = self.providers[0]

    def embed(self, volumes: np.ndarray) -> np.ndarray:
        arr = _check_volumes(self.config, volumes)
        (out,) = _run(self._encoder, "encoder", {"volume": arr})[:1]
        return _f32(out)

    def decode(
        self,
        embedding: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        text_features: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        x = _check_decode_inputs(
            self.config,
            self.needs_text_features,
            embedding,
            point_coords,
            point_labels,
            mask_input,
            text_features,
        )
        if self.needs_text_features and x.text is None:
            # The graph was traced with the text token; leaving it out is a different network.
            raise PromptInputError(
                f"the decoder graph in {self.export_dir} needs text features (shape (B, "
                f"{self.config.text_dim})); pass them, or export a network without a text branch"
            )
        logits, ious = [], []
        for i in range(x.batch):
            feed = {
                "image_embeddings": x.embedding[i : i + 1] if len(x.embedding) > 1 else x.embedding,
                "point_coords": x.coords[i : i + 1],
                "point_labels": x.labels[i : i + 1],
                "mask_input": x.mask[i : i + 1],
            }
            if x.text is not None:
                feed["text_features"] = x.text[i : i + 1]
            low_res, iou = _run(self._decoder, "decoder", feed)[:2]
            logits.append(low_res)
            ious.append(iou)
        return _f32(np.concatenate(logits)), _f32(np.concatenate(ious))


def _session(path: Path, providers: list[str], threads: int | None) -> ort.InferenceSession:
    import onnxruntime as ort

    if not path.is_file():
        raise ModelError(f"{path}: missing; the ONNX export is incomplete", code=INVALID_EXPORT)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped exceptions for corrupt graphs
        first = str(exc).strip().splitlines()[:1]
        raise ModelError(
            f"{path}: onnxruntime cannot load it ({''.join(first)})", code=INVALID_EXPORT
        ) from exc


def _run(session: ort.InferenceSession, graph: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return [np.asarray(out) for out in session.run(None, feed)]
    except Exception as exc:
        first = str(exc).strip().splitlines()[:1]
        raise ModelError(f"onnxruntime failed in the {graph} graph: {''.join(first)}") from exc


def open_backend(
    kind: Literal["torch", "onnxruntime"],
    source: Sam3D | Path,
    *,
    device: str | None = None,
    threads: int | None = None,
) -> InferenceBackend:
    """A backend from a network (``torch``) or an export directory (``onnxruntime``).

    For onnxruntime, ``device`` "cpu" or "cuda" picks the providers; None takes the default.
    """
    if kind == "torch":
        if isinstance(source, Path | str):
            raise ModelError("the torch backend runs a network, not an export directory")
        return TorchBackend(source, device=device, threads=threads)
    if kind == "onnxruntime":
        if not isinstance(source, Path | str):
            raise ModelError("the onnxruntime backend runs an export directory; export the network first")
        providers = {
            "cpu": ["CPUExecutionProvider"],
            "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        }
        if device is not None and device not in providers:
            raise ModelError(f"unknown onnxruntime device {device!r}; use 'cpu' or 'cuda'")
        return OnnxBackend(
            Path(source), providers=None if device is None else providers[device], threads=threads
        )
    raise ModelError(f"unknown inference backend {kind!r}; use 'torch' or 'onnxruntime'")
