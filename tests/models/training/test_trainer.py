"""The trainer on in-memory sphere cases with the tiny network: it learns, records, resumes, repeats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.build import build_model
from models.checkpoint import load_checkpoint
from models.training.dataset import collate, make_sample
from models.training.trainer import (
    BEST_CHECKPOINT,
    FINAL_CHECKPOINT,
    LAST_CHECKPOINT,
    LOG_FILE,
    STATE_FILE,
    TrainingData,
    TrainSettings,
    train,
    training_step,
)
from models.training.variants import VARIANTS, get_variant
from tests.models.training.cases import sphere_case

TEXT = np.random.default_rng(0).standard_normal((2, 384)).astype(np.float32)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _data() -> TrainingData:
    return TrainingData(
        train=[sphere_case(s, task="ce" if s % 2 else "crn", text_index=s % 2) for s in range(4)],
        validation=[sphere_case(10, task="ce", text_index=1)],
        text_features=TEXT,
        prompts=["prompt a", "prompt b"],
        data_hash="abc123",
    )


def _settings(**changes: object) -> TrainSettings:
    base = {"config": "tiny", "epochs": 2, "batch_size": 2, "samples_per_epoch": 4, "validate_every": 1}
    return TrainSettings(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_lowers_its_loss_on_a_fixed_batch(variant: str) -> None:
    torch.manual_seed(0)
    v = get_variant(variant)
    model = build_model(v.network_config(build_model("tiny").config)).train()
    rng = np.random.default_rng(0)
    batch = collate([make_sample(c, 32, rng) for c in _data().train])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    settings = _settings(variant=variant)
    text = torch.from_numpy(TEXT) if v.text else None
    losses = []
    for _ in range(20):
        loss = training_step(model, batch, text, v, settings, np.random.default_rng(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all()
    # The Dice-type losses start flat (p = 0.5 over a large r), then fall: 20 steps suffice.
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_network_has_only_the_branches_its_variant_uses() -> None:
    base = build_model("tiny").config
    assert get_variant("base").network_config(base).text_dim is None
    assert not get_variant("base-t").network_config(base).box_prompt
    assert get_variant("base-t").network_config(base).text_dim == 384
    assert get_variant("base-t-b-c-l").network_config(base) == base


def test_a_run_writes_a_self_describing_checkpoint_and_a_log(tmp_path: Path) -> None:
    result = train(_data(), _settings(), tmp_path, code_version="9.9.9+gabc")
    assert result.epochs_run == 2 and result.checkpoint == tmp_path / FINAL_CHECKPOINT
    for name in (FINAL_CHECKPOINT, LAST_CHECKPOINT, STATE_FILE, LOG_FILE):
        assert (tmp_path / name).is_file()
    loaded = load_checkpoint(result.checkpoint)
    meta = loaded.metadata
    assert loaded.config.name == "tiny"
    assert meta["data"]["hash"] == "abc123"
    assert meta["data"]["train"] == [f"{'crn' if s % 2 == 0 else 'ce'}-sphere-{s}" for s in range(4)]
    assert meta["data"]["validation"] == ["ce-sphere-10"]
    assert meta["code_version"] == "9.9.9+gabc"
    assert meta["settings"]["lr"] == 3e-4 and meta["settings"]["weight_decay"] == 0.01
    assert meta["prompts"] == ["prompt a", "prompt b"]
    lines = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert 0.0 <= lines[-1]["validation"]["dice"] <= 1.0 and "dice_ce" in lines[-1]["validation"]
    assert meta["validation"] == lines[-1]["validation"]
    best = load_checkpoint(tmp_path / BEST_CHECKPOINT).metadata["validation"]["dice"]
    assert best == max(r["validation"]["dice"] for r in lines)
    assert meta["settings"]["grad_clip"] == 1.0


def test_same_seed_same_weights_and_resume_continues_the_same_run(tmp_path: Path) -> None:
    straight = train(_data(), _settings(epochs=3), tmp_path / "straight")
    twice = train(_data(), _settings(epochs=3), tmp_path / "twice")
    first = load_checkpoint(straight.checkpoint).model.state_dict()
    second = load_checkpoint(twice.checkpoint).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)

    # Interrupted (Ctrl-C) in the third epoch, then resumed: the same weights as in one go.
    def interrupt_in_third_epoch(epoch: int, step: int, loss: float) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_data(), _settings(epochs=3), tmp_path / "resumed", progress=interrupt_in_third_epoch)
    assert not (tmp_path / "resumed" / FINAL_CHECKPOINT).exists()
    resumed = train(_data(), _settings(epochs=3), tmp_path / "resumed", resume=True)
    assert resumed.epochs_run == 3
    third = load_checkpoint(resumed.checkpoint).model.state_dict()
    assert all(torch.allclose(first[k], third[k], atol=1e-6) for k in first)


def test_milestones_drop_the_learning_rate_tenfold(tmp_path: Path) -> None:
    train(_data(), _settings(epochs=4, milestones=(0.5,), validate_every=10), tmp_path)
    rates = [json.loads(line)["lr"] for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert (
        rates[0] == pytest.approx(3e-4)
        and rates[1] == pytest.approx(3e-5)
        and rates[3] == pytest.approx(3e-5)
    )


def test_a_resumed_run_given_more_epochs_moves_its_milestones(tmp_path: Path) -> None:
    train(_data(), _settings(epochs=2, milestones=(0.9,), validate_every=10), tmp_path)
    train(_data(), _settings(epochs=4, milestones=(0.9,), validate_every=10), tmp_path, resume=True)
    rates = [json.loads(line)["lr"] for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    # The first plan dropped the rate after epoch 2 (its end); the longer plan, whose milestone
    # is epoch 4, runs epochs 3 and 4 at the full rate and drops it after epoch 4.
    assert rates == pytest.approx([3e-4, 3e-5, 3e-4, 3e-5])


def test_pretrained_weights_keep_the_image_encoder_frozen(tmp_path: Path) -> None:
    torch.manual_seed(7)
    pretrained = tmp_path / "pretrained.pt"
    from models.checkpoint import save_checkpoint

    save_checkpoint(build_model("tiny"), pretrained)
    result = train(_data(), _settings(epochs=1, validate_every=10), tmp_path / "run", pretrained=pretrained)
    before = load_checkpoint(pretrained).model
    after = load_checkpoint(result.checkpoint).model
    encoder_before, encoder_after = before.image_encoder.state_dict(), after.image_encoder.state_dict()
    assert all(torch.equal(encoder_before[k], encoder_after[k]) for k in encoder_before)
    decoder_before, decoder_after = before.mask_decoder.state_dict(), after.mask_decoder.state_dict()
    assert any(not torch.equal(decoder_before[k], decoder_after[k]) for k in decoder_before)
