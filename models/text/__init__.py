"""Text feature extractors: clinical prompt strings → sentence feature vectors for the network.

Everything loads from local files only; see :func:`open_text_encoder` for the entry point.
"""

from models.text.cache import CachedTextEncoder
from models.text.protocol import TextEncoder
from models.text.registry import DEFAULT_ENCODER_NAME, default_text_encoder, open_text_encoder
from models.text.transformers_encoder import Pooling, TransformersTextEncoder

__all__ = [
    "DEFAULT_ENCODER_NAME",
    "CachedTextEncoder",
    "Pooling",
    "TextEncoder",
    "TransformersTextEncoder",
    "default_text_encoder",
    "open_text_encoder",
]
