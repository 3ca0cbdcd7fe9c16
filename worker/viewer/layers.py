"""The web viewer's layers of a job, ready to slice: written once by the worker, mapped by the API.

Reading a 512×512×150 follow-up from its compressed MetaImage and putting it on the display grid
takes seconds; a page must show its first slice within one. So the prepare stage, which has the
images in memory anyway, leaves them in ``work/view/`` on the display grid
(``worker.viewer.volumes``) as plain ``.npy`` arrays that the API maps into memory
(``numpy.load(mmap_mode="r")``): a slice then costs a few page reads.

- ``image.npy``: the follow-up (int16 for CT in HU, float32 otherwise);
- ``planning.npy``: the planning CT on the follow-up (int16 HU), for the registration review;
- ``dose-levels.npy``: per voxel, how many isodose levels the dose reaches (uint8);
- ``view.json``: the display grid, the isodose levels in Gy, and an MR window from percentiles.

About 2.5 bytes per follow-up voxel for a CT (190 MB for 512×512×150); deleting a job removes them.
The lesion is not here: it changes with each refinement and its MetaImage, mostly zeros, reads
fast.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from models.files import replace_folder, write_atomically
from worker.viewer.volumes import DisplayGrid, display_reference, on_display_grid

VIEW_FOLDER = "view"
IMAGE = "image.npy"
PLANNING = "planning.npy"
DOSE_LEVELS = "dose-levels.npy"
DESCRIPTION = "view.json"
#: Isodose lines at these percentages of the dose maximum, in the preview's colours.
ISODOSE_LEVELS = ((50, "#b388ff"), (80, "#3ddc3d"), (95, "#ffee00"))
MR_PERCENTILES = (1.0, 99.0)
_FORMAT = "rtinjury.view/1"


@dataclass(frozen=True)
class IsodoseLevel:
    percent: int
    gy: float
    colour: str


@dataclass
class DisplayLayers:
    """A job's layers on the display grid (arrays indexed ``[k, j, i]``)."""

    grid: DisplayGrid
    image: np.ndarray
    planning: np.ndarray | None
    dose_levels: np.ndarray | None
    isodose: list[IsodoseLevel]
    #: (level, width) from the 1st and 99th percentiles of the image: the MR preset.
    percentile_window: tuple[float, float]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.image, self.planning, self.dose_levels) if a is not None)


def build_layers(followup: sitk.Image, dose: sitk.Image | None, planning: sitk.Image | None) -> DisplayLayers:
    """The layers of a follow-up, the dose on it (Gy) and the planning CT on it."""
    reference = display_reference(followup)
    image = _grey(followup, reference)
    isodose: list[IsodoseLevel] = []
    levels = None
    if dose is not None:
        dose_array = sitk.GetArrayFromImage(on_display_grid(dose, reference))
        dmax = float(dose_array.max())
        if dmax > 0:
            isodose = [IsodoseLevel(p, round(dmax * p / 100, 2), c) for p, c in ISODOSE_LEVELS]
            levels = dose_levels(dose_array, [level.gy for level in isodose])
    return DisplayLayers(
        DisplayGrid.of(reference),
        image,
        _grey(planning, reference) if planning is not None else None,
        levels,
        isodose,
        _percentile_window(image),
    )


def dose_levels(dose: np.ndarray, levels_gy: list[float]) -> np.ndarray:
    """uint8 per voxel: how many of ``levels_gy`` (ascending) the dose reaches."""
    counts = np.zeros(dose.shape, np.uint8)
    for level in levels_gy:
        counts += dose >= level
    return counts


def save_layers(work: Path, layers: DisplayLayers) -> None:
    """Write ``work/view/``, whole or not at all (built aside, then renamed into place)."""
    target = work / VIEW_FOLDER
    work.mkdir(parents=True, exist_ok=True)
    # A folder of its own: an API process making the view of an older job may write beside us.
    staging = Path(tempfile.mkdtemp(prefix=f".{VIEW_FOLDER}.", suffix=".partial", dir=work))
    try:
        np.save(staging / IMAGE, layers.image)
        if layers.planning is not None:
            np.save(staging / PLANNING, layers.planning)
        if layers.dose_levels is not None:
            np.save(staging / DOSE_LEVELS, layers.dose_levels)
        write_atomically(staging / DESCRIPTION, json.dumps(_description(layers), indent=2).encode("utf-8"))
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # half a view is no use; its space is wanted back
        raise


def load_layers(work: Path) -> DisplayLayers:
    """The saved layers, mapped read-only (FileNotFoundError when there are none)."""
    folder = work / VIEW_FOLDER
    document = json.loads((folder / DESCRIPTION).read_text(encoding="utf-8"))
    grid = document["grid"]
    return DisplayLayers(
        DisplayGrid(tuple(grid["size"]), tuple(grid["spacing"]), tuple(grid["origin"])),
        np.load(folder / IMAGE, mmap_mode="r", allow_pickle=False),
        _mapped(folder / PLANNING),
        _mapped(folder / DOSE_LEVELS),
        [IsodoseLevel(**level) for level in document["isodose"]],
        (float(document["percentile_window"][0]), float(document["percentile_window"][1])),
    )


def description_path(work: Path) -> Path:
    """``view.json``: written last, so its modification time stands for the whole view."""
    return work / VIEW_FOLDER / DESCRIPTION


def display_lesion(lesion: sitk.Image, grid: DisplayGrid) -> np.ndarray:
    """The lesion mask (on the follow-up grid) on the display grid, as 0/1 uint8."""
    reference = sitk.Image(list(grid.size), sitk.sitkUInt8)
    reference.SetSpacing(grid.spacing)
    reference.SetOrigin(grid.origin)
    # A view, not a copy, of an image kept alive here: SimpleITK frees the pixels with the image.
    on_grid = on_display_grid(lesion, reference, labels=True)
    return (sitk.GetArrayViewFromImage(on_grid) > 0).astype(np.uint8)


def _mapped(path: Path) -> np.ndarray | None:
    return np.load(path, mmap_mode="r", allow_pickle=False) if path.is_file() else None


def _grey(image: sitk.Image, reference: sitk.Image) -> np.ndarray:
    # A view, not a copy, of an image kept alive here: SimpleITK frees the pixels with the image.
    on_grid = on_display_grid(image, reference)
    array = sitk.GetArrayViewFromImage(on_grid)
    if array.dtype == np.int16:
        return np.array(array)
    # CT in HU fits int16: half the bytes of float32, and what the scanner stored anyway.
    if array.dtype.kind == "f" and _whole_numbers_in_int16(array):
        return np.rint(array).astype(np.int16)
    return np.array(array, dtype=np.float32)


def _whole_numbers_in_int16(array: np.ndarray) -> bool:
    if array.min() < -32768 or array.max() > 32767:
        return False
    # A strided sample decides integrality: rescaled CT is integral everywhere, MR almost nowhere.
    sample = array.ravel()[:: max(1, array.size // 1_000_000)]
    return bool(np.all(sample == np.round(sample)))


def _percentile_window(image: np.ndarray) -> tuple[float, float]:
    values = image.ravel()[:: max(1, image.size // 2_000_000)]
    low, high = (float(v) for v in np.percentile(values, MR_PERCENTILES))
    return (low + high) / 2, max(high - low, 1e-6)


def _description(layers: DisplayLayers) -> dict[str, object]:
    grid = layers.grid
    return {
        "format": _FORMAT,
        "grid": {"size": list(grid.size), "spacing": list(grid.spacing), "origin": list(grid.origin)},
        "isodose": [asdict(level) for level in layers.isodose],
        "percentile_window": list(layers.percentile_window),
    }
