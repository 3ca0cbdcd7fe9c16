"""Synthetic head-and-neck patients as complete DICOM-RT cases.

Each case is one patient: a planning CT with RT Plan and RT Dose (frame of
reference A), follow-up scans in their own frames of reference that show a
radiotherapy-induced lesion inside the high-dose region, the lesion as a
DICOM-SEG ground truth, and a case.json with the true misalignment, lesion
volume and centroids, dose facts and clinical fields.

Tasks: "orn" (osteoradionecrosis of the mandible, follow-up CT), "ce"
(cerebral edema of a temporal lobe, T2-FLAIR MR), "crn" (cerebral radiation
necrosis of a temporal lobe, contrast T1 MR).
"""

from __future__ import annotations

import logging
from pathlib import Path

from .casefile import load_case
from .params import SIZES, TASKS, sample_case
from .patient import write_case
from .seg import SEGMENT_CODES
from .transform import TrueTransform, apply_true_transform

__all__ = [
    "SEGMENT_CODES",
    "SIZES",
    "TASKS",
    "CaseFolderExistsError",
    "TrueTransform",
    "apply_true_transform",
    "load_case",
    "write_synthetic_patients",
]

logger = logging.getLogger(__name__)

MAX_CASES = 1000
MAX_FOLLOWUPS = 10


class CaseFolderExistsError(FileExistsError, ValueError):
    """A case folder to be written already holds files.

    Also a ValueError, so callers that map bad arguments to a user error (the
    CLI) report it as one.
    """


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(task: str, cases: int, seed: int, followups: int, size: str) -> None:
    if task not in (*TASKS, "all"):
        raise ValueError(f"task must be one of {', '.join(TASKS)} or 'all', got {task!r}")
    if not _is_int(cases) or not 1 <= cases <= MAX_CASES:
        raise ValueError(f"cases must be an integer from 1 to {MAX_CASES}, got {cases!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not _is_int(followups) or not 1 <= followups <= MAX_FOLLOWUPS:
        raise ValueError(f"followups must be an integer from 1 to {MAX_FOLLOWUPS}, got {followups!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")


def write_synthetic_patients(
    out_dir: Path,
    task: str = "all",
    cases: int = 1,
    seed: int = 0,
    followups: int = 1,
    size: str = "small",
) -> list[Path]:
    """Write synthetic patients, one folder per case.

    Parameters
    ----------
    out_dir : pathlib.Path
        Parent folder (created if missing). Cases go to ``<task>-<index>/``,
        e.g. ``orn-000/``; an existing non-empty case folder is an error.
    task : str
        "orn", "ce", "crn", or "all" for ``cases`` cases of each task.
    cases : int
        Cases per task (1–1000).
    seed : int
        Non-negative; the same seed (and arguments) writes byte-identical files.
    followups : int
        Follow-up scans per patient (1–10), at increasing dates. With two or
        more, the lesion follows a course fixed by the task and index (growing,
        shrinking, or peaking from three follow-ups on; ``lesion_course`` in
        case.json), changing by a factor of about 1.6 or more between scans.
    size : str
        "small" (coarse grids, fast: for tests) or "full" (clinical-like grids).

    Returns
    -------
    list of pathlib.Path
        The case folders, in task order (orn, ce, crn) then index.

    Raises
    ------
    ValueError
        For an invalid argument.
    CaseFolderExistsError
        If a case folder already exists and is not empty (a FileExistsError
        and a ValueError).
    """
    _validate(task, cases, seed, followups, size)
    out_dir = Path(out_dir)
    tasks = TASKS if task == "all" else (task,)
    folders = [out_dir / f"{t}-{i:03d}" for t in tasks for i in range(cases)]
    for folder in folders:
        if folder.exists() and any(folder.iterdir()):
            raise CaseFolderExistsError(f"case folder {folder} exists and is not empty")
    for folder in folders:
        t, i = folder.name.split("-")
        logger.info("writing synthetic %s case %s (seed %d, %s)", t, i, seed, size)
        write_case(sample_case(t, seed, int(i), size, followups), folder)
    return folders
