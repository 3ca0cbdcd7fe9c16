"""Checkpoints: upstream SAM-Med3D files and our own self-describing ones.

Upstream files (``sam_med3d.pth``, ``sam_med3d_turbo.pth``, the CVPR25 box variant) are a dict
with ``model_state_dict`` holding the plain state dict (reference/sam_med3d.md §3). They carry no
configuration: they load into ``sam-med3d``, whose added branches (box corner embeddings, text
adapter) are then freshly initialised and reported by name. Our checkpoints carry the
configuration, the weights and metadata (training metrics, data split, ...) in one file.

Loading never executes arbitrary pickled code unless the caller says the file is trusted:
``torch.load(weights_only=True)`` with ``argparse.Namespace`` allowed (upstream saves its
training arguments as one), and a clear refusal otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from models.build import build_model
from models.config import SAM_MED3D, ModelConfig
from models.errors import CheckpointError
from models.files import atomic_write
from models.modeling.network import Sam3D

FORMAT = "rtinjury.checkpoint"
FORMAT_VERSION = 1
# Keys of the paper's added prompt branches: absent from upstream files, initialised fresh.
ADDED_BRANCH_PREFIXES = (
    "prompt_encoder.point_embeddings.2.",
    "prompt_encoder.point_embeddings.3.",
    "prompt_encoder.text_adapter.",
)
_SHOWN_KEYS = 8


@dataclass
class LoadedCheckpoint:
    model: Sam3D
    config: ModelConfig
    source: Literal["rtinjury", "upstream"]
    path: Path
    weights_sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)
    initialised_keys: list[str] = field(default_factory=list)

    @property
    def model_id(self) -> str:
        """Short identifier for reports: configuration and the first 12 hex of the file hash."""
        return f"{self.config.name}@{self.weights_sha256[:12]}"


def save_checkpoint(
    model: Sam3D, path: Path, metadata: Mapping[str, Any] | None = None, *, half: bool = False
) -> str:
    """Write a self-describing checkpoint atomically; returns the file's SHA-256.

    ``half`` stores floating-point tensors as float16 (half the file, for shipping); loading
    copies them into the float32 network.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "model_state_dict": state,
        "metadata": dict(metadata or {}),
    }
    return write_torch_file(payload, path)


def write_torch_file(payload: Mapping[str, Any], path: Path) -> str:
    """``torch.save`` atomically (folders created); returns the file's SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as stream:
        torch.save(dict(payload), stream)
    return file_sha256(path)


def round_to_half(model: Sam3D) -> Sam3D:
    """Round every floating-point parameter and buffer to the nearest float16 value (kept in
    float32), so a half-precision copy of the weights is exact (shipping, see export_onnx)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    return model


def load_checkpoint(
    path: str | Path,
    *,
    config: ModelConfig | None = None,
    trust_pickle: bool = False,
) -> LoadedCheckpoint:
    """Build the network a checkpoint describes and load its weights.

    ``config`` applies to upstream files only (default ``sam-med3d``); our files carry their own.
    Unexpected keys, shape mismatches and missing keys (other than the added branches, for
    upstream files) are refused with the keys named.
    """
    path = Path(path)
    raw = _read(path, trust_pickle)
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        return _load_own(path, raw)
    return _load_upstream(path, raw, config or SAM_MED3D)


def freeze_image_encoder(model: Sam3D) -> Sam3D:
    """Fine-tuning from pretrained weights trains prompt encoder and decoder only (paper §3.1)."""
    for parameter in model.image_encoder.parameters():
        parameter.requires_grad_(False)
    model.image_encoder.eval()
    return model


def load_for_finetuning(
    path: str | Path, *, config: ModelConfig | None = None, trust_pickle: bool = False
) -> LoadedCheckpoint:
    """Load pretrained weights with the image encoder frozen."""
    loaded = load_checkpoint(path, config=config, trust_pickle=trust_pickle)
    freeze_image_encoder(loaded.model)
    return loaded


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read(path: Path, trust_pickle: bool) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    if not zipfile.is_zipfile(path):
        # torch.save has written zip archives since PyTorch 1.6; anything else is not a checkpoint
        # we can vouch for (and would otherwise surface as a confusing unpickling error).
        raise CheckpointError(f"checkpoint {path} is not a PyTorch checkpoint file (torch.save zip format)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects besides tensors ({_first_line(exc)}); "
                "load it only if you trust where it came from (--trust-checkpoint)"
            ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is not a readable PyTorch file ({_first_line(exc)})"
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # arbitrary unpickling: any error means an unusable file
        raise CheckpointError(f"checkpoint {path} cannot be unpickled ({_first_line(exc)})") from None


def _load_own(path: Path, raw: dict[str, Any]) -> LoadedCheckpoint:
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}; this build reads {FORMAT_VERSION}"
        )
    if not isinstance(raw.get("config"), dict):
        raise CheckpointError(f"checkpoint {path} has no configuration")
    config = ModelConfig.from_dict(raw["config"])
    model = build_model(config)
    _load_weights(path, model, _state_dict(path, raw), allowed_missing=())
    metadata = raw.get("metadata") or {}
    return LoadedCheckpoint(model, config, "rtinjury", path, file_sha256(path), dict(metadata))


def _load_upstream(path: Path, raw: Any, config: ModelConfig) -> LoadedCheckpoint:
    model = build_model(config)
    state = _state_dict(path, raw)
    initialised = _load_weights(path, model, state, allowed_missing=ADDED_BRANCH_PREFIXES)
    metadata = (
        {k: v for k, v in raw.items() if isinstance(v, int | float | str)} if isinstance(raw, dict) else {}
    )
    return LoadedCheckpoint(model, config, "upstream", path, file_sha256(path), metadata, initialised)


def _state_dict(path: Path, raw: Any) -> dict[str, torch.Tensor]:
    state = raw.get("model_state_dict", raw) if isinstance(raw, dict) else raw
    if not isinstance(state, dict) or not state:
        raise CheckpointError(
            f"checkpoint {path} holds no state dict (expected a dict with 'model_state_dict')"
        )
    non_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise CheckpointError(f"checkpoint {path}: state dict entries are not tensors: {_names(non_tensors)}")
    # Checkpoints saved from DataParallel/DDP wrappers prefix every key with "module.".
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_weights(
    path: Path, model: Sam3D, state: dict[str, torch.Tensor], allowed_missing: tuple[str, ...]
) -> list[str]:
    expected = model.state_dict()
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise CheckpointError(
            f"checkpoint {path} has {len(unexpected)} keys the {model.config.name} network does not: "
            f"{_names(unexpected)}"
        )
    for key, tensor in state.items():
        want = tuple(expected[key].shape)
        if tuple(tensor.shape) != want:
            raise CheckpointError(
                f"checkpoint {path}: {key} has shape {tuple(tensor.shape)}, the {model.config.name} network "
                f"needs {want}"
            )
    missing = [k for k in expected if k not in state]
    refused = [k for k in missing if not k.startswith(allowed_missing)]
    if refused:
        raise CheckpointError(f"checkpoint {path} lacks {len(refused)} keys: {_names(refused)}")
    model.load_state_dict(state, strict=False)
    return missing


def _names(keys: Iterable[str]) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f" (and {len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
