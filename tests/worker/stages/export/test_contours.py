"""Pixel-edge outlines: rasterised at pixel centres they give back exactly the pixels."""

from __future__ import annotations

import numpy as np
import pytest

from worker.stages.export.contours import slice_loops
from worker.stages.read.rtstruct import polygon_mask


def _rasterise(loops, shape):  # type: ignore[no-untyped-def]
    out = np.zeros(shape, dtype=bool)
    for loop in loops:
        out ^= polygon_mask(loop.points[:, 0], loop.points[:, 1], *shape)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_random_masks_round_trip_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((15, 17)) < rng.uniform(0.2, 0.8)
    assert np.array_equal(_rasterise(slice_loops(mask), mask.shape), mask)


def test_hole_is_a_loop_of_its_own_orientation() -> None:
    ring = np.zeros((9, 9), bool)
    ring[1:8, 1:8] = True
    ring[3:6, 3:6] = False
    loops = slice_loops(ring)
    assert sorted(loop.is_hole for loop in loops) == [False, True]
    outer = next(loop for loop in loops if not loop.is_hole)
    # Collinear corners are dropped: a square outline keeps its 4 corners, on pixel edges.
    assert len(outer.points) == 4
    assert outer.points.min(axis=0).tolist() == [0.5, 0.5] and outer.points.max(axis=0).tolist() == [7.5, 7.5]


def test_diagonal_neighbours_stay_separate_regions() -> None:
    mask = np.array([[1, 0], [0, 1]], bool)
    loops = slice_loops(mask)
    assert len(loops) == 2 and not any(loop.is_hole for loop in loops)
    assert all(len(loop.points) == 4 for loop in loops)


def test_empty_and_full_masks() -> None:
    assert slice_loops(np.zeros((4, 4), bool)) == []
    (loop,) = slice_loops(np.ones((3, 5), bool))
    assert loop.points.min(axis=0).tolist() == [-0.5, -0.5] and loop.points.max(axis=0).tolist() == [2.5, 4.5]
