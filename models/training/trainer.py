"""The training loop (paper §3.3, §4.1), written to be read top to bottom like nanoGPT's train.py.

One step: a batch of augmented crops → image embeddings → a first decoder pass with the
variant's prompts (box corners, text features, zero mask prompt) → optionally
``clicks.iterations`` refinement passes, each adding clicks simulated from the current errors
and feeding the previous low-resolution logits back as the mask prompt → the loss of every pass,
averaged → AdamW step. The learning rate drops ×0.1 at the milestones (MultiStepLR).

Everything that decides the result is in :class:`TrainSettings` and goes into the checkpoint
with the data split, the data hash, the validation metrics and the code version. A run can be
resumed from its last epoch; seeds make two runs on the same data give the same weights.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.build import build_model
from models.checkpoint import load_for_finetuning, save_checkpoint
from models.config import get_config
from models.errors import ModelError
from models.files import write_atomically
from models.modeling.network import Sam3D
from models.modeling.prompt_encoder import BOX_MAX_LABEL, BOX_MIN_LABEL, PAD_LABEL
from models.predictor import PatientBox, Predictor, SegmentingPredictor
from models.runtime import TorchBackend
from models.training.augment import AugmentationSettings, Augmenter
from models.training.clicks import ClickSimulation, simulate_clicks
from models.training.dataset import TrainingCase, collate, make_sample
from models.training.losses import FocusLossWeights, dice_ce_loss, small_target_focus_loss
from models.training.variants import FULL_MODEL, Variant, get_variant
from models.transforms import WorkingGrid

logger = logging.getLogger(__name__)

STATE_FILE = "train-state.pt"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
FINAL_CHECKPOINT = "model.pt"
LOG_FILE = "log.jsonl"
#: Margin (voxels = mm) around r inside which validation predictions are kept, as at inference.
VALIDATION_GATE_MM = 3


@dataclass(frozen=True)
class TrainSettings:
    config: str = "small-64"
    variant: str = FULL_MODEL
    #: "sam" (our network) or one of the paper's MONAI baselines (models.training.baselines).
    arch: str = "sam"
    #: Baselines only: "paper" widths or "tiny" (tests, CI).
    baseline_width: str = "paper"
    epochs: int = 100
    batch_size: int = 4
    #: Crops per epoch; default one per training case.
    samples_per_epoch: int | None = None
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    #: Epoch fractions at which the learning rate drops ×0.1.
    milestones: tuple[float, ...] = (0.7, 0.9)
    seed: int = 0
    clicks: ClickSimulation = field(default_factory=ClickSimulation)
    loss: FocusLossWeights = field(default_factory=FocusLossWeights)
    augmentation: AugmentationSettings | None = field(default_factory=AugmentationSettings)
    validate_every: int = 5
    #: Largest gradient norm per step. Training from scratch (no pretrained encoder) at the
    #: paper's lr diverged without it: one large step saturated the logits and the Dice-type
    #: loss cannot pull saturated sigmoids back.
    grad_clip: float | None = 1.0
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainingData:
    """Cases in memory, the text features of their prompts, the split and where they came from."""

    train: list[TrainingCase]
    validation: list[TrainingCase]
    text_features: np.ndarray
    prompts: list[str]
    data_hash: str


@dataclass
class TrainResult:
    checkpoint: Path
    weights_sha256: str
    epochs_run: int
    history: list[dict[str, Any]]
    validation: dict[str, float]


Progress = Callable[[int, int, float], None]


def train(
    data: TrainingData,
    settings: TrainSettings,
    out_dir: Path,
    *,
    pretrained: Path | None = None,
    resume: bool = False,
    code_version: str = "",
    progress: Progress | None = None,
) -> TrainResult:
    """Train one network on ``data``; checkpoints and a JSON-lines log go to ``out_dir``."""
    if not data.train:
        raise ModelError("no training cases")
    out_dir.mkdir(parents=True, exist_ok=True)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    seed_everything(settings.seed)
    variant = get_variant(settings.variant)
    model = _initial_model(variant, settings, pretrained)
    optimizer, scheduler = _optimizer(model, settings)
    rng = np.random.default_rng(settings.seed)
    first_epoch, history = 0, list[dict[str, Any]]()
    if resume:
        first_epoch, history, rng = _resume(out_dir, model, optimizer, scheduler)
        # A resumed run may be given another number of epochs: its milestones, and the rate at
        # the epoch it resumes from, follow the new plan.
        milestones = _milestones(settings)
        scheduler.milestones = Counter(milestones)
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * 0.1 ** sum(m <= first_epoch for m in milestones)
    run = _Run(model, data, settings, variant, optimizer, rng, progress)
    for epoch in range(first_epoch, settings.epochs):
        started = time.perf_counter()
        losses = run.epoch(epoch)
        scheduler.step()
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - started, 2),
        }
        last_epoch = epoch + 1 == settings.epochs
        if data.validation and ((epoch + 1) % settings.validate_every == 0 or last_epoch):
            record["validation"] = validate(model, data.validation, data.text_features, variant)
        history.append(record)
        _append_log(out_dir, record)
        _save_epoch(model, settings, out_dir, _metadata(settings, data, history, code_version), history)
        _save_state(out_dir, optimizer, scheduler, epoch + 1, history, run.rng)
    metadata = _metadata(settings, data, history, code_version)
    sha = _save_model(model, settings, out_dir / FINAL_CHECKPOINT, metadata)
    return TrainResult(out_dir / FINAL_CHECKPOINT, sha, len(history), history, _last_validation(history))


class _Run:
    """One run's moving parts: draws batches, takes steps."""

    def __init__(
        self,
        model: nn.Module,
        data: TrainingData,
        settings: TrainSettings,
        variant: Variant,
        optimizer: torch.optim.Optimizer,
        rng: np.random.Generator,
        progress: Progress | None,
    ) -> None:
        self.model, self.data, self.settings, self.variant = model, data, settings, variant
        self.optimizer, self.rng, self.progress = optimizer, rng, progress
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.crop = get_config(settings.config).img_size
        self.augment = Augmenter(settings.augmentation) if settings.augmentation else None
        self.text = torch.from_numpy(data.text_features.astype(np.float32)) if variant.text else None
        per_epoch = settings.samples_per_epoch or len(data.train)
        self.steps = max(1, math.ceil(per_epoch / settings.batch_size))

    def epoch(self, epoch: int) -> list[float]:
        self.model.train()
        losses = []
        for step in range(self.steps):
            losses.append(self.step())
            if self.progress:
                self.progress(epoch, step, losses[-1])
        return losses

    def step(self) -> float:
        settings, train_cases = self.settings, self.data.train
        cases = [train_cases[i] for i in self.rng.integers(len(train_cases), size=settings.batch_size)]
        batch = collate([make_sample(c, self.crop, self.rng, self.augment) for c in cases])
        if isinstance(self.model, Sam3D):
            loss = training_step(self.model, batch, self.text, self.variant, settings, self.rng)
        else:
            loss = baseline_step(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, settings.grad_clip)
        self.optimizer.step()
        return float(loss.detach())


def _optimizer(
    model: nn.Module, settings: TrainSettings
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.MultiStepLR]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay
    )
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=_milestones(settings), gamma=0.1
    )


def _milestones(settings: TrainSettings) -> list[int]:
    return sorted({max(1, round(m * settings.epochs)) for m in settings.milestones})


def _save_epoch(
    model: nn.Module,
    settings: TrainSettings,
    out_dir: Path,
    metadata: dict[str, Any],
    history: list[dict[str, Any]],
) -> None:
    _save_model(model, settings, out_dir / LAST_CHECKPOINT, metadata)
    record = history[-1]
    if "validation" in record and record["validation"]["dice"] >= _best_dice(history[:-1]):
        # Chosen on the validation split (patients of the training data), never the test set.
        _save_model(model, settings, out_dir / BEST_CHECKPOINT, metadata)


def _last_validation(history: list[dict[str, Any]]) -> dict[str, float]:
    return next((r["validation"] for r in reversed(history) if "validation" in r), {})


def training_step(
    model: Sam3D,
    batch: dict[str, np.ndarray],
    text_features: torch.Tensor | None,
    variant: Variant,
    settings: TrainSettings,
    rng: np.random.Generator,
) -> torch.Tensor:
    """The loss of one batch: first pass, then the click-refinement passes (averaged)."""
    image = torch.from_numpy(batch["image"])
    lesion = torch.from_numpy(batch["lesion"])
    roi = torch.from_numpy(batch["roi"])
    size = model.config.img_size
    low = model.config.low_res_size
    text = None if text_features is None else text_features[torch.from_numpy(batch["text_index"])]
    embeddings = model.embed(image)
    coords, labels = _prompt_points(batch["box"], variant)
    mask_input = torch.zeros(image.shape[0], 1, low, low, low)
    generator = torch.Generator().manual_seed(int(rng.integers(2**31 - 1)))
    passes = 1 + (settings.clicks.iterations if variant.clicks else 0)
    total = torch.zeros(())
    low_res, _ = model.decode(embeddings, coords, labels, mask_input, text)
    logits_full = F.interpolate(low_res, size=(size,) * 3, mode="trilinear", align_corners=False)
    for index in range(passes):
        if index:
            # Clicks where the last pass was wrong; its logits become the mask prompt.
            new_coords, new_labels = simulate_clicks(
                logits_full.detach() > 0, lesion > 0.5, settings.clicks.clicks_per_iteration, generator
            )
            coords = torch.cat([new_coords, coords], dim=1)
            labels = torch.cat([new_labels, labels], dim=1)
            low_res, _ = model.decode(embeddings, coords, labels, low_res.detach(), text)
            logits_full = F.interpolate(low_res, size=(size,) * 3, mode="trilinear", align_corners=False)
        if variant.focus_loss:
            total = total + small_target_focus_loss(logits_full, lesion, roi, settings.loss)
        else:
            total = total + dice_ce_loss(logits_full, lesion)
    return total / passes


def _best_dice(history: list[dict[str, Any]]) -> float:
    return max((r["validation"]["dice"] for r in history if "validation" in r), default=-1.0)


def baseline_step(model: nn.Module, batch: dict[str, np.ndarray]) -> torch.Tensor:
    """A plain segmentation network: logits of the whole crop, Dice + CE (as the paper trains them)."""
    logits = model(torch.from_numpy(batch["image"]))
    return dice_ce_loss(logits, torch.from_numpy(batch["lesion"]))


def _prompt_points(box: np.ndarray, variant: Variant) -> tuple[torch.Tensor, torch.Tensor]:
    """Box corners (labels 2, 3) for box variants, else upstream's padding point."""
    batch = box.shape[0]
    if variant.box:
        labels = torch.tensor([[BOX_MIN_LABEL, BOX_MAX_LABEL]] * batch, dtype=torch.long)
        return torch.from_numpy(box.astype(np.float32)), labels
    return torch.zeros(batch, 1, 3), torch.full((batch, 1), PAD_LABEL, dtype=torch.long)


def validate(
    model: nn.Module, cases: Sequence[TrainingCase], text_features: np.ndarray, variant: Variant
) -> dict[str, float]:
    """Dice on whole validation cases through the predictor (tiles over r's box, no clicks,
    gated by r), on the 1 mm working grid of the cache."""
    predictor = _predictor(model)
    scores: dict[str, list[float]] = {}
    try:
        for case in cases:
            shape = case.image.shape
            grid = WorkingGrid(origin=(0.0, 0.0, 0.0), size=(shape[0], shape[1], shape[2]))
            corners = grid.index_to_patient(np.stack([case.box_lo, case.box_hi]))
            box = PatientBox.from_corners(corners.min(axis=0), corners.max(axis=0))
            predictor.set_working_volume(grid, case.image, box, case.pad_value)
            prediction = predictor.predict(
                box=box if predictor.config.box_prompt else None,
                text_features=text_features[case.text_index] if predictor.config.text_dim else None,
            )
            allowed = _dilate(case.roi > 0, VALIDATION_GATE_MM)
            predicted = prediction.mask() & allowed
            truth = case.lesion > 0
            overlap = 2.0 * float(np.count_nonzero(predicted & truth))
            dice = overlap / max(float(np.count_nonzero(predicted) + np.count_nonzero(truth)), 1.0)
            scores.setdefault(case.task, []).append(dice)
    finally:
        model.train()
    result = {f"dice_{task}": float(np.mean(v)) for task, v in sorted(scores.items())}
    result["dice"] = float(np.mean([d for v in scores.values() for d in v]))
    return result


def _predictor(model: nn.Module) -> SegmentingPredictor:
    if isinstance(model, Sam3D):
        return Predictor(TorchBackend(model, device="cpu"))
    from models.training.baselines import DenseConfig, DensePredictor

    return DensePredictor(model, DenseConfig(name="baseline", img_size=_baseline_crop(model)))


def _dilate(mask: np.ndarray, voxels: int) -> np.ndarray:
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(~mask)
    return np.asarray(distance <= voxels)


def _initial_model(variant: Variant, settings: TrainSettings, pretrained: Path | None) -> nn.Module:
    if settings.arch != "sam":
        from models.training.baselines import build_baseline

        if pretrained is not None:
            raise ModelError("pretrained weights are for the SAM network; baselines train from scratch")
        size = get_config(settings.config).img_size
        model = build_baseline(settings.arch, size, width=settings.baseline_width)
        model.crop_size = size  # type: ignore[assignment]  # remembered for validation and saving
        return model.train()
    config = variant.network_config(get_config(settings.config))
    if pretrained is None:
        return build_model(config).train()
    # Pretrained weights: the image encoder stays frozen (paper §3.1), the rest adapts.
    model = load_for_finetuning(pretrained, config=config).model
    return model.train()


def _baseline_crop(model: nn.Module) -> int:
    return int(model.crop_size)  # type: ignore[arg-type]


def _save_model(model: nn.Module, settings: TrainSettings, path: Path, metadata: dict[str, Any]) -> str:
    if isinstance(model, Sam3D):
        return save_checkpoint(model, path, metadata)
    from models.training.baselines import save_baseline

    return save_baseline(model, settings.arch, _baseline_crop(model), settings.baseline_width, path, metadata)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _metadata(
    settings: TrainSettings, data: TrainingData, history: list[dict[str, Any]], code_version: str
) -> dict[str, Any]:
    return {
        "kind": "rtinjury.trained-model",
        "settings": settings.to_dict(),
        "variant": settings.variant if settings.arch == "sam" else settings.arch,
        "epochs_run": len(history),
        "data": {
            "hash": data.data_hash,
            "train": [c.case_id for c in data.train],
            "validation": [c.case_id for c in data.validation],
            "tasks": sorted({c.task for c in data.train}),
        },
        "prompts": data.prompts,
        "validation": _last_validation(history),
        "final_loss": history[-1]["loss"] if history else None,
        "code_version": code_version,
    }


def _append_log(out_dir: Path, record: dict[str, Any]) -> None:
    with (out_dir / LOG_FILE).open("a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")


def _save_state(
    out_dir: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epochs_done: int,
    history: list[dict[str, Any]],
    rng: np.random.Generator,
) -> None:
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epochs_done": epochs_done,
        "history": history,
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
    }
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomically(out_dir / STATE_FILE, buffer.getvalue())


def _resume(
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[int, list[dict[str, Any]], np.random.Generator]:
    from models.checkpoint import load_checkpoint

    state_path, last = out_dir / STATE_FILE, out_dir / LAST_CHECKPOINT
    if not (state_path.is_file() and last.is_file()):
        raise ModelError(f"{out_dir}: nothing to resume ({STATE_FILE} and {LAST_CHECKPOINT} are needed)")
    if isinstance(model, Sam3D):
        model.load_state_dict(load_checkpoint(last).model.state_dict())
    else:
        from models.training.baselines import load_baseline

        model.load_state_dict(load_baseline(last).model.state_dict())
    # Our own file, written by _save_state: optimizer tensors, plain numbers and lists.
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    rng = np.random.default_rng()
    rng.bit_generator.state = state["numpy_rng"]
    return int(state["epochs_done"]), list(state["history"]), rng
