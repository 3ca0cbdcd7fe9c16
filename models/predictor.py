"""Interactive prediction (SAM's ``SamPredictor``): embed once, decode many times.

``set_volume`` resamples the follow-up image to the working grid, normalises it, places the
crop(s) around the focus box (tiles when the box exceeds one crop) and runs the image encoder
once per crop. ``predict`` turns patient-space prompts (box corners, clicks) into crop voxel
coordinates, runs prompt encoder + decoder per crop, and pastes the logits back; the previous
prediction's low-resolution logits can feed back as the mask prompt, as in training.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import SimpleITK as sitk
import torch
from torch.nn import functional as F

from models.errors import PromptInputError
from models.modeling.prompt_encoder import BOX_MAX_LABEL, BOX_MIN_LABEL, PAD_LABEL
from models.runtime import InferenceBackend
from models.transforms import Crop, WorkingGrid, covered_region, foreground_stats, plan_crops

# Logit given to working-grid voxels that no crop covers: certainly background.
OUTSIDE_LOGIT = -20.0


@dataclass(frozen=True)
class PatientBox:
    """A box given by points in patient space (LPS mm), e.g. the 8 corners of r's index box.

    Its extent on the working grid is the bounding box of the points' working indices.
    """

    points: np.ndarray

    @classmethod
    def from_corners(cls, corner_min: Sequence[float], corner_max: Sequence[float]) -> PatientBox:
        lo, hi = np.asarray(corner_min, dtype=np.float64), np.asarray(corner_max, dtype=np.float64)
        corners = [[(lo, hi)[b][axis] for axis, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)]
        return cls(np.asarray(corners, dtype=np.float64))

    def on_grid(self, grid: WorkingGrid) -> tuple[np.ndarray, np.ndarray]:
        indices = grid.patient_to_index(np.asarray(self.points).reshape(-1, 3))
        return np.round(indices.min(axis=0)), np.round(indices.max(axis=0))


@dataclass(frozen=True)
class Click:
    point_mm: tuple[float, float, float]
    positive: bool


@dataclass
class Prediction:
    """Logits on the working grid, the low-resolution logits per crop, and where they came from."""

    grid: WorkingGrid
    logits: np.ndarray
    low_res: list[np.ndarray]
    crops: list[Crop]
    notes: list[str] = field(default_factory=list)
    decode_seconds: float = 0.0

    def mask(self) -> np.ndarray:
        """Binary lesion mask on the working grid (logit > 0, i.e. probability > 0.5)."""
        return self.logits > 0

    def mask_on(self, reference: sitk.Image) -> sitk.Image:
        """The lesion mask on another grid (e.g. the follow-up series), UInt8.

        Logits are interpolated linearly and then thresholded, which keeps the boundary where
        the network put it rather than snapping it to 1 mm voxels.
        """
        logits = sitk.Resample(
            self.grid.to_image(self.logits.astype(np.float32)),
            reference,
            sitk.Transform(),
            sitk.sitkLinear,
            OUTSIDE_LOGIT,
            sitk.sitkFloat32,
        )
        return sitk.Cast(logits > 0.0, sitk.sitkUInt8)


class SegmentingPredictor(Protocol):
    """What the infer stage and validation need of a predictor: ours or a plain baseline's.

    ``config`` tells which prompts the network takes (``box_prompt``, ``text_dim``) and its crop
    side (``img_size``).
    """

    config: Any

    def set_volume(self, image: sitk.Image, focus: PatientBox | None = None) -> None: ...

    def state_arrays(self) -> dict[str, np.ndarray]: ...

    def restore_state(self, arrays: Mapping[str, np.ndarray]) -> None: ...

    def set_working_volume(
        self, grid: WorkingGrid, volume: np.ndarray, focus: PatientBox, pad_value: float
    ) -> None: ...

    def predict(
        self,
        *,
        box: PatientBox | None = None,
        clicks: Sequence[Click] = (),
        text_features: np.ndarray | None = None,
        previous: Prediction | None = None,
    ) -> Prediction: ...


@dataclass
class _CropState:
    """One volume's crops and what the network computed once per crop (embeddings, or logits)."""

    grid: WorkingGrid
    crops: list[Crop]
    per_crop: list[np.ndarray]
    encode_seconds: float


def working_crops(
    image: sitk.Image, focus: PatientBox | None, crop_size: int
) -> tuple[WorkingGrid, np.ndarray, list[Crop], float]:
    """The working grid, normalised volume, crops and pad value that ``Predictor.set_volume`` uses.

    Shared by :class:`Predictor` and the plain baselines' predictor, so that every network
    sees exactly the same voxels.

    Returns
    -------
    grid
        The part of the 1 mm working grid the crops cover.
    volume
        The image on ``grid``, z-scored by the series' own foreground statistics.
    crops
        Crop positions on ``grid`` (they may reach beyond it).
    pad_value
        The normalised value of raw 0, for crop voxels outside ``grid``.
    """
    mean, std = foreground_stats(sitk.GetArrayViewFromImage(image))
    full = WorkingGrid.covering(image)
    if focus is None:
        lo = hi = (np.asarray(full.size) - 1) / 2.0
    else:
        lo, hi = focus.on_grid(full)
    planned = plan_crops(lo, hi, crop_size)
    region_start, region_size = covered_region(planned, full.size)
    grid = full.sub_grid(region_start, region_size)
    crops = [crop.shifted([-v for v in region_start]) for crop in planned]
    volume = ((grid.resample(image) - mean) / std).astype(np.float32)
    return grid, volume, crops, -mean / std


def average_tiles(grid: WorkingGrid, crops: Sequence[Crop], crop_logits: Sequence[np.ndarray]) -> np.ndarray:
    """Crop logits (each size³) averaged on the working grid where tiles overlap;
    ``OUTSIDE_LOGIT`` where no crop covers."""
    logits_sum = np.zeros(grid.size, dtype=np.float32)
    counts = np.zeros(grid.size, dtype=np.float32)
    for crop, values in zip(crops, crop_logits, strict=True):
        crop.add_into(logits_sum, values.reshape((crop.size,) * 3), counts)
    return np.where(counts > 0, logits_sum / np.maximum(counts, 1), OUTSIDE_LOGIT).astype(np.float32)


class CropPredictor(ABC):
    """The volume side both predictors share: crops of the working grid, one network run per crop.

    Subclasses say what a run is (:meth:`_run_crop`) and how ``predict`` turns the per-crop
    results into a :class:`Prediction`.
    """

    config: Any

    def __init__(self) -> None:
        self._state: _CropState | None = None

    @property
    def is_volume_set(self) -> bool:
        return self._state is not None

    @property
    def encode_seconds(self) -> float:
        return self._state.encode_seconds if self._state else 0.0

    def reset(self) -> None:
        self._state = None

    def set_volume(self, image: sitk.Image, focus: PatientBox | None = None) -> None:
        """Place the crops around ``focus`` (default: the volume's centre), resample and normalise
        the part of the image they cover, run the network once per crop.

        The normalisation statistics are those of the series' own voxels (> 0): they do not
        depend on where the crops fall or on the working grid, and a 512×512×300 CT is not
        resampled to 30 million 1 mm voxels for one 128³ crop. (A 1 mm resampling of a scan with
        thick slices gives a std up to ~10 % lower, from interpolated edges; training and
        inference share this function, so the convention is the same on both sides.)
        """
        self._run_crops(*working_crops(image, focus, self.config.img_size))

    def set_working_volume(
        self, grid: WorkingGrid, volume: np.ndarray, focus: PatientBox, pad_value: float
    ) -> None:
        """Like :meth:`set_volume` for a block already on the working grid and normalised (the
        training cache), so validation during training takes the inference path."""
        lo, hi = focus.on_grid(grid)
        crops = plan_crops(lo, hi, self.config.img_size)
        self._run_crops(grid, np.asarray(volume, dtype=np.float32), crops, pad_value)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """What :meth:`set_volume` computed, as plain arrays (for ``np.savez``: no pickles), so that
        another process can decode again, with clicks, without running the encoder again."""
        state = self._require_volume()
        return {
            "grid_origin": np.asarray(state.grid.origin, dtype=np.float64),
            "grid_size": np.asarray(state.grid.size, dtype=np.int64),
            "grid_spacing": np.asarray(state.grid.spacing, dtype=np.float64),
            "crop_starts": np.asarray([crop.start for crop in state.crops], dtype=np.int64),
            "crop_sizes": np.asarray([crop.size for crop in state.crops], dtype=np.int64),
            "per_crop": np.stack(state.per_crop),
            "encode_seconds": np.asarray(state.encode_seconds),
        }

    def restore_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """The state :meth:`state_arrays` gave, as if :meth:`set_volume` had just run."""
        ox, oy, oz = (float(v) for v in arrays["grid_origin"])
        sx, sy, sz = (int(v) for v in arrays["grid_size"])
        grid = WorkingGrid((ox, oy, oz), (sx, sy, sz), float(arrays["grid_spacing"]))
        crops = [
            Crop((int(start[0]), int(start[1]), int(start[2])), int(size))
            for start, size in zip(arrays["crop_starts"], arrays["crop_sizes"], strict=True)
        ]
        per_crop = list(np.asarray(arrays["per_crop"]))
        self._state = _CropState(grid, crops, per_crop, float(arrays["encode_seconds"]))

    def _run_crops(self, grid: WorkingGrid, volume: np.ndarray, crops: list[Crop], pad_value: float) -> None:
        start = time.perf_counter()
        per_crop = [self._run_crop(crop.extract(volume, pad_value)) for crop in crops]
        self._state = _CropState(grid, crops, per_crop, time.perf_counter() - start)

    @abstractmethod
    def _run_crop(self, crop_volume: np.ndarray) -> np.ndarray:
        """The network on one normalised (S, S, S) crop."""

    def _require_volume(self) -> _CropState:
        if self._state is None:
            raise PromptInputError("no volume set: call set_volume() before predict()")
        return self._state


class Predictor(CropPredictor):
    def __init__(self, backend: InferenceBackend) -> None:
        super().__init__()
        self.backend = backend
        self.config = backend.config

    def _run_crop(self, crop_volume: np.ndarray) -> np.ndarray:
        return self.backend.embed(crop_volume[None, None])

    def predict(
        self,
        *,
        box: PatientBox | None = None,
        clicks: Sequence[Click] = (),
        text_features: np.ndarray | None = None,
        previous: Prediction | None = None,
    ) -> Prediction:
        state = self._require_volume()
        text = self._text_input(text_features)
        notes: list[str] = []
        size = self.config.low_res_size
        low_res: list[np.ndarray] = []
        start = time.perf_counter()
        for i, (crop, embedding) in enumerate(zip(state.crops, state.per_crop, strict=True)):
            coords, labels = self._crop_prompts(state.grid, crop, box, clicks, notes)
            mask_input = self._mask_input(previous, i, size)
            crop_logits, _ = self.backend.decode(embedding, coords, labels, mask_input, text)
            low_res.append(crop_logits)
        prediction = self.prediction_from_low_res(low_res)
        prediction.notes = sorted(set(notes))
        prediction.decode_seconds = time.perf_counter() - start
        return prediction

    def prediction_from_low_res(self, low_res: Sequence[np.ndarray]) -> Prediction:
        """The prediction that per-crop low-resolution logits (one per crop of the current
        volume) stand for: upsampled and averaged on the working grid as :meth:`predict` does."""
        state = self._require_volume()
        full_size = [
            _upsample(crop_logits, crop.size) for crop, crop_logits in zip(state.crops, low_res, strict=True)
        ]
        logits = average_tiles(state.grid, state.crops, full_size)
        return Prediction(state.grid, logits, list(low_res), list(state.crops))

    def _text_input(self, text_features: np.ndarray | None) -> np.ndarray | None:
        text_dim = self.config.text_dim
        if text_dim is None:
            if text_features is not None:
                raise PromptInputError(
                    f"the {self.config.name} network has no text branch; omit text features"
                )
            return None
        if text_features is None:
            raise PromptInputError(f"the {self.config.name} network needs text features ({text_dim} values)")
        features = np.asarray(text_features, dtype=np.float32).reshape(1, -1)
        if features.shape[1] != text_dim:
            raise PromptInputError(
                f"text features have {features.shape[1]} values; "
                f"the {self.config.name} network takes {text_dim}"
            )
        return features

    def _crop_prompts(
        self, grid: WorkingGrid, crop: Crop, box: PatientBox | None, clicks: Sequence[Click], notes: list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Clicks inside the crop, then box corners (clipped to the crop) or upstream's padding point."""
        coords: list[np.ndarray] = []
        labels: list[int] = []
        if clicks:
            points = crop.grid_to_crop(grid.patient_to_index(np.array([c.point_mm for c in clicks])))
            inside = crop.contains(points)
            for point, click, keep in zip(points, clicks, inside, strict=True):
                if keep:
                    coords.append(point)
                    labels.append(1 if click.positive else 0)
        if box is not None:
            lo, hi = (crop.grid_to_crop(corner) for corner in box.on_grid(grid))
            lo, hi = np.clip(lo, 0, crop.size - 1), np.clip(hi, 0, crop.size - 1)
            if self.config.box_prompt:
                coords += [lo, hi]
                labels += [BOX_MIN_LABEL, BOX_MAX_LABEL]
            else:
                # Upstream's box-less networks: the box becomes a click at its centre (as the
                # SAM-Med3D CVPR25 baseline does).
                notes.append("this network has no box branch; the box was given as a click at its centre")
                coords.append((lo + hi) / 2)
                labels.append(1)
        if box is None or not self.config.box_prompt:
            coords.append(np.zeros(3))
            labels.append(PAD_LABEL)
        return (
            np.asarray(coords, dtype=np.float32).reshape(1, -1, 3),
            np.asarray(labels, dtype=np.int64).reshape(1, -1),
        )

    def _mask_input(self, previous: Prediction | None, index: int, size: int) -> np.ndarray:
        if previous is None:
            # Upstream always passes a mask prompt, all zeros on the first pass (§4.4).
            return np.zeros((1, 1, size, size, size), dtype=np.float32)
        if len(previous.low_res) != len(self._require_volume().crops):
            raise PromptInputError(
                "the previous prediction was made on other crops; set_volume changed since"
            )
        return np.asarray(previous.low_res[index], dtype=np.float32).reshape(1, 1, size, size, size)


def _upsample(low_res: np.ndarray, size: int) -> np.ndarray:
    """Low-resolution logits → crop size, trilinear, align_corners=False (upstream's postprocess)."""
    tensor = torch.from_numpy(np.ascontiguousarray(low_res, dtype=np.float32)).reshape(
        1, 1, *low_res.shape[-3:]
    )
    return F.interpolate(tensor, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0].numpy()
