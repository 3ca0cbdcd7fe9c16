"""What the web viewer shows of one job, read from its folder and kept in memory while in use.

The worker leaves the follow-up, the dose on it, the planning CT on it and the lesion in the
job's ``work/`` folder (``worker.jobs.handoff``). They are read once, put on the display grid
(``service.viewer.volumes``) and kept in a cache bounded in bytes, so that scrolling costs a
slice cut and a PNG encoding, not a file read. Each entry remembers the files' modification
times and sizes: a refinement writes a new lesion, and the next request reads it again.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from models.tasks import TASKS
from service.viewer.render import Window, dose_levels
from service.viewer.volumes import DisplayGrid, Plane, display_reference, on_display_grid
from worker.jobs import handoff
from worker.jobs.folder import JobFolder

log = logging.getLogger(__name__)

#: Isodose lines at these percentages of the dose maximum, in the preview's colours.
ISODOSE_LEVELS = ((50, "#b388ff"), (80, "#3ddc3d"), (95, "#ffee00"))
CT_BONE = Window("ct-bone", "CT bone", 400.0, 2000.0)
CT_SOFT_TISSUE = Window("ct-soft", "CT soft tissue", 40.0, 400.0)
MR_PERCENTILES = (1.0, 99.0)


@dataclass(frozen=True)
class IsodoseLevel:
    percent: int
    gy: float
    colour: str


@dataclass
class BaseLayers:
    """The layers that do not change once the job is prepared."""

    grid: DisplayGrid
    image: np.ndarray
    planning: np.ndarray | None
    dose_levels: np.ndarray | None
    isodose: list[IsodoseLevel]
    windows: list[Window]

    @property
    def nbytes(self) -> int:
        arrays = (self.image, self.planning, self.dose_levels)
        return sum(a.nbytes for a in arrays if a is not None)


@dataclass
class JobView:
    """A job's layers on the display grid, and what the page needs to show them."""

    base: BaseLayers
    lesion: np.ndarray | None
    lesion_version: str
    task: str
    modality: str
    clicks: list[dict[str, Any]] = field(default_factory=list)

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

    def window(self, window_id: str | None) -> Window | None:
        """The preset of that id (the default without one), or None when no preset has it."""
        wanted = window_id or self.default_window
        return next((w for w in self.base.windows if w.id == wanted), None)

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
        self._bases: OrderedDict[Path, tuple[tuple[Any, ...], BaseLayers]] = OrderedDict()
        self._lesions: OrderedDict[Path, tuple[tuple[Any, ...], np.ndarray | None, str]] = OrderedDict()
        self._lock = threading.Lock()
        # One loader per job at a time: a page opens with several slice requests at once.
        self._loading: dict[Path, threading.Lock] = {}

    def view(self, folder: JobFolder, task: str, modality: str) -> JobView:
        """The job's view (its ``work/followup.mha`` must exist: the job has been prepared)."""
        with self._loader(folder.root):
            base = self._base(folder)
            lesion, version = self._lesion(folder, base.grid)
        clicks = [c.model_dump() for c in handoff.load_clicks(folder.work)]
        return JobView(base, lesion, version, task, modality, clicks)

    def _lesion(self, folder: JobFolder, grid: DisplayGrid) -> tuple[np.ndarray | None, str]:
        signature = _signature(folder.work / handoff.LESION)
        with self._lock:
            found = self._lesions.get(folder.root)
        if found is not None and found[0] == signature:
            return found[1], found[2]
        lesion = _load_lesion(folder, grid)
        version = f"{signature[0]:x}-{signature[1]:x}" if signature else "none"
        with self._lock:
            self._lesions[folder.root] = (signature, lesion, version)
            self._evict()
        return lesion, version

    def _base(self, folder: JobFolder) -> BaseLayers:
        signature = _base_signature(folder.work)
        with self._lock:
            found = self._bases.get(folder.root)
            if found is not None and found[0] == signature:
                self._bases.move_to_end(folder.root)
                return found[1]
        loaded = _load_base(folder)
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
        with self._lock:
            self._bases.pop(folder.root, None)
            self._lesions.pop(folder.root, None)


def _signature(path: Path) -> tuple[int, int] | tuple[()]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return ()
    return stat.st_mtime_ns, stat.st_size


def _base_signature(work: Path) -> tuple[Any, ...]:
    return tuple(_signature(work / name) for name in (handoff.FOLLOWUP, handoff.DOSE, handoff.PLANNING))


def _load_base(folder: JobFolder) -> BaseLayers:
    work = folder.work
    followup = handoff.load_followup(work)
    reference = display_reference(followup)
    image = _display_array(followup, reference)
    planning = _optional(work / handoff.PLANNING, reference)
    dose = _optional(work / handoff.DOSE, reference)
    isodose: list[IsodoseLevel] = []
    levels = None
    if dose is not None and float(dose.max()) > 0:
        dmax = float(dose.max())
        isodose = [IsodoseLevel(p, round(dmax * p / 100, 2), c) for p, c in ISODOSE_LEVELS]
        levels = dose_levels(dose, [level.gy for level in isodose])
    return BaseLayers(DisplayGrid.of(reference), image, planning, levels, isodose, _windows(image))


def _optional(path: Path, reference: sitk.Image) -> np.ndarray | None:
    return _display_array(sitk.ReadImage(str(path)), reference) if path.is_file() else None


def _display_array(image: sitk.Image, reference: sitk.Image, *, labels: bool = False) -> np.ndarray:
    array = sitk.GetArrayFromImage(on_display_grid(image, reference, labels=labels))
    # CT in HU fits int16: half the memory of float32 for the grey layers.
    fits_int16 = array.dtype == np.float32 and array.min() >= -32768 and array.max() <= 32767
    if fits_int16 and not labels and np.array_equal(array, np.round(array)):
        return array.astype(np.int16)
    return array


def _load_lesion(folder: JobFolder, grid: DisplayGrid) -> np.ndarray | None:
    path = folder.work / handoff.LESION
    if not path.is_file():
        return None
    lesion = sitk.ReadImage(str(path))
    reference = sitk.Image(list(grid.size), sitk.sitkUInt8)
    reference.SetSpacing(grid.spacing)
    reference.SetOrigin(grid.origin)
    return (sitk.GetArrayFromImage(on_display_grid(lesion, reference, labels=True)) > 0).astype(np.uint8)


def _windows(image: np.ndarray) -> list[Window]:
    values = image.ravel()[:: max(1, image.size // 2_000_000)]
    low, high = (float(v) for v in np.percentile(values, MR_PERCENTILES))
    return [CT_BONE, CT_SOFT_TISSUE, Window("mr", "MR", (low + high) / 2, max(high - low, 1e-6))]
