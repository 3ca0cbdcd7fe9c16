"""Evaluation through the full pipeline, and the train/evaluate commands on real cached cases."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.build import build_model
from models.checkpoint import load_checkpoint, save_checkpoint
from models.config import get_config
from models.loading import open_model
from models.metrics import METRIC_NAMES
from models.text.registry import open_text_encoder
from models.training.baselines import build_baseline, save_baseline
from models.training.dataset import collate, make_sample
from models.training.trainer import TrainSettings, training_step
from models.training.variants import get_variant
from service.cli.main import main
from worker.training.cases import CacheReport
from worker.training.data import training_data
from worker.training.evaluate import NamedModel, evaluate_folder


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The tiny network on 64 mm crops: a 70 mm box takes a few tiles, not dozens.
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    config = get_config("tiny").with_changes(name="tiny-64", img_size=64, patch_size=8)
    save_checkpoint(build_model(config), path, {"variant": "base-t-b-c-l"})
    return path


@pytest.fixture(scope="module")
def tiny_baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("baseline") / "segresnet.pt"
    save_baseline(build_baseline("segresnet", 64, width="tiny"), "segresnet", 64, "tiny", path)
    return path


def test_a_short_run_on_real_cached_cases_lowers_the_loss(training_cache: tuple[Path, CacheReport]) -> None:
    cache, _ = training_cache
    data = training_data(cache, open_text_encoder(None), validation_fraction=0.0)
    assert len(data.train) == 3 and data.text_features.shape == (3, 384)
    torch.manual_seed(0)
    # Dice + CE: its cross-entropy term falls from the first steps; the focus loss's slow start on
    # real 1 cc lesions needs more steps than a test should take (the sphere tests cover it).
    variant = get_variant("base-t-b-c")
    model = build_model("tiny").train()
    rng = np.random.default_rng(0)
    batch = collate([make_sample(c, 32, rng) for c in data.train])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    text = torch.from_numpy(data.text_features)
    losses = []
    for _ in range(20):
        loss = training_step(
            model, batch, text, variant, TrainSettings(config="tiny"), np.random.default_rng(1)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_every_case_model_and_tau_gets_a_record(
    training_patients: Path, tiny_checkpoint: Path, tiny_baseline: Path
) -> None:
    models = [
        NamedModel("tiny", open_model(tiny_checkpoint)),
        NamedModel("segresnet", open_model(tiny_baseline)),
    ]
    records = evaluate_folder(training_patients, models, open_text_encoder(None), taus=(0.8, 0.7))
    assert len(records) == 3 * 2 * 2
    assert {(r["task"], r["model"], r["tau"]) for r in records} == {
        (t, m, tau) for t in ("orn", "ce", "crn") for m in ("tiny", "segresnet") for tau in (0.8, 0.7)
    }
    for record in records:
        assert "error" not in record
        assert all(name in record for name in METRIC_NAMES)
        assert 0.0 <= record["dice"] <= 1.0 and record["hd95_mm"] >= 0.0
    truth = json.loads((training_patients / "ce-000" / "case.json").read_text())["lesion"]["volume_cc"]
    ce = [r for r in records if r["task"] == "ce"]
    assert all(r["truth_cc"] == pytest.approx(truth, rel=0.12) for r in ce)


def test_a_case_that_cannot_run_is_recorded_with_its_reason(
    training_patients: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(training_patients / "ce-000", data / "ce-000")
    (data / "ce-000" / "planning" / "rtdose.dcm").unlink()
    records = evaluate_folder(
        data, [NamedModel("tiny", open_model(tiny_checkpoint))], open_text_encoder(None)
    )
    assert len(records) == 1 and "RTDOSE" in records[0]["error"]


def test_train_and_evaluate_commands_write_what_they_say(
    training_patients: Path,
    training_cache: tuple[Path, CacheReport],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cache, _ = training_cache
    run = tmp_path / "run"
    code = main(
        ["train", "--data", str(training_patients), "--cache", str(cache), "--out", str(run),
         "--config", "tiny", "--epochs", "1", "--batch-size", "2", "--samples-per-epoch", "2",
         "--threads", "1", "--json"]
    )  # fmt: skip
    assert code == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["epochs_run"] == 1 and trained["train_cases"] == 3
    loaded = load_checkpoint(Path(trained["checkpoint"]))
    assert loaded.metadata["data"]["hash"] == trained["data_hash"]
    out = tmp_path / "evaluation"
    code = main(
        ["evaluate", "--data", str(training_patients), "--weights", trained["checkpoint"], "--labels", "full",
         "--tau", "0.8", "0.7", "--out", str(out), "--json"]
    )  # fmt: skip
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document["files"]) == {"csv", "json", "markdown", "per_task_plot", "tau_plot"}
    rows = list(csv.DictReader((out / "cases.csv").open()))
    assert len(rows) == 6 and {r["model"] for r in rows} == {"full"}
    assert "### Overall" in (out / "summary.md").read_text()
    assert document["models"]["full"] == loaded.model_id


def test_evaluate_refuses_mismatched_labels(training_patients: Path, tiny_checkpoint: Path) -> None:
    code = main(
        [
            "evaluate",
            "--data",
            str(training_patients),
            "--weights",
            str(tiny_checkpoint),
            "--labels",
            "a",
            "b",
        ]
    )
    assert code == 2
