"""Sentence features from a local Hugging Face encoder directory (BERT, Bio_ClinicalBERT, MiniLM…).

The service runs where nothing can be downloaded, so every load is local-files-only, and a directory
that cannot be used is reported as a :class:`TextEncoderError` naming the directory and what is
wrong with it, instead of a transformers traceback or, worse, a silently half-working model
(AutoTokenizer happily returns a 5-token tokenizer for a directory without tokenizer files).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from models.errors import TextEncoderError

if TYPE_CHECKING:
    import torch

Pooling = Literal["mean", "cls"]

#: Any one of these makes a tokenizer loadable; without them AutoTokenizer falls back to a
#: tokenizer that knows only the special tokens, which would map every word to [UNK].
_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
#: Files whose content determines the features; the name's hash covers them so that a retrained
#: model in the same folder never gets features cached for the old one. TF/Flax weights and READMEs
#: are left out: they do not change what this class computes, and hashing them would cost seconds.
_FINGERPRINT_GLOBS = (
    "config.json",
    "tokenizer*.json",
    "special_tokens_map.json",
    "vocab.*",
    "merges.txt",
    "*.model",
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
)
_DEFAULT_BATCH_SIZE = 32


class TransformersTextEncoder:
    """A :class:`~models.text.protocol.TextEncoder` over a local transformers encoder model.

    Loading happens in the constructor so that a bad directory fails when the service starts, not on
    the first job. Features are deterministic: eval mode (no dropout), float32, no gradients.
    """

    def __init__(
        self,
        model_dir: Path,
        pooling: Pooling = "mean",
        normalize: bool = False,
        max_length: int = 128,
        device: str = "cpu",
        *,
        batch_size: int = _DEFAULT_BATCH_SIZE,
        name: str | None = None,
    ) -> None:
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', not {pooling!r}")
        if max_length < 2 or batch_size < 1:
            raise ValueError(
                "max_length must be at least 2 (room for [CLS] and [SEP]), batch_size at least 1"
            )
        self.model_dir = Path(model_dir)
        self.pooling: Pooling = pooling
        self.normalize = normalize
        self.device = device
        self.batch_size = batch_size
        _check_directory(self.model_dir)
        self._tokenizer, self._model = _load(self.model_dir, device)
        self.max_length = _cap_length(max_length, self._tokenizer, self._model)
        self.dim: int = int(self._model.config.hidden_size)
        self.name: str = name or _fingerprint_name(self.model_dir, pooling, normalize, self.max_length)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Features of ``texts`` as float32 ``(len(texts), dim)``, computed in batches."""
        if isinstance(texts, str):
            # A bare string is a Sequence[str] of characters; encoding each letter is never meant.
            raise TypeError("encode() takes a sequence of strings, not a single string")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate([self._encode_batch(batch) for batch in _batches(texts, self.batch_size)])

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        inputs = self._tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        with torch.no_grad():
            hidden = self._model(**inputs).last_hidden_state
            features = _pool(hidden, inputs["attention_mask"], self.pooling)
            if self.normalize:
                features = torch.nn.functional.normalize(features, p=2.0, dim=1)
        return np.asarray(features.float().cpu().numpy(), dtype=np.float32)

    def __repr__(self) -> str:
        return f"TransformersTextEncoder(name={self.name!r}, dim={self.dim}, pooling={self.pooling!r})"


def _batches(texts: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(texts), size):
        yield texts[start : start + size]


def _cap_length(requested: int, tokenizer: Any, model: Any) -> int:
    """The requested token budget, capped where longer inputs would overflow the position embeddings.

    Tokenizers usually state the limit (model_max_length, a huge sentinel when unknown); the
    config's max_position_embeddings backs it up for folders whose tokenizer does not say.
    """
    limits = [
        requested,
        int(getattr(tokenizer, "model_max_length", requested)),
        int(getattr(model.config, "max_position_embeddings", requested)),
    ]
    return min(limits)


def _pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Sentence vector from token states: the first ([CLS]) token, or the mean over real tokens.

    Padding is excluded from the mean, so a text's feature does not depend on the longest text
    it happens to be batched with.
    """
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def _check_directory(model_dir: Path) -> None:
    """Name the missing piece up front; transformers' own messages talk about hub repo ids."""
    if not model_dir.is_dir():
        raise TextEncoderError(f"text encoder directory {model_dir} does not exist or is not a directory")
    if not (model_dir / "config.json").is_file():
        raise TextEncoderError(f"text encoder directory {model_dir} has no config.json")
    if not any((model_dir / name).is_file() for name in _TOKENIZER_FILES):
        raise TextEncoderError(
            f"text encoder directory {model_dir} has no tokenizer files "
            f"(one of {', '.join(_TOKENIZER_FILES)})"
        )
    if not any((model_dir / name).is_file() for name in _WEIGHT_FILES):
        raise TextEncoderError(
            f"text encoder directory {model_dir} has no weights file (one of {', '.join(_WEIGHT_FILES)})"
        )


def _load(model_dir: Path, device: str) -> tuple[Any, Any]:
    """Tokenizer and eval-mode model, offline, with failures turned into TextEncoderError."""
    # Set before transformers (and huggingface_hub, which reads them once at import) are imported.
    # If another module imported them first, local_files_only=True below still keeps us offline.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    import transformers  # imported here: it costs ~1-2 s, and most commands never need it

    tokenizer = _call(model_dir, "tokenizer", transformers.AutoTokenizer.from_pretrained)
    model, info = _call(
        model_dir,
        "model",
        transformers.AutoModel.from_pretrained,
        dtype=torch.float32,  # transformers 5 defaults to the checkpoint's dtype; features are float32
        output_loading_info=True,
    )
    _check_model(model_dir, model, info, tokenizer)
    try:
        model.to(device)
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise TextEncoderError(
            f"text encoder {model_dir}: cannot use device {device!r} ({_brief(exc)})"
        ) from exc
    model.eval()
    return tokenizer, model


def _call(model_dir: Path, what: str, loader: Any, **kwargs: Any) -> Any:
    """Run one from_pretrained call locally, without its progress bar on the service's stderr."""
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return loader(str(model_dir), local_files_only=True, trust_remote_code=False, **kwargs)
    except Exception as exc:  # transformers raises OSError, ValueError, SafetensorError, …
        raise TextEncoderError(
            f"text encoder directory {model_dir}: cannot load the {what} ({_brief(exc)})"
        ) from exc
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()


def _check_model(model_dir: Path, model: Any, info: dict[str, Any], tokenizer: Any) -> None:
    """Refuse models that would load but give meaningless features."""
    if getattr(model.config, "is_encoder_decoder", False):
        raise TextEncoderError(
            f"text encoder directory {model_dir} holds an encoder-decoder model; need an encoder"
        )
    # Missing weights are filled with random values, with only a log line to show for it. The pooler
    # is never used here (and BERT checkpoints saved from MLM heads often lack it).
    missing = sorted(key for key in info.get("missing_keys", ()) if not key.startswith("pooler."))
    if missing:
        raise TextEncoderError(
            f"text encoder directory {model_dir}: weights file lacks {len(missing)} tensors "
            f"(first: {missing[0]})"
        )
    embeddings = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > embeddings:
        raise TextEncoderError(
            f"text encoder directory {model_dir}: tokenizer has {len(tokenizer)} tokens, "
            f"the model only {embeddings} embeddings"
        )


def _brief(exc: BaseException) -> str:
    """Exception type and first message line: enough to act on, no traceback in user messages."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    if len(first) > 200:
        first = first[:200] + "…"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _fingerprint_name(model_dir: Path, pooling: Pooling, normalize: bool, max_length: int) -> str:
    """``<dir name>-<pooling>[-l2]-<12 hex>``: readable, and different whenever features could differ."""
    digest = hashlib.sha256(f"{pooling}|{normalize}|{max_length}".encode())
    files = sorted(
        {path for pattern in _FINGERPRINT_GLOBS for path in model_dir.glob(pattern) if path.is_file()}
    )
    for path in files:
        digest.update(b"\0" + path.name.encode() + b"\0")
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    suffix = "-l2" if normalize else ""
    return f"{model_dir.name}-{pooling}{suffix}-{digest.hexdigest()[:12]}"
