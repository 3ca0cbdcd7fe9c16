"""A feature cache in front of any text encoder.

Prompts repeat: a job re-run, a retry after a worker restart, and every case of one study protocol
send the same prompt string. Features are a pure function of (encoder name, text), so they are
kept in memory and, optionally, as one ``.npy`` per prompt on disk. The on-disk name is a sha256,
so the prompt itself (which may hold age, sex, dates) never appears in a file name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.errors import TextEncoderError
from models.text.protocol import TextEncoder

log = logging.getLogger(__name__)

#: Enough for every prompt of a busy worker's lifetime (~1.5 KiB each at dim 384) while bounding
#: memory if prompts were ever free text.
_DEFAULT_MEMORY_ENTRIES = 4096


class CachedTextEncoder:
    """Wraps a :class:`TextEncoder`; the inner encoder only ever sees texts not seen before.

    ``hits`` counts texts served from the cache (``disk_hits`` of them read from ``cache_dir``),
    ``misses`` texts the inner encoder had to compute. A cache file that cannot be read or has the
    wrong shape is treated as a miss and rewritten: a cache must never be the reason a job fails.
    """

    def __init__(
        self,
        inner: TextEncoder,
        cache_dir: Path | None = None,
        *,
        max_memory_entries: int = _DEFAULT_MEMORY_ENTRIES,
    ) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.dim: int = inner.dim
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_memory_entries = max_memory_entries
        self.hits = 0
        self.disk_hits = 0
        self.misses = 0
        self._memory: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        if self.cache_dir is not None:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TextEncoderError(
                    f"text feature cache directory {self.cache_dir} cannot be created"
                ) from exc

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Features of ``texts``, float32 ``(len(texts), dim)``; unseen texts are encoded in one call."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not a single string")
        texts = list(texts)
        with self._lock:
            found: dict[str, np.ndarray] = {}
            missing: list[str] = []
            for text in dict.fromkeys(texts):  # each distinct text once, in order
                vector = self._lookup(text)
                if vector is None:
                    missing.append(text)
                else:
                    found[text] = vector
            found.update(self._compute(missing))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Rows are copies: a caller editing its array must not edit the cache.
        return np.stack([found[text] for text in texts]).astype(np.float32, copy=False)

    def _lookup(self, text: str) -> np.ndarray | None:
        key = (self.name, text)
        vector = self._memory.get(key)
        if vector is not None:
            self._memory.move_to_end(key)
        else:
            vector = self._read(text)
            if vector is None:
                return None
            self.disk_hits += 1
            self._remember(key, vector)
        self.hits += 1
        return vector

    def _compute(self, texts: list[str]) -> dict[str, np.ndarray]:
        if not texts:
            return {}
        features = np.asarray(self.inner.encode(texts), dtype=np.float32)
        if features.shape != (len(texts), self.dim):
            raise ValueError(
                f"text encoder {self.name} returned shape {features.shape}, expected {(len(texts), self.dim)}"
            )
        self.misses += len(texts)
        computed = {}
        for text, row in zip(texts, features, strict=True):
            vector = row.copy()
            vector.flags.writeable = False
            self._remember((self.name, text), vector)
            self._write(text, vector)
            computed[text] = vector
        return computed

    def _remember(self, key: tuple[str, str], vector: np.ndarray) -> None:
        self._memory[key] = vector
        while len(self._memory) > self.max_memory_entries:
            self._memory.popitem(last=False)

    def _path(self, text: str) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(f"{self.name}\0{text}".encode()).hexdigest()
        return self.cache_dir / f"{digest}.npy"

    def _read(self, text: str) -> np.ndarray | None:
        path = self._path(text)
        if path is None or not path.is_file():
            return None
        try:
            vector: np.ndarray = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            log.warning("ignoring unreadable text feature cache file %s", path)
            return None
        if vector.shape != (self.dim,) or vector.dtype != np.float32 or not np.all(np.isfinite(vector)):
            log.warning(
                "ignoring text feature cache file %s: shape %s, dtype %s", path, vector.shape, vector.dtype
            )
            return None
        vector.flags.writeable = False
        return vector

    def _write(self, text: str, vector: np.ndarray) -> None:
        """Write via a temp file and os.replace, so a reader or a crash never sees half a file."""
        path = self._path(text)
        if path is None:
            return
        tmp_name = None
        try:
            with tempfile.NamedTemporaryFile(
                dir=path.parent, prefix=".tmp-", suffix=".npy", delete=False
            ) as tmp:
                tmp_name = tmp.name
                np.save(tmp, vector, allow_pickle=False)
            os.replace(tmp_name, path)
        except OSError as exc:
            # A full or read-only disk costs a recomputation next time, not this job.
            log.warning("cannot write text feature cache file %s: %s", path, exc)
            if tmp_name is not None:
                Path(tmp_name).unlink(missing_ok=True)

    def __repr__(self) -> str:
        counts = f"hits={self.hits}, misses={self.misses}"
        return f"CachedTextEncoder({self.inner!r}, cache_dir={self.cache_dir}, {counts})"
