"""The viewer's slice PNGs, decoded with PIL: grey levels through a window and RGBA overlays."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.viewer.render import (
    CHECKER_SQUARES,
    LESION_FILL_ALPHA,
    Window,
    checkerboard_slice,
    grey_slice,
    isodose_slice,
    lesion_slice,
    png,
)

SOFT_TISSUE = Window("ct-soft", "CT soft tissue", level=40.0, width=400.0)


def decoded(data: bytes) -> tuple[str, np.ndarray]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.mode, np.asarray(image)


def test_a_window_maps_its_ends_to_black_and_white_and_clips_beyond() -> None:
    low, high = SOFT_TISSUE.level - SOFT_TISSUE.width / 2, SOFT_TISSUE.level + SOFT_TISSUE.width / 2
    values = np.array([-1000.0, low, SOFT_TISSUE.level, high, 3000.0])

    grey = SOFT_TISSUE.grey(values)

    assert grey.dtype == np.uint8
    assert grey.tolist() == [0, 0, 127, 255, 255]


def test_a_grey_slice_is_one_grey_pixel_per_value() -> None:
    values = np.array([[-160, 240, 40], [-500, 1000, -160]], np.int16)

    mode, pixels = decoded(grey_slice(values, SOFT_TISSUE))

    assert mode == "L"
    assert pixels.tolist() == [[0, 255, 127], [0, 255, 0]]


def test_png_round_trips_rgba() -> None:
    rgba = np.arange(3 * 5 * 4, dtype=np.uint8).reshape(3, 5, 4)

    mode, pixels = decoded(png(rgba))

    assert mode == "RGBA" and np.array_equal(pixels, rgba)


def test_a_lesion_is_an_opaque_outline_around_a_half_transparent_fill() -> None:
    mask = np.zeros((9, 10), np.uint8)
    mask[2:7, 3:8] = 1  # a 5 x 5 square away from the slice's edges

    mode, pixels = decoded(lesion_slice(mask, "#ff8000"))

    assert mode == "RGBA" and pixels.shape == (9, 10, 4)
    expected_alpha = np.zeros((9, 10), np.uint8)
    expected_alpha[2:7, 3:8] = 255
    expected_alpha[3:6, 4:7] = LESION_FILL_ALPHA
    assert np.array_equal(pixels[..., 3], expected_alpha)
    assert LESION_FILL_ALPHA not in (0, 255)
    assert (pixels[mask > 0][:, :3] == (255, 128, 0)).all()


def test_an_empty_lesion_slice_is_fully_transparent() -> None:
    _, pixels = decoded(lesion_slice(np.zeros((4, 6), np.uint8), "#00ff00"))

    assert not pixels[..., 3].any()


def test_isodose_lines_lie_on_the_band_edges_only() -> None:
    levels = np.zeros((11, 11), np.uint8)
    levels[1:10, 1:10] = 1
    levels[4:7, 4:7] = 2
    colours = ["#b388ff", "#3ddc3d"]

    _, pixels = decoded(isodose_slice(levels, colours))

    outer, inner = np.zeros((11, 11), bool), np.zeros((11, 11), bool)
    outer[1:10, 1:10] = True
    outer[2:9, 2:9] = False  # the one-pixel ring of the area at level 1 or above
    inner[4:7, 4:7] = True
    inner[5, 5] = False  # the ring of the area at level 2
    assert np.array_equal(pixels[..., 3] == 255, outer | inner)
    assert not pixels[..., 3][~(outer | inner)].any(), "inside a band and outside: transparent"
    assert (pixels[outer][:, :3] == (0xB3, 0x88, 0xFF)).all()
    assert (pixels[inner][:, :3] == (0x3D, 0xDC, 0x3D)).all()


@pytest.mark.parametrize("shape", [(16, 16), (16, 24)])
def test_a_checkerboard_alternates_follow_up_and_planning_squares(shape: tuple[int, int]) -> None:
    followup = np.full(shape, -1000, np.int16)  # black through the window
    planning = np.full(shape, 1000, np.int16)  # white

    _, pixels = decoded(checkerboard_slice(followup, planning, SOFT_TISSUE))

    side = max(shape) // CHECKER_SQUARES
    rows, columns = np.indices(shape)
    planning_square = (rows // side + columns // side) % 2 == 1
    assert np.array_equal(pixels, np.where(planning_square, 255, 0))
    assert pixels[0, 0] == 0 and pixels[0, side] == 255 and pixels[side, 0] == 255 and pixels[side, side] == 0
