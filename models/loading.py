"""Open a trained network for inference: a checkpoint file, an ONNX export folder, or the demo.

The service, ``rtinjury evaluate`` and ``rtinjury demo`` all name their model the same way: a
path the user gives, or nothing for the demo weights that ship inside this package (nothing is
downloaded). The result carries the model id and weights hash that reports record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.demo import DEMO_CHECKPOINT, DEMO_ONNX_DIR
from models.errors import CheckpointError
from models.predictor import Predictor, SegmentingPredictor

__all__ = ["DEMO_CHECKPOINT", "DEMO_ONNX_DIR", "LoadedModel", "open_model"]


@dataclass
class LoadedModel:
    """A network ready for inference; ``predictor()`` gives a fresh predictor over it."""

    make_predictor: Callable[[], SegmentingPredictor]
    config: Any
    model_id: str
    weights_sha256: str
    source: Path
    metadata: dict[str, Any] = field(default_factory=dict)

    def predictor(self) -> SegmentingPredictor:
        return self.make_predictor()


def open_model(
    source: Path | None = None,
    *,
    runtime: str = "auto",
    device: str | None = None,
    threads: int | None = None,
    trust_pickle: bool = False,
) -> LoadedModel:
    """A backend for ``source`` (default: the demo weights).

    ``runtime`` "auto" uses ONNX Runtime for an export folder and PyTorch for a checkpoint file;
    "torch" or "onnxruntime" insist on one (a checkpoint cannot run in ONNX Runtime unexported).

    Raises
    ------
    models.errors.CheckpointError
        Nothing usable at ``source``.
    """
    from models.runtime import open_backend, read_manifest

    if source is None:
        source = DEMO_ONNX_DIR if runtime == "onnxruntime" else DEMO_CHECKPOINT
        if runtime == "auto":
            runtime = "torch"
    source = Path(source)
    if source.is_dir():
        if runtime == "torch":
            raise CheckpointError(f"{source} is an ONNX export; the torch runtime needs a checkpoint file")
        manifest = read_manifest(source)
        backend = open_backend("onnxruntime", source, device=device, threads=threads)
        sha = str(manifest.get("weights_sha256") or "")
        return LoadedModel(
            lambda: Predictor(backend),
            backend.config,
            _model_id(backend.config.name, sha),
            sha,
            source,
            manifest,
        )
    if not source.is_file():
        raise CheckpointError(f"{source}: no such model file or export folder")
    if runtime == "onnxruntime":
        raise CheckpointError(
            f"{source} is a checkpoint; export it with rtinjury export-onnx to run it in ONNX Runtime"
        )
    from models.checkpoint import load_checkpoint
    from models.training.baselines import DensePredictor, is_baseline_file, load_baseline

    if is_baseline_file(source):
        baseline = load_baseline(source)
        return LoadedModel(
            lambda: DensePredictor(baseline.model, baseline.config, device=device or "cpu", threads=threads),
            baseline.config,
            baseline.model_id,
            baseline.weights_sha256,
            source,
            baseline.metadata,
        )
    loaded = load_checkpoint(source, trust_pickle=trust_pickle)
    model_backend = open_backend("torch", loaded.model, device=device, threads=threads)
    return LoadedModel(
        lambda: Predictor(model_backend),
        loaded.config,
        loaded.model_id,
        loaded.weights_sha256,
        source,
        loaded.metadata,
    )


def _model_id(name: str, sha: str) -> str:
    return f"{name}@{sha[:12]}" if sha else name
