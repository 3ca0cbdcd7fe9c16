"""What we write, read by tools we did not write: dciodvfy, plastimatch, dcmqi, rt-utils.

These are the readers a hospital's systems resemble. Each check compares the tool's raster of our
object with our own mask on the follow-up grid, in patient coordinates.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from tests.conftest import SHARED_DATA
from tests.worker.stages.export.grids import GRIDS, Written, ring_and_island, sphere, task_for, write_grids
from worker.stages.export.algorithm import AlgorithmInfo
from worker.stages.export.rtstruct import write_rtstruct
from worker.stages.export.seg import Finding, write_segmentation
from worker.stages.export.source import source_series

ALGORITHM = AlgorithmInfo(model_id="small@0123456789ab", weights_sha256="0123456789ab" + "cd" * 26)
VALIDATE = SHARED_DATA.parent / "tools" / "dicom-validate.sh"
SEGIMAGE2ITKIMAGE = Path(sys.executable).parent / "segimage2itkimage"

pytestmark = pytest.mark.tools


@pytest.fixture(scope="module")
def grids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Written]:
    return write_grids(tmp_path_factory.mktemp("crosscheck-grids"))


def _tool(path: str | Path | None, what: str) -> str:
    if path is None or not Path(path).exists():
        pytest.fail(f"{what} is not installed (.ci/run installs it)", pytrace=False)
    return str(path)


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, f"{command[0]} failed: {done.stdout[-1500:]}{done.stderr[-1500:]}"


def _on_volume(image: sitk.Image, written: Written) -> np.ndarray:
    resampled = sitk.Resample(image, written.volume.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(resampled) > 0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _save_both(written: Written, mask: sitk.Image, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    source = source_series(written.volume)
    finding = [Finding(task_for(written.grid), mask)]
    seg, rs = folder / "seg.dcm", folder / "rtstruct.dcm"
    write_segmentation(source, finding, ALGORITHM).save_as(seg)
    write_rtstruct(source, finding, ALGORITHM, high_dose_region=finding[0]).save_as(
        rs, enforce_file_format=True
    )
    return seg, rs


def test_every_object_passes_dciodvfy(grids: dict[str, Written], tmp_path: Path) -> None:
    _tool(shutil.which("dciodvfy"), "dciodvfy (dicom3tools)")
    files = []
    for name, written in grids.items():
        files += _save_both(written, ring_and_island(written.volume), tmp_path / name)
    done = subprocess.run(["bash", str(VALIDATE), "-v", *map(str, files)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASS") == len(files)


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_plastimatch_rasterises_our_rtstruct_like_we_do(
    grids: dict[str, Written], name: str, tmp_path: Path
) -> None:
    plastimatch = _tool(shutil.which("plastimatch"), "plastimatch")
    written = grids[name]
    reference = tmp_path / "followup.nrrd"
    sitk.WriteImage(written.volume.image, str(reference))
    for label, mask in (("sphere", sphere(written.volume, 0.2)), ("ring", ring_and_island(written.volume))):
        _, rs = _save_both(written, mask, tmp_path / label)
        out = tmp_path / label / "plastimatch"
        _run(plastimatch, "convert", "--input", str(rs), "--fixed", str(reference),
             "--output-prefix", str(out), "--prefix-format", "nrrd")  # fmt: skip
        raster = _on_volume(sitk.ReadImage(str(out / f"{task_for(written.grid).upper()}_AI.nrrd")), written)
        truth = sitk.GetArrayFromImage(mask) > 0
        if label == "ring":
            # plastimatch 1.9.4 fills inner contours (union), where TPSs and our reader take them as
            # holes (XOR); compare with the hole-filled mask so that placement is still checked exactly.
            truth = np.stack([ndimage.binary_fill_holes(plane) for plane in truth])
        assert _dice(raster, truth) >= 0.97, f"{name} {label}"
        assert _dice(raster, truth) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_dcmqi_reads_our_seg_where_we_put_it(grids: dict[str, Written], name: str, tmp_path: Path) -> None:
    tool = _tool(SEGIMAGE2ITKIMAGE, "dcmqi (pip package dcmqi)")
    written = grids[name]
    mask = ring_and_island(written.volume)
    seg, _ = _save_both(written, mask, tmp_path)
    out = tmp_path / "dcmqi"
    out.mkdir()
    _run(tool, "--inputDICOM", str(seg), "--outputDirectory", str(out), "--outputType", "nrrd")
    raster = _on_volume(sitk.ReadImage(str(out / "1.nrrd")), written)
    assert _dice(raster, sitk.GetArrayFromImage(mask) > 0) >= 0.97
    assert np.array_equal(raster, sitk.GetArrayFromImage(mask) > 0)


@pytest.mark.parametrize("name", ["ct-axial", "ct-feet-first", "mr-oblique"])
def test_rt_utils_finds_our_contours_in_the_same_place(
    grids: dict[str, Written], name: str, tmp_path: Path
) -> None:
    """rt-utils (square pixels only: 1.2.7 swaps row/column spacing, qurit/rt-utils#92).

    Its cv2.fillPoly raster truncates our pixel-edge vertices to whole pixels, which shifts its
    raster by half a pixel and changes the volume by a shell; the geometry must still agree: the
    same planes, the centroid within one pixel.
    """
    from rt_utils import RTStructBuilder

    written = grids[name]
    mask = sphere(written.volume, 1.0)
    _, rs = _save_both(written, mask, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # rt-utils on pydicom 3
        builder = RTStructBuilder.create_from(dicom_series_path=str(written.folder), rt_struct_path=str(rs))
        raster = builder.get_roi_mask_by_name(f"{task_for(written.grid).upper()}_AI")
    uids = [str(ds.SOPInstanceUID) for ds in builder.series_data]
    theirs = np.transpose(raster, (2, 0, 1))[[uids.index(u) for u in written.volume.sop_instance_uids]]
    ours = sitk.GetArrayFromImage(mask) > 0
    assert theirs.any(axis=(1, 2)).tolist() == ours.any(axis=(1, 2)).tolist()
    pixel = min(written.grid.pixel_spacing)
    centroid = [np.argwhere(m).mean(axis=0) for m in (theirs, ours)]
    to_mm = np.array([written.grid.slice_spacing, *written.grid.pixel_spacing])
    assert np.abs((centroid[0] - centroid[1]) * to_mm).max() <= pixel
    assert _dice(theirs, ours) >= 0.85
