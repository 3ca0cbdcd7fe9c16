"""The network and text encoder of a worker process, loaded once and reused for every job.

An inference worker loads them on its first job (in the worker process, never in a Celery
parent before it forks: torch in a parent deadlocks prefork children, DESIGN §7). The API
process only asks :func:`model_problem`, which looks at files and never imports torch.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from models.loading import LoadedModel
    from models.predictor import SegmentingPredictor
    from models.text.protocol import TextEncoder
    from worker.stages.export.algorithm import AlgorithmInfo


@dataclass
class ModelRuntime:
    """One loaded network with its predictor (which holds the current volume's embedding)."""

    model: LoadedModel
    predictor: SegmentingPredictor
    text_encoder: TextEncoder | None

    def text_features(self, prompt: str) -> np.ndarray | None:
        """The prompt's features, or None for a network without a text branch."""
        if self.text_encoder is None:
            return None
        return np.asarray(self.text_encoder.encode([prompt]), dtype=np.float32)[0]

    @property
    def algorithm(self) -> AlgorithmInfo:
        from worker.stages.export.algorithm import AlgorithmInfo

        return AlgorithmInfo(model_id=self.model.model_id, weights_sha256=self.model.weights_sha256)


_lock = threading.Lock()
_loaded: dict[tuple[object, ...], ModelRuntime] = {}


def get_runtime(settings: WorkerSettings) -> ModelRuntime:
    """The process's runtime for the configured weights (loaded on first use).

    Raises
    ------
    models.errors.ModelError
        The weights or the text encoder cannot be opened.
    """
    key = (settings.model, settings.runtime, settings.device, settings.threads, settings.text_encoder)
    with _lock:
        if key not in _loaded:
            _loaded[key] = _load(settings)
        return _loaded[key]


def _load(settings: WorkerSettings) -> ModelRuntime:
    from models.loading import open_model
    from models.text.registry import open_text_encoder

    model = open_model(
        settings.model, runtime=settings.runtime, device=settings.device, threads=settings.threads
    )
    encoder = open_text_encoder(settings.text_encoder) if model.config.text_dim is not None else None
    return ModelRuntime(model, model.predictor(), encoder)


def model_problem(settings: WorkerSettings) -> str | None:
    """None when the configured weights are there to load; otherwise what is wrong (for /readyz)."""
    if settings.model is None:
        wanted = _demo_weights(settings.runtime)
        return None if wanted.exists() else "the packaged demo weights are missing from this install"
    path = Path(settings.model)
    if path.is_dir():
        return None if (path / "manifest.json").is_file() else "the model folder has no manifest.json"
    return None if path.is_file() else "the configured model file does not exist"


def model_fingerprint(settings: WorkerSettings) -> str:
    """What identifies the configured network's weights, without loading them (no torch): the
    SHA-256 of a checkpoint file, or the weights hash an ONNX export's manifest records.

    Raises
    ------
    models.errors.CheckpointError
        Nothing usable where the settings point.
    """
    import hashlib
    import json

    from models.errors import CheckpointError

    path = Path(settings.model) if settings.model is not None else _demo_weights(settings.runtime)
    if path.is_dir():
        try:
            manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{path}: no readable manifest.json ({type(error).__name__})") from None
        return f"onnx:{manifest.get('weights_sha256') or ''}"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file or export folder")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"file:{digest.hexdigest()}"


def _demo_weights(runtime: str) -> Path:
    from models.demo import DEMO_CHECKPOINT, DEMO_ONNX_DIR

    return DEMO_ONNX_DIR if runtime == "onnxruntime" else DEMO_CHECKPOINT
