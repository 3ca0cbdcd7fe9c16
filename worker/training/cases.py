"""Training cases from DICOM: the service's own stages, then 1 mm arrays cached on disk.

A data folder holds one patient per sub-folder (any layout inside, as ``rtinjury synth`` writes
it), or is itself one patient. Each follow-up scan with a ground truth — a SEG or an RTSTRUCT
drawn on that follow-up series — becomes one training case: assemble → read → register → dose →
high-dose region r (exactly what inference sees), then the follow-up image, the lesion and r
are resampled to the 1 mm working grid around r's box and saved. The image is normalised the
way :class:`models.predictor.Predictor` does it (the series' own voxels > 0), so training and
inference see the same numbers.

Cases already in the cache with the same inputs and settings are not rebuilt; a case that
fails is reported with its reason and the others go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from models.files import atomic_write, write_atomically
from models.predictor import PatientBox
from models.prompt_text import text_prompt
from models.transforms import WorkingGrid, foreground_stats
from worker.errors import InputError, StageError
from worker.stages.assemble.case import Case, assemble_cases
from worker.stages.clinical import case_context, read_case_file
from worker.stages.prepare import PreparedCase, prepare_case
from worker.stages.prompts import DEFAULT_TAU
from worker.stages.read.case_data import CaseData, read_case
from worker.stages.read.rtstruct import read_rtstruct_masks
from worker.stages.read.seg import read_seg_masks

logger = logging.getLogger(__name__)

CACHE_FORMAT = "rtinjury.training-cache/1"
INDEX_FILE = "index.json"
#: Working-grid margin (mm) kept around r's box: a 64³ training crop centred anywhere in the
#: box, or on a lesion voxel jittered by up to 16 mm, then still lies inside the cached block.
DEFAULT_MARGIN_MM = 48
#: Words in ROI/segment names that mark the lesion of each task when several are present.
_TASK_WORDS = {
    "orn": ("orn", "osteoradionecrosis", "necrosis"),
    "ce": ("ce", "edema", "oedema"),
    "crn": ("crn", "radiation necrosis", "necrosis"),
}


@dataclass(frozen=True)
class CacheOptions:
    tau: float = DEFAULT_TAU
    margin_mm: int = DEFAULT_MARGIN_MM

    def key(self) -> str:
        return json.dumps({"format": CACHE_FORMAT, **asdict(self)}, sort_keys=True)


@dataclass
class CachedCase:
    """One training case's facts; its arrays are in ``<case_id>.npz`` next to the index."""

    case_id: str
    task: str
    patient_alias: str
    prompt: str
    box_lo: list[float]
    box_hi: list[float]
    pad_value: float
    shape: list[int]
    lesion_cc: float
    region_cc: float
    source_hash: str
    warnings: list[str] = field(default_factory=list)


@dataclass
class CacheReport:
    cases: list[CachedCase]
    failures: dict[str, str]
    reused: int

    @property
    def data_hash(self) -> str:
        """One digest of every case's inputs and settings (recorded in checkpoints)."""
        return hashlib.sha256("\n".join(sorted(c.source_hash for c in self.cases)).encode()).hexdigest()


def patient_folders(data: Path) -> list[Path]:
    """One patient per sub-folder holding files; the folder itself when it has no sub-folders."""
    if not data.is_dir():
        raise InputError(f"{data}: not a folder")
    folders = sorted(p for p in data.iterdir() if p.is_dir() and any(f.is_file() for f in p.rglob("*")))
    return folders or [data]


def build_cache(
    data: Path,
    cache_dir: Path,
    options: CacheOptions | None = None,
    *,
    workers: int = 1,
) -> CacheReport:
    """Build (or reuse) the cached training cases of every patient folder in ``data``."""
    options = options or CacheOptions()
    cache_dir.mkdir(parents=True, exist_ok=True)
    folders = patient_folders(data)
    previous = _read_index(cache_dir, options)
    jobs = [(folder, cache_dir, options, previous) for folder in folders]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_cache_patient, *zip(*jobs, strict=True)))
    else:
        results = [_cache_patient(*job) for job in jobs]
    cases = [case for found, _, _ in results for case in found]
    failures = {name: reason for _, failed, _ in results for name, reason in failed.items()}
    reused = sum(count for _, _, count in results)
    report = CacheReport(sorted(cases, key=lambda c: c.case_id), failures, reused)
    _write_index(cache_dir, options, report)
    return report


def load_index(cache_dir: Path) -> tuple[list[CachedCase], str]:
    """The cached cases and the data hash, as :func:`build_cache` wrote them."""
    path = cache_dir / INDEX_FILE
    if not path.is_file():
        raise InputError(f"{cache_dir}: no training cache index ({INDEX_FILE}); build the cache first")
    content = json.loads(path.read_text(encoding="utf-8"))
    return [CachedCase(**c) for c in content["cases"]], str(content["data_hash"])


def load_arrays(cache_dir: Path, case: CachedCase) -> dict[str, np.ndarray]:
    """image (float16, normalised), lesion and roi (uint8), all [i, j, k] on the 1 mm grid."""
    with np.load(cache_dir / f"{case.case_id}.npz") as arrays:
        return {name: arrays[name] for name in ("image", "lesion", "roi")}


def _cache_patient(
    folder: Path, cache_dir: Path, options: CacheOptions, previous: dict[str, CachedCase]
) -> tuple[list[CachedCase], dict[str, str], int]:
    cases: list[CachedCase] = []
    failures: dict[str, str] = {}
    reused = 0
    with tempfile.TemporaryDirectory(prefix="rtinjury-cache-") as workdir:
        try:
            assembly = assemble_cases(folder, Path(workdir))
            given = read_case_file(folder)
        except InputError as error:
            return [], {folder.name: str(error)}, 0
        for number, case in enumerate(assembly.cases):
            name = f"{folder.name}#{number}"
            if not (case.seg or case.rtstruct):
                continue
            case_id = f"{case.task}-{case.patient_alias}-{number}"
            source_hash = _source_hash(case, options)
            known = previous.get(case_id)
            if known and known.source_hash == source_hash and (cache_dir / f"{case_id}.npz").is_file():
                cases.append(known)
                reused += 1
                continue
            try:
                cases.append(_cache_case(case, case_id, source_hash, given, cache_dir, options))
            except (StageError, ValueError) as error:
                failures[name] = str(error)
    return cases, failures, reused


def _cache_case(
    case: Case,
    case_id: str,
    source_hash: str,
    given: dict[str, Any] | None,
    cache_dir: Path,
    options: CacheOptions,
) -> CachedCase:
    data = read_case(case)
    truth = ground_truth(case, data)
    if not truth.any():
        raise InputError("the ground truth of this follow-up is empty")
    prepared = prepare_case(case, data, tau=options.tau)
    image = data.followup.image
    grid, box_lo, box_hi = _cache_grid(image, prepared, options.margin_mm)
    mean, std = foreground_stats(sitk.GetArrayViewFromImage(image))
    arrays = {
        "image": ((grid.resample(image) - mean) / std).astype(np.float16),
        "lesion": _resampled_mask(grid, truth, image),
        "roi": _resampled_mask(grid, prepared.region.mask, image),
    }
    with atomic_write(cache_dir / f"{case_id}.npz") as stream:
        np.savez(stream, image=arrays["image"], lesion=arrays["lesion"], roi=arrays["roi"])
    voxel_cc = float(np.prod(image.GetSpacing())) / 1000.0
    return CachedCase(
        case_id=case_id,
        task=case.task,
        patient_alias=case.patient_alias,
        prompt=text_prompt(case.task, case_context(case, data, given)),
        box_lo=[float(v) for v in box_lo],
        box_hi=[float(v) for v in box_hi],
        pad_value=float(-mean / std),
        shape=list(grid.size),
        lesion_cc=float(truth.sum()) * voxel_cc,
        region_cc=prepared.region.volume_cc,
        source_hash=source_hash,
        warnings=[*data.warnings, *prepared.warnings],
    )


def ground_truth(case: Case, data: CaseData) -> np.ndarray:
    """The lesion mask (slices, rows, cols) from the SEG, else the RTSTRUCT, on the follow-up.

    One segment/ROI is used as it is; several are narrowed to those named for the task and
    joined.

    Raises
    ------
    worker.errors.InputError
        No SEG/RTSTRUCT names a structure of this task among several.
    """
    volume = data.followup
    masks: dict[str, np.ndarray] = {}
    for series in case.seg:
        for instance in series.instances:
            masks.update(read_seg_masks(instance.path, volume))
    if not masks:
        for series in case.rtstruct:
            if volume.frame_of_reference_uid in series.first.referenced_frames_of_reference:
                for instance in series.instances:
                    masks.update(read_rtstruct_masks(instance.path, volume).masks)
    if not masks:
        raise InputError("no SEG or RTSTRUCT drawn on this follow-up")
    chosen = list(masks.values()) if len(masks) == 1 else _task_masks(masks, case.task)
    if not chosen:
        raise InputError(
            f"{len(masks)} structures on this follow-up and none named for task {case.task}: "
            f"{', '.join(sorted(masks))}"
        )
    return np.logical_or.reduce(chosen)


def _task_masks(masks: dict[str, np.ndarray], task: str) -> list[np.ndarray]:
    return [mask for name, mask in masks.items() if _names_task(name, _TASK_WORDS[task])]


def _names_task(name: str, words: tuple[str, ...]) -> bool:
    lowered = name.lower()
    tokens = set(re.split(r"[^a-z0-9]+", lowered))
    return any((word in lowered) if " " in word else (word in tokens) for word in words)


def _cache_grid(
    image: sitk.Image, prepared: PreparedCase, margin_mm: int
) -> tuple[WorkingGrid, np.ndarray, np.ndarray]:
    full = WorkingGrid.covering(image)
    lo, hi = PatientBox(np.asarray(prepared.region.corners_mm)).on_grid(full)
    start = (lo - margin_mm).astype(int)
    size = (hi - lo).astype(int) + 1 + 2 * margin_mm
    # The block may reach beyond the scan: resampling gives raw 0 there, which is what the
    # predictor's padding holds too.
    return full.sub_grid([int(v) for v in start], [int(v) for v in size]), lo - start, hi - start


def _resampled_mask(grid: WorkingGrid, mask: np.ndarray, reference: sitk.Image) -> np.ndarray:
    image = sitk.GetImageFromArray(mask.astype(np.float32))
    image.CopyInformation(reference)
    return (grid.resample(image) >= 0.5).astype(np.uint8)


def _source_hash(case: Case, options: CacheOptions) -> str:
    uids = sorted(
        i.sop_instance_uid
        for series in (case.followup, case.planning_ct, *case.rtdose, *case.rtplan, *case.seg, *case.rtstruct)
        for i in series.instances
    )
    return hashlib.sha256("\n".join([options.key(), *uids]).encode()).hexdigest()


def _read_index(cache_dir: Path, options: CacheOptions) -> dict[str, CachedCase]:
    path = cache_dir / INDEX_FILE
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        if content.get("options") != options.key():
            return {}
        return {c["case_id"]: CachedCase(**c) for c in content["cases"]}
    except (json.JSONDecodeError, KeyError, TypeError):
        return {}


def _write_index(cache_dir: Path, options: CacheOptions, report: CacheReport) -> None:
    content = {
        "format": CACHE_FORMAT,
        "options": options.key(),
        "data_hash": report.data_hash,
        "cases": [asdict(c) for c in report.cases],
        "failures": report.failures,
    }
    write_atomically(cache_dir / INDEX_FILE, json.dumps(content, indent=1).encode())


def split_cases(
    cases: Sequence[CachedCase], validation_fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Case ids for training and validation, split by patient within each task (≈ 4:1).

    All follow-ups of one patient fall on the same side, so the validation cases are of
    patients the network has not seen; the order is a hash of (seed, patient), so the split is
    stable when cases are added.
    """
    train: list[str] = []
    validation: list[str] = []
    for task in sorted({c.task for c in cases}):
        patients = sorted(
            {c.patient_alias for c in cases if c.task == task},
            key=lambda alias: hashlib.sha256(f"{seed}|{alias}".encode()).hexdigest(),
        )
        held = set(patients[: round(len(patients) * validation_fraction)]) if len(patients) > 1 else set()
        for case in cases:
            if case.task == task:
                (validation if case.patient_alias in held else train).append(case.case_id)
    return train, validation
