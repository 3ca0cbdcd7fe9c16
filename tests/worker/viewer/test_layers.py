"""The viewer's layers as the worker leaves them in ``work/view/`` and the API maps them back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from worker.viewer.layers import (
    DESCRIPTION,
    IMAGE,
    VIEW_FOLDER,
    build_layers,
    display_lesion,
    dose_levels,
    load_layers,
    save_layers,
)


def _ct(direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    values = np.arange(6 * 8 * 10, dtype=np.float32).reshape(6, 8, 10) - 300.0
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.7, 0.9, 3.0))
    image.SetOrigin((-20.0, 15.0, -40.0))
    image.SetDirection(direction)
    return image


def _like(image: sitk.Image, values: np.ndarray) -> sitk.Image:
    other = sitk.GetImageFromArray(values)
    other.CopyInformation(image)
    return other


def test_dose_levels_count_the_levels_reached() -> None:
    dose = np.array([0.0, 29.9, 30.0, 55.0, 70.0])

    assert dose_levels(dose, [30.0, 50.0, 66.5]).tolist() == [0, 0, 1, 2, 3]


def test_layers_are_saved_whole_and_mapped_back_equal(tmp_path: Path) -> None:
    ct = _ct()
    dose = _like(ct, np.linspace(0, 70, 6 * 8 * 10, dtype=np.float32).reshape(6, 8, 10))
    planning = sitk.Cast(_like(ct, sitk.GetArrayFromImage(ct) + 5), sitk.sitkInt16)
    layers = build_layers(ct, dose, planning)

    save_layers(tmp_path, layers)
    loaded = load_layers(tmp_path)

    assert layers.image.dtype == np.int16, "integral CT is kept as int16"
    assert np.array_equal(loaded.image, sitk.GetArrayFromImage(ct).astype(np.int16))
    assert loaded.planning is not None and np.array_equal(loaded.planning, layers.planning)
    assert loaded.dose_levels is not None and int(loaded.dose_levels.max()) == 3
    assert [level.percent for level in loaded.isodose] == [50, 80, 95]
    assert loaded.isodose[-1].gy == pytest.approx(0.95 * 70, abs=0.01)
    assert loaded.grid == layers.grid and loaded.percentile_window == layers.percentile_window
    assert isinstance(loaded.image, np.memmap), "the API maps the arrays, it does not read them"
    assert not list(tmp_path.glob(".*partial*")), "no staging folder is left"


def test_a_feet_first_follow_up_is_saved_on_the_lps_grid(tmp_path: Path) -> None:
    feet_first = _ct((1, 0, 0, 0, 1, 0, 0, 0, -1))
    layers = build_layers(feet_first, None, None)

    assert layers.dose_levels is None and layers.planning is None and layers.isodose == []
    # Slice k of the display grid is the stored slice nz-1-k: superior now comes last.
    stored = sitk.GetArrayFromImage(feet_first).astype(np.int16)
    assert np.array_equal(layers.image, stored[::-1])
    assert layers.grid.origin[2] == pytest.approx(-40.0 - 5 * 3.0)


def test_mr_values_stay_float(tmp_path: Path) -> None:
    ct = _ct()
    mr = _like(ct, np.linspace(0.25, 900.5, 6 * 8 * 10, dtype=np.float32).reshape(6, 8, 10))

    layers = build_layers(mr, None, None)

    assert layers.image.dtype == np.float32
    level, width = layers.percentile_window
    assert 0.25 < level < 900.5 and 0 < width < 900.25


def test_a_failed_save_keeps_the_previous_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ct = _ct()
    save_layers(tmp_path, build_layers(ct, None, None))
    before = (tmp_path / VIEW_FOLDER / IMAGE).read_bytes()

    def disk_full(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("worker.viewer.layers.write_atomically", disk_full)
    with pytest.raises(OSError):
        save_layers(tmp_path, build_layers(_like(ct, np.zeros((6, 8, 10), np.float32)), None, None))

    assert (tmp_path / VIEW_FOLDER / IMAGE).read_bytes() == before
    assert (tmp_path / VIEW_FOLDER / DESCRIPTION).is_file()
    assert not list(tmp_path.glob(".*partial*"))


def test_the_lesion_lands_on_the_display_grid_as_zero_or_one() -> None:
    feet_first = _ct((1, 0, 0, 0, 1, 0, 0, 0, -1))
    mask = np.zeros((6, 8, 10), np.uint8)
    mask[0, 2, 3] = 7  # stored slice 0 is the most superior one
    grid = build_layers(feet_first, None, None).grid

    lesion = display_lesion(_like(feet_first, mask), grid)

    assert lesion.dtype == np.uint8 and set(np.unique(lesion)) == {0, 1}
    assert lesion[5, 2, 3] == 1 and int(lesion.sum()) == 1
