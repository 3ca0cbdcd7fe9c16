"""Fixtures for the text encoder tests: the real default model, and a tiny BERT built on the spot.

Loading MiniLM costs 1-3 s (mostly importing transformers), so it is loaded once per session; the
tiny BERT (32 features, 2 layers) loads in milliseconds and stands in for a clinical BERT folder.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from models.text import TransformersTextEncoder, default_text_encoder

#: The tiny BERT's word list; anything else in a prompt becomes [UNK], which is fine for shape tests.
TINY_WORDS = (
    "the of a and in after to with on ct mr follow up months gy "
    "fractions male female years osteoradionecrosis necrosis mandible jaw bone radiotherapy "
    "cerebral radiation brain edema temporal lobe"
)
TINY_DIM = 32


def build_tiny_bert(directory: Path, *, seed: int = 0, layers: int = 2) -> Path:
    """Save a randomly initialised, deterministic tiny BERT model and its tokenizer in ``directory``."""
    import torch
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS.split()]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # from_pretrained reads vocab.txt in transformers 4 and 5 alike; the constructor's keyword for
    # the vocabulary changed (vocab_file → vocab) and the old one is silently ignored in 5.
    transformers.BertTokenizer.from_pretrained(str(directory)).save_pretrained(str(directory))
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=TINY_DIM,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    transformers.BertModel(config).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT folder shared by the session; tests that damage one copy it first."""
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture
def make_tiny_bert() -> Callable[..., Path]:
    """:func:`build_tiny_bert` for tests that need their own variant (other seed, fewer layers)."""
    return build_tiny_bert


@pytest.fixture(scope="session")
def default_encoder() -> TransformersTextEncoder:
    return default_text_encoder()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Make every attempt to open a connection fail, and record the attempts."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args[1:] if args else kwargs)
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
