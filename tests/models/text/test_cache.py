"""CachedTextEncoder in front of a real (tiny BERT) encoder that counts what it is asked to encode."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from models.errors import TextEncoderError
from models.text import CachedTextEncoder, TextEncoder, TransformersTextEncoder

ORN = (
    "Osteoradionecrosis of the mandible, CT follow-up, 24 months after 66 Gy in 33 fractions, male, 61 years"
)
CRN = "Cerebral radiation necrosis, MR follow-up, 18 months after 60 Gy in 30 fractions, female, 54 years"
EDEMA = "cerebral edema in the temporal lobe"


class CountingEncoder(TransformersTextEncoder):
    """The real encoder, recording each batch of texts it computes."""

    def __init__(self, model_dir: Path) -> None:
        super().__init__(model_dir)
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return super().encode(texts)


@pytest.fixture
def inner(tiny_bert_dir: Path) -> CountingEncoder:
    return CountingEncoder(tiny_bert_dir)


def test_cached_encoder_is_a_text_encoder_with_the_inner_identity(inner: CountingEncoder) -> None:
    cached = CachedTextEncoder(inner)

    assert isinstance(cached, TextEncoder)
    assert (cached.name, cached.dim) == (inner.name, inner.dim)


def test_second_encode_is_served_from_memory(inner: CountingEncoder) -> None:
    cached = CachedTextEncoder(inner)

    first = cached.encode([ORN])
    second = cached.encode([ORN])

    assert inner.calls == [[ORN]]
    assert (cached.misses, cached.hits, cached.disk_hits) == (1, 1, 0)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, inner.encode([ORN]))


def test_only_unseen_texts_reach_the_inner_encoder_once_each(inner: CountingEncoder) -> None:
    cached = CachedTextEncoder(inner)
    cached.encode([ORN])

    features = cached.encode([CRN, ORN, CRN, EDEMA])

    assert inner.calls == [[ORN], [CRN, EDEMA]]
    assert (cached.misses, cached.hits) == (3, 1)
    assert features.shape == (4, 32)
    assert features.dtype == np.float32
    np.testing.assert_array_equal(features[0], features[2])
    np.testing.assert_allclose(features, inner.encode([CRN, ORN, CRN, EDEMA]), atol=1e-5)


def test_empty_input_needs_no_inner_call(inner: CountingEncoder) -> None:
    features = CachedTextEncoder(inner).encode([])

    assert features.shape == (0, 32)
    assert inner.calls == []


def test_callers_cannot_edit_the_cache(inner: CountingEncoder) -> None:
    cached = CachedTextEncoder(inner)
    features = cached.encode([ORN])
    expected = features.copy()

    features[:] = 0.0

    np.testing.assert_array_equal(cached.encode([ORN]), expected)


def test_memory_cache_is_bounded(inner: CountingEncoder) -> None:
    cached = CachedTextEncoder(inner, max_memory_entries=2)
    cached.encode([ORN, CRN, EDEMA])  # ORN is the least recently used and falls out

    cached.encode([EDEMA, ORN])

    assert inner.calls == [[ORN, CRN, EDEMA], [ORN]]


def test_disk_cache_survives_a_new_instance(inner: CountingEncoder, tmp_path: Path) -> None:
    first = CachedTextEncoder(inner, cache_dir=tmp_path).encode([ORN, CRN])

    restarted = CachedTextEncoder(inner, cache_dir=tmp_path)
    again = restarted.encode([CRN, ORN])

    assert inner.calls == [[ORN, CRN]]
    assert (restarted.misses, restarted.hits, restarted.disk_hits) == (0, 2, 2)
    np.testing.assert_array_equal(again, first[::-1])


def test_disk_files_are_named_by_hash_and_written_whole(inner: CountingEncoder, tmp_path: Path) -> None:
    CachedTextEncoder(inner, cache_dir=tmp_path).encode([ORN])

    expected = hashlib.sha256(f"{inner.name}\0{ORN}".encode()).hexdigest() + ".npy"
    assert [path.name for path in tmp_path.iterdir()] == [expected]  # no temp files left, no prompt text
    np.testing.assert_array_equal(np.load(tmp_path / expected), inner.encode([ORN])[0])


@pytest.mark.parametrize(
    "corrupt",
    [
        b"",
        b"not a numpy file at all",
        "truncated",
        "wrong-shape",
    ],
    ids=["empty", "garbage", "truncated", "wrong-shape"],
)
def test_corrupt_cache_file_is_recomputed(
    inner: CountingEncoder, tmp_path: Path, corrupt: bytes | str
) -> None:
    expected = CachedTextEncoder(inner, cache_dir=tmp_path).encode([ORN])
    (path,) = tmp_path.iterdir()
    if corrupt == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif corrupt == "wrong-shape":
        np.save(path, np.zeros(7, dtype=np.float32))
    else:
        assert isinstance(corrupt, bytes)
        path.write_bytes(corrupt)

    restarted = CachedTextEncoder(inner, cache_dir=tmp_path)
    features = restarted.encode([ORN])

    assert (restarted.misses, restarted.disk_hits) == (1, 0)
    np.testing.assert_array_equal(features, expected)
    np.testing.assert_array_equal(np.load(path), expected[0])  # the file is repaired


def test_encoders_with_different_names_do_not_share_entries(tiny_bert_dir: Path, tmp_path: Path) -> None:
    mean = CachedTextEncoder(TransformersTextEncoder(tiny_bert_dir, pooling="mean"), cache_dir=tmp_path)
    cls = CachedTextEncoder(TransformersTextEncoder(tiny_bert_dir, pooling="cls"), cache_dir=tmp_path)

    mean_features = mean.encode([ORN])
    cls_features = cls.encode([ORN])

    assert cls.misses == 1
    assert not np.allclose(mean_features, cls_features)
    assert len(list(tmp_path.iterdir())) == 2


def test_unusable_cache_dir_is_a_text_encoder_error(inner: CountingEncoder, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "features"
    not_a_dir.write_text("a file where the cache folder should be", encoding="utf-8")

    with pytest.raises(TextEncoderError, match="features"):
        CachedTextEncoder(inner, cache_dir=not_a_dir)


def test_failed_cache_write_costs_only_the_cache(
    inner: CountingEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def disk_full(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("models.text.cache.os.replace", disk_full)

    features = CachedTextEncoder(inner, cache_dir=tmp_path).encode([ORN])

    np.testing.assert_array_equal(features, inner.encode([ORN]))
    assert list(tmp_path.iterdir()) == []  # the temp file is cleaned up
    assert "cannot write text feature cache file" in caplog.text
    assert ORN not in caplog.text  # prompts may identify a patient; logs name only the hash


def test_a_bare_string_is_refused(inner: CountingEncoder) -> None:
    with pytest.raises(TypeError, match="sequence of strings"):
        CachedTextEncoder(inner).encode(ORN)
