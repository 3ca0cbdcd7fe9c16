"""Slices as PNG for the web viewer: grey levels through a window, and RGBA overlays.

One pixel of the PNG is one display-grid pixel; the browser stretches it to the pixel's
millimetre aspect. Overlays are transparent where there is nothing, so they stack on the image.
zlib level 1: a 512² slice encodes in a few milliseconds, and loopback does not need more.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

#: Opacity of a lesion's fill (its outline is opaque).
LESION_FILL_ALPHA = 90
CHECKER_SQUARES = 8


@dataclass(frozen=True)
class Window:
    """A window/level preset: grey 0 at ``level - width/2``, white at ``level + width/2``."""

    id: str
    label: str
    level: float
    width: float

    def grey(self, values: np.ndarray) -> np.ndarray:
        low = self.level - self.width / 2
        scaled = (values.astype(np.float32) - low) * (255.0 / self.width)
        return np.clip(scaled, 0, 255).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    """PNG of a (rows, columns) grey or (rows, columns, 4) RGBA uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def grey_slice(values: np.ndarray, window: Window) -> bytes:
    return png(window.grey(values))


def checkerboard_slice(followup: np.ndarray, planning: np.ndarray, window: Window) -> bytes:
    """Squares of the follow-up and of the planning CT on it, alternating: edges that run on
    across squares show a good registration, steps show where it is off."""
    rows, columns = followup.shape
    side = max(max(rows, columns) // CHECKER_SQUARES, 1)
    row_band = (np.arange(rows) // side)[:, None]
    column_band = (np.arange(columns) // side)[None, :]
    planning_squares = (row_band + column_band) % 2 == 1
    return png(window.grey(np.where(planning_squares, planning, followup)))


def lesion_slice(mask: np.ndarray, colour: str) -> bytes:
    """The lesion filled half-transparent in ``colour`` (``#rrggbb``), with an opaque outline."""
    inside = mask > 0
    outline = inside & ~ndimage.binary_erosion(inside)
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[..., :3] = _rgb(colour)
    rgba[..., 3] = np.where(outline, 255, np.where(inside, LESION_FILL_ALPHA, 0))
    return png(rgba)


def isodose_slice(levels: np.ndarray, colours: Sequence[str]) -> bytes:
    """Isodose lines from a slice of level numbers (0 below every level, n at or above the n-th
    lowest): the line of level n is the edge of the area at or above it."""
    rgba = np.zeros((*levels.shape, 4), np.uint8)
    for number, colour in enumerate(colours, start=1):
        above = levels >= number
        line = above & ~ndimage.binary_erosion(above)
        rgba[line] = (*_rgb(colour), 255)
    return png(rgba)


def _rgb(colour: str) -> tuple[int, int, int]:
    value = int(colour.removeprefix("#"), 16)
    return (value >> 16) & 255, (value >> 8) & 255, value & 255
