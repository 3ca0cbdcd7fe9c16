"""What the web viewer shows of one job, read from its folder and kept while in use.

The prepare stage leaves the follow-up, the planning CT and the isodose bands on the display grid
in ``work/view/`` (``worker.viewer.layers``); they are mapped into memory, so scrolling costs a
slice cut and a PNG encoding, not a file read. A job prepared before the viewer existed gets
them made here on its first view. The lesion is read from ``work/lesion.mha`` and kept until
the file changes (a refinement writes a new one). Entries are dropped, least recently used
first, beyond a budget in bytes.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from models.tasks import TASKS
from service.viewer.render import Window
from worker.jobs import handoff
from worker.jobs.folder import JobFolder
from worker.viewer.layers import (
    DisplayLayers,
    build_layers,
    description_path,
    display_lesion,
    load_layers,
    save_layers,
)
from worker.viewer.volumes import DisplayGrid, Plane

log = logging.getLogger(__name__)

CT_BONE = Window("ct-bone", "CT bone", 400.0, 2000.0)
CT_SOFT_TISSUE = Window("ct-soft", "CT soft tissue", 40.0, 400.0)


@dataclass
class JobView:
    """A job's layers on the display grid, and what the page needs to show them."""

    base: DisplayLayers
    lesion: np.ndarray | None
    lesion_version: str
    task: str
    modality: str

    @property
    def grid(self) -> DisplayGrid:
        return self.base.grid

    @property
    def lesion_colour(self) -> str:
        red, green, blue = TASKS[self.task].colour
        return f"#{red:02x}{green:02x}{blue:02x}"

    @property
    def default_window(self) -> str:
        if self.modality.upper() != "CT":
            return "mr"
        return CT_BONE.id if self.task == "orn" else CT_SOFT_TISSUE.id

    @property
    def windows(self) -> list[Window]:
        level, width = self.base.percentile_window
        # The percentile window suits MR, and any scan whose values carry no fixed meaning.
        return [CT_BONE, CT_SOFT_TISSUE, Window("mr", "MR / auto (1st–99th percentile)", level, width)]

    def window(self, window_id: str | None) -> Window | None:
        """The preset of that id (the default without one), or None when no preset has it."""
        wanted = window_id or self.default_window
        return next((w for w in self.windows if w.id == wanted), None)

    def start_voxel(self, centroid_mm: list[float] | None) -> tuple[int, int, int]:
        """Where the viewer opens: the lesion's centroid, else the dose maximum, else the centre."""
        if centroid_mm:
            return self.grid.voxel_of((centroid_mm[0], centroid_mm[1], centroid_mm[2]))
        if self.base.dose_levels is not None and self.base.dose_levels.any():
            k, j, i = np.unravel_index(int(np.argmax(self.base.dose_levels)), self.base.dose_levels.shape)
            return int(i), int(j), int(k)
        nx, ny, nz = self.grid.size
        return nx // 2, ny // 2, nz // 2

    def start_slices(self, centroid_mm: list[float] | None) -> dict[str, int]:
        voxel = self.start_voxel(centroid_mm)
        return {plane.value: self.grid.slice_through(plane, voxel) for plane in Plane}


class ViewCache:
    """Recently viewed jobs' layers, evicted oldest first beyond ``budget_bytes``."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._bases: OrderedDict[Path, tuple[tuple[Any, ...], DisplayLayers]] = OrderedDict()
        self._lesions: OrderedDict[Path, tuple[tuple[Any, ...], np.ndarray | None, str]] = OrderedDict()
        self._lock = threading.Lock()
        # One loader per job at a time: a page opens with several slice requests at once.
        self._loading: dict[Path, threading.Lock] = {}

    def view(self, folder: JobFolder, task: str, modality: str) -> JobView:
        """The job's view (its ``work/view/`` must exist, or its images: the job has been prepared)."""
        with self._loader(folder.root):
            base = self._base(folder)
            lesion, version = self._lesion(folder, base.grid)
        return JobView(base, lesion, version, task, modality)

    def _lesion(self, folder: JobFolder, grid: DisplayGrid) -> tuple[np.ndarray | None, str]:
        signature = _signature(folder.work / handoff.LESION)
        with self._lock:
            found = self._lesions.get(folder.root)
        if found is not None and found[0] == signature:
            return found[1], found[2]
        lesion = _load_lesion(folder, grid)
        version = f"{signature[0]:x}-{signature[1]:x}" if signature else "none"
        with self._lock:
            if folder.root in self._bases:  # not when its base was evicted meanwhile: none would evict it
                self._lesions[folder.root] = (signature, lesion, version)
        return lesion, version

    def _base(self, folder: JobFolder) -> DisplayLayers:
        signature = _signature(description_path(folder.work))
        with self._lock:
            found = self._bases.get(folder.root)
            if found is not None and found[0] == signature:
                self._bases.move_to_end(folder.root)
                return found[1]
        loaded = _load_base(folder)
        signature = _signature(description_path(folder.work))  # made just now, for an older job
        with self._lock:
            self._bases[folder.root] = (signature, loaded)
            self._evict()
        return loaded

    def _loader(self, key: Path) -> threading.Lock:
        with self._lock:
            return self._loading.setdefault(key, threading.Lock())

    def _evict(self) -> None:
        def used() -> int:
            lesions = sum(entry[1].nbytes for entry in self._lesions.values() if entry[1] is not None)
            return lesions + sum(entry[1].nbytes for entry in self._bases.values())

        # The newest entry always stays, even alone over the budget: it is being looked at.
        while len(self._bases) > 1 and used() > self.budget_bytes:
            oldest, _ = self._bases.popitem(last=False)
            self._lesions.pop(oldest, None)
            self._loading.pop(oldest, None)

    def forget(self, folder: JobFolder) -> None:
        """Drop a job's entries (it was deleted)."""
        with self._lock:
            self._bases.pop(folder.root, None)
            self._lesions.pop(folder.root, None)
            self._loading.pop(folder.root, None)


def _signature(path: Path) -> tuple[int, int] | tuple[()]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return ()
    return stat.st_mtime_ns, stat.st_size


def _load_base(folder: JobFolder) -> DisplayLayers:
    try:
        return load_layers(folder.work)
    except FileNotFoundError:
        pass
    # A job prepared before the viewer existed: its layers are made once, from its images (it
    # kept no planning CT on the follow-up, so it has no registration review).
    work = folder.work
    followup = handoff.load_followup(work)
    dose = _read_if_present(work / handoff.DOSE)
    save_layers(work, build_layers(followup, dose, None))
    log.info("viewer layers of job %s made from its images", folder.job_id)
    return load_layers(work)


def _read_if_present(path: Path) -> sitk.Image | None:
    return sitk.ReadImage(str(path)) if path.is_file() else None


def _load_lesion(folder: JobFolder, grid: DisplayGrid) -> np.ndarray | None:
    path = folder.work / handoff.LESION
    return display_lesion(sitk.ReadImage(str(path)), grid) if path.is_file() else None
