"""What one stage of a job leaves in ``work/`` for the next, as plain files.

Images are MetaImage (``.mha``: geometry exact, compressed), transforms ITK's HDF5, facts JSON,
arrays ``.npz`` read with ``allow_pickle=False``: a worker on another machine with the same
storage root can pick up where another stopped, and nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import SimpleITK as sitk

from models.files import write_atomically
from worker.jobs.spec import ClickSpec
from worker.stages.dose_map import MappedDose
from worker.stages.prepare import PreparedCase, with_region
from worker.stages.register.result import RegistrationMethod, RegistrationQA, RegistrationResult

if TYPE_CHECKING:
    # The API process reads these files too (the web viewer), and must not import torch.
    from models.predictor import Click, Prediction

FOLLOWUP = "followup.mha"
DOSE = "dose-on-followup.mha"
TRANSFORM = "planning-to-followup.h5"
PREPARED = "prepared.json"
LESION = "lesion.mha"
INFERENCE = "inference.json"
EMBEDDING = "embedding.npz"
LOW_RES = "low-res-logits.npz"
CLICKS = "clicks.json"


def save_prepared(work: Path, followup: sitk.Image, prepared: PreparedCase, facts: dict[str, Any]) -> None:
    """The follow-up image, the dose on it, the transform and the registration's figures."""
    work.mkdir(parents=True, exist_ok=True)
    _write_image(followup, work / FOLLOWUP)
    _write_image(sitk.Cast(prepared.dose.image, sitk.sitkFloat32), work / DOSE)
    sitk.WriteTransform(prepared.registration.transform, str(work / TRANSFORM))
    registration = prepared.registration
    document = {
        **facts,
        "tau": prepared.region.tau,
        "dose_coverage_percent": prepared.dose.coverage_percent,
        "registration": {
            "method": registration.method.value,
            "qa": asdict(registration.qa),
            "flags": registration.flags,
            "notes": registration.notes,
        },
    }
    write_json(work / PREPARED, document)


def prepared_facts(work: Path) -> dict[str, Any]:
    return read_json(work / PREPARED)


def load_prepared(work: Path) -> PreparedCase:
    """The :class:`PreparedCase` the prepare stage saved (r is derived again: deterministic)."""
    facts = prepared_facts(work)
    saved = facts["registration"]
    registration = RegistrationResult(
        sitk.ReadTransform(str(work / TRANSFORM)),
        RegistrationMethod(saved["method"]),
        RegistrationQA(**saved["qa"]),
        list(saved["flags"]),
        list(saved["notes"]),
    )
    dose = MappedDose(sitk.ReadImage(str(work / DOSE)), float(facts["dose_coverage_percent"]))
    return with_region(registration, dose, float(facts["tau"]))


def load_transform(work: Path) -> sitk.Transform:
    """The registration's transform alone: follow-up points to planning CT points."""
    return sitk.ReadTransform(str(work / TRANSFORM))


def load_followup(work: Path) -> sitk.Image:
    return sitk.ReadImage(str(work / FOLLOWUP))


def save_inference(work: Path, mask: sitk.Image, prediction: Prediction, facts: dict[str, Any]) -> None:
    _write_image(mask, work / LESION)
    _write_arrays(work / LOW_RES, {"low_res": np.stack(prediction.low_res)})
    write_json(work / INFERENCE, facts)


def load_lesion(work: Path) -> sitk.Image:
    return sitk.ReadImage(str(work / LESION))


def inference_facts(work: Path) -> dict[str, Any]:
    return read_json(work / INFERENCE)


def save_embedding(work: Path, arrays: dict[str, np.ndarray]) -> None:
    _write_arrays(work / EMBEDDING, arrays)


def load_embedding(work: Path) -> dict[str, np.ndarray]:
    with np.load(work / EMBEDDING, allow_pickle=False) as saved:
        return {name: saved[name] for name in saved.files}


def load_low_res(work: Path) -> list[np.ndarray]:
    with np.load(work / LOW_RES, allow_pickle=False) as saved:
        return list(saved["low_res"])


def save_clicks(work: Path, clicks: list[ClickSpec]) -> None:
    write_json(work / CLICKS, [c.model_dump() for c in clicks])


def load_clicks(work: Path) -> list[ClickSpec]:
    path = work / CLICKS
    return [ClickSpec.model_validate(c) for c in read_json(path)] if path.is_file() else []


def as_clicks(clicks: list[ClickSpec]) -> list[Click]:
    from models.predictor import Click

    return [Click(c.point_mm, c.positive) for c in clicks]


def write_json(path: Path, document: Any) -> None:
    write_atomically(path, json.dumps(document, indent=2, sort_keys=True).encode("utf-8"))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_image(image: sitk.Image, path: Path) -> None:
    # Write next to the target, then rename: a reader never sees half an image.
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    with _removed_on_failure(partial):
        sitk.WriteImage(image, str(partial), useCompression=True)
        partial.replace(path)


def _write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    partial = path.with_name(f".{path.stem}.partial.npz")
    with _removed_on_failure(partial):
        cast(Any, np.savez)(partial, **arrays)  # numpy's stubs take **arrays for allow_pickle
        partial.replace(path)


@contextlib.contextmanager
def _removed_on_failure(partial: Path) -> Iterator[None]:
    """Half a file is no use to anyone, and on a full disk its space is wanted back."""
    try:
        yield
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
