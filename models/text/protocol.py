"""The one interface the network's text prompt path depends on.

The adaptation layer only needs a fixed-size sentence feature per prompt string; which model made
it (MiniLM, Bio_ClinicalBERT, a cache in front of either) must not matter to it, so callers type
against this Protocol instead of a concrete class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class TextEncoder(Protocol):
    """Turns clinical prompt strings into sentence-level feature vectors.

    ``name`` identifies the model *and* the settings that shape its output (pooling, normalisation),
    because caches key on it: two encoders whose features differ must never share a name.
    """

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return float32 features of shape ``(len(texts), dim)``, one row per text, in order."""
        ...
