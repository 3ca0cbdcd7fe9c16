"""Evaluation the way the paper does it (§4.2), through the full inference pipeline.

Every follow-up with a ground truth in the data folder goes through assemble → read → register
→ dose → high-dose region (τ) → inference (box and text only: the ground truth never shapes a
prompt) → mask on the follow-up grid; Dice, IoU, Precision, Recall, HD95 and ASSD are measured
on that grid with its physical spacing. Registration runs once per case; several networks (an
ablation) and several τ values (the §5.2 sweep) reuse it. A case that fails is recorded with its
reason and the evaluation goes on.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from models.loading import LoadedModel
from models.metrics import segmentation_metrics
from models.predictor import SegmentingPredictor
from models.prompt_text import text_prompt
from models.text.protocol import TextEncoder
from worker.errors import InputError, StageError
from worker.stages.assemble.case import assemble_cases
from worker.stages.clinical import case_context, read_case_file
from worker.stages.infer import InferenceOptions, infer_lesion
from worker.stages.prepare import prepare_case
from worker.stages.prompts import DEFAULT_TAU, high_dose_region
from worker.stages.read.case_data import read_case
from worker.training.cases import ground_truth, patient_folders

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NamedModel:
    """A network under evaluation and the label its rows carry."""

    label: str
    model: LoadedModel


CaseProgress = Callable[[str], None]


def evaluate_folder(
    data: Path,
    models: Sequence[NamedModel],
    text_encoder: TextEncoder,
    *,
    taus: Sequence[float] = (DEFAULT_TAU,),
    options: InferenceOptions | None = None,
    progress: CaseProgress | None = None,
) -> list[dict[str, Any]]:
    """One record per (case, model, τ): the six metrics, volumes and timings, or an error."""
    records: list[dict[str, Any]] = []
    predictors = [(m.label, m.model.predictor()) for m in models]
    for folder in patient_folders(data):
        records += _evaluate_patient(folder, predictors, text_encoder, taus, options)
        if progress:
            progress(folder.name)
    return records


def _evaluate_patient(
    folder: Path,
    predictors: Sequence[tuple[str, SegmentingPredictor]],
    text_encoder: TextEncoder,
    taus: Sequence[float],
    options: InferenceOptions | None,
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rtinjury-eval-") as workdir:
        try:
            assembly = assemble_cases(folder, Path(workdir))
            given = read_case_file(folder)
        except InputError as error:
            return _failed(folder.name, "", predictors, taus, str(error))
        for number, case in enumerate(assembly.cases):
            if not (case.seg or case.rtstruct):
                continue
            case_id = f"{case.task}-{case.patient_alias}-{number}"
            try:
                data = read_case(case)
                truth = ground_truth(case, data)
                prepared = prepare_case(case, data, tau=taus[0])
            except (StageError, ValueError) as error:
                records += _failed(case_id, case.task, predictors, taus, str(error))
                continue
            prompt = text_prompt(case.task, case_context(case, data, given))
            features = np.asarray(text_encoder.encode([prompt]), dtype=np.float32)[0]
            image = data.followup.image
            spacing = tuple(reversed(image.GetSpacing()))  # array axes are (z, y, x)
            for tau in taus:
                try:
                    region = prepared.region if tau == taus[0] else high_dose_region(prepared.dose.image, tau)
                except StageError as error:
                    records += _failed(case_id, case.task, predictors, [tau], str(error))
                    continue
                for label, predictor in predictors:
                    start = time.perf_counter()
                    result = infer_lesion(predictor, image, region, features, options=options)
                    predicted = sitk.GetArrayViewFromImage(result.mask).astype(bool)
                    metrics = segmentation_metrics(predicted, truth, spacing)
                    records.append(
                        {
                            "case_id": case_id,
                            "task": case.task,
                            "model": label,
                            "tau": tau,
                            **metrics.to_dict(),
                            "seconds": round(time.perf_counter() - start, 3),
                        }
                    )
    return records


def _failed(
    case_id: str,
    task: str,
    predictors: Sequence[tuple[str, SegmentingPredictor]],
    taus: Sequence[float],
    reason: str,
) -> list[dict[str, Any]]:
    return [
        {"case_id": case_id, "task": task, "model": label, "tau": tau, "error": reason}
        for label, _ in predictors
        for tau in taus
    ]
