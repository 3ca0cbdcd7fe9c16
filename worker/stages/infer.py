"""Infer stage: follow-up image + high-dose region + text features → lesion mask on the follow-up.

The predictor places its crops around r's box, embeds them and decodes with the prompts the
network was trained with: the box corners when it has a box branch, the text features when it
has a text branch (a network without one gets neither, so ablation variants are evaluated on the
prompts they were built for). The mask is then gated by r dilated by a margin: the focus loss
never saw voxels outside r, so nothing the network says there is trusted (DESIGN §1).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from models.predictor import Click, PatientBox, Prediction, SegmentingPredictor
from worker.stages.prompts import HighDoseRegion

DEFAULT_GATE_MARGIN_MM = 3.0
#: Specks smaller than this are dropped: 0.05 cc is a sphere of 2.3 mm radius, below what a
#: reader would report as a lesion and far below the smallest lesion of the training data.
DEFAULT_MIN_COMPONENT_CC = 0.05


@dataclass(frozen=True)
class InferenceOptions:
    #: How far outside r (mm) a predicted voxel may lie and still be kept.
    gate_margin_mm: float = DEFAULT_GATE_MARGIN_MM
    #: Connected components (26-neighbourhood) smaller than this are removed; 0 keeps all.
    min_component_cc: float = DEFAULT_MIN_COMPONENT_CC


@dataclass
class InferenceResult:
    """The lesion mask (UInt8, follow-up grid), the raw prediction for refinement, timings."""

    mask: sitk.Image
    prediction: Prediction
    encode_seconds: float
    decode_seconds: float
    gated_voxels: int


def infer_lesion(
    predictor: SegmentingPredictor,
    image: sitk.Image,
    region: HighDoseRegion,
    text_features: np.ndarray | None,
    *,
    clicks: Sequence[Click] = (),
    options: InferenceOptions | None = None,
) -> InferenceResult:
    """Segment the lesion of one follow-up inside its high-dose region."""
    start = time.perf_counter()
    predictor.set_volume(image, focus=region_box(region))
    encode = time.perf_counter() - start
    return decode_lesion(
        predictor, image, region, text_features, clicks=clicks, options=options, encode_seconds=encode
    )


def decode_lesion(
    predictor: SegmentingPredictor,
    image: sitk.Image,
    region: HighDoseRegion,
    text_features: np.ndarray | None,
    *,
    clicks: Sequence[Click] = (),
    previous: Prediction | None = None,
    options: InferenceOptions | None = None,
    encode_seconds: float = 0.0,
) -> InferenceResult:
    """The decoder alone on the volume the predictor already holds (a refinement with clicks
    reuses the embedding; ``previous`` is the last prediction, given as the mask prompt)."""
    options = options or InferenceOptions()
    config = predictor.config
    box = region_box(region)
    prediction = predictor.predict(
        box=box if config.box_prompt else None,
        clicks=clicks,
        text_features=text_features if config.text_dim is not None else None,
        previous=previous,
    )
    mask = sitk.GetArrayFromImage(prediction.mask_on(image)).astype(bool)
    allowed = gate_region(region.mask, image.GetSpacing(), options.gate_margin_mm)
    gated = int(np.count_nonzero(mask & ~allowed))
    kept = drop_small_components(mask & allowed, image.GetSpacing(), options.min_component_cc)
    out = sitk.GetImageFromArray(kept.astype(np.uint8))
    out.CopyInformation(image)
    return InferenceResult(out, prediction, encode_seconds, prediction.decode_seconds, gated)


def region_box(region: HighDoseRegion) -> PatientBox:
    """The box prompt: the corners of r's bounding box in patient coordinates."""
    return PatientBox(np.asarray(region.corners_mm, dtype=np.float64))


def gate_region(region: np.ndarray, spacing_xyz: Sequence[float], margin_mm: float) -> np.ndarray:
    """r dilated by ``margin_mm`` in physical distance; ``region`` is a (slices, rows, cols) array."""
    if margin_mm <= 0:
        return region.astype(bool)
    # Physical distance to r on an anisotropic grid: the EDT takes the spacing per array axis.
    distance = ndimage.distance_transform_edt(~region.astype(bool), sampling=tuple(reversed(spacing_xyz)))
    return np.asarray(distance <= margin_mm)


def drop_small_components(mask: np.ndarray, spacing_xyz: Sequence[float], min_cc: float) -> np.ndarray:
    """``mask`` without its connected components (26-neighbourhood) smaller than ``min_cc``."""
    if min_cc <= 0 or not mask.any():
        return mask
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    voxel_cc = float(np.prod(spacing_xyz)) / 1000.0
    sizes_cc = np.bincount(labels.ravel(), minlength=count + 1) * voxel_cc
    keep = sizes_cc >= min_cc
    keep[0] = False
    return np.asarray(keep[labels])
