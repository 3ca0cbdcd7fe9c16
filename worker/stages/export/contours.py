"""Binary slice masks → closed polygons along pixel edges.

The outline follows the cracks between inside and outside pixels, so its vertices are pixel
corners. Rasterising such a polygon at pixel centres (what every reader does) gives back exactly
the pixels it came from; tracing pixel centres instead (OpenCV's findContours, rt-utils) loses half
a pixel all round, which is a third of the volume of a 0.2 cc lesion.

Where two pixels touch only at a corner, the outline keeps them apart (4-connected regions), and
holes come out as separate loops of opposite orientation; readers combine the loops of a slice
with the even-odd rule (XOR), which keeps holes as holes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

Vertex = tuple[int, int]  # (row, col) of a pixel corner: pixel (r, c) spans corners r..r+1, c..c+1


@dataclass(frozen=True)
class Loop:
    """A closed outline in (row, col) pixel-index coordinates (pixel centres at integers)."""

    points: np.ndarray  # (N, 2), not repeating the first point
    is_hole: bool


def slice_loops(mask: np.ndarray) -> list[Loop]:
    """Outlines of every region and hole of a 2-D boolean mask."""
    edges = _boundary_edges(np.asarray(mask, dtype=bool))
    loops = []
    for corners in _link(edges):
        simplified = _drop_collinear(np.asarray(corners, dtype=np.float64))
        if len(simplified) < 3:
            continue  # cannot happen for pixel outlines; a guard, as RTSTRUCT forbids it
        loops.append(Loop(points=simplified - 0.5, is_hole=_signed_area(simplified) > 0))
    return loops


def _boundary_edges(mask: np.ndarray) -> dict[Vertex, list[tuple[Vertex, Vertex]]]:
    """Directed edges between inside and outside pixels, keyed by start vertex.

    Each edge is stored with the pixel it belongs to, so that at a corner where two diagonal
    pixels meet the walk can stay with its own pixel.
    """
    padded = np.pad(mask, 1)
    inside = padded[1:-1, 1:-1]
    out: dict[Vertex, list[tuple[Vertex, Vertex]]] = defaultdict(list)
    # (neighbour offset, edge start corner offset, edge end corner offset), a consistent
    # orientation around each pixel: top → left → bottom → right.
    sides = (
        ((-1, 0), (0, 1), (0, 0)),
        ((0, -1), (0, 0), (1, 0)),
        ((1, 0), (1, 0), (1, 1)),
        ((0, 1), (1, 1), (0, 1)),
    )
    for (dr, dc), start, end in sides:
        neighbour = padded[1 + dr : padded.shape[0] - 1 + dr, 1 + dc : padded.shape[1] - 1 + dc]
        for r, c in np.argwhere(inside & ~neighbour):
            r, c = int(r), int(c)
            out[(r + start[0], c + start[1])].append(((r + end[0], c + end[1]), (r, c)))
    return out


def _link(edges: dict[Vertex, list[tuple[Vertex, Vertex]]]) -> list[list[Vertex]]:
    """Walk the directed edges into closed loops."""
    loops = []
    while edges:
        start = next(iter(edges))
        end, pixel = _take(edges, start, None)
        corners = [start]
        while end != start:
            corners.append(end)
            end, pixel = _take(edges, end, pixel)
        loops.append(corners)
    return loops


def _take(
    edges: dict[Vertex, list[tuple[Vertex, Vertex]]], vertex: Vertex, pixel: Vertex | None
) -> tuple[Vertex, Vertex]:
    candidates = edges[vertex]
    index = 0
    if len(candidates) > 1 and pixel is not None:
        # A corner shared by two diagonal pixels: continue around the same pixel.
        index = next((i for i, (_, p) in enumerate(candidates) if p == pixel), 0)
    end, owner = candidates.pop(index)
    if not candidates:
        del edges[vertex]
    return end, owner


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    previous = np.roll(points, 1, axis=0)
    following = np.roll(points, -1, axis=0)
    a, b = points - previous, following - points
    turn = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    return points[turn != 0]


def _signed_area(points: np.ndarray) -> float:
    """Negative for region outlines, positive for holes, given the edge orientation above
    (shoelace formula in (row, col) coordinates)."""
    r, c = points[:, 0], points[:, 1]
    return float(0.5 * np.sum(c * np.roll(r, -1) - np.roll(c, -1) * r))
