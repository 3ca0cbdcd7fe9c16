"""The network, its checkpoints, prompts and runtimes.

Public names load lazily: ``import models`` (and ``models.synth``, which the CLI's synth command
uses) must not pay for importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ModelConfig": "models.config",
    "get_config": "models.config",
    "CONFIGS": "models.config",
    "build_model": "models.build",
    "model_registry": "models.build",
    "Sam3D": "models.modeling.network",
    "load_checkpoint": "models.checkpoint",
    "save_checkpoint": "models.checkpoint",
    "load_for_finetuning": "models.checkpoint",
    "freeze_image_encoder": "models.checkpoint",
    "LoadedCheckpoint": "models.checkpoint",
    "Predictor": "models.predictor",
    "Prediction": "models.predictor",
    "PatientBox": "models.predictor",
    "Click": "models.predictor",
    "TorchBackend": "models.runtime",
    "OnnxBackend": "models.runtime",
    "export_onnx": "models.export_onnx",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(import_module(module), name)
