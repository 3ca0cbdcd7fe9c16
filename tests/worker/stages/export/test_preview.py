"""The preview PNG, rendered for real and read back with Pillow.

Orientation is checked with a phantom whose lesion sits at a known side of the patient: at
patient left (LPS +x), anterior (−y) and superior (+z). In radiological convention it must show
in the right half of the axial and coronal panels, the top half of the axial panel (anterior
up), the left half of the sagittal panel (anterior left) and the top half of the sagittal and
coronal panels (superior up) — whatever the stored grid: head-first, feet-first, or oblique.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from models.tasks import TASKS
from worker.stages.export.algorithm import UNREVIEWED
from worker.stages.export.preview import ISODOSE_COLOURS, PreviewInfo, render_preview

LESION_CENTRE = np.array([45.0, -20.0, 15.0])
LESION_RADIUS = 8.0
DOSE_CENTRE = np.array([40.0, -22.0, 12.0])
#: Colour match per channel: anti-aliased edges blend, the middle of a line keeps its colour.
COLOUR_TOLERANCE = 30
#: Fewer matching pixels than this in a panel counts as "not drawn there".
MIN_PIXELS = 15


def head(points: np.ndarray, modality: str) -> np.ndarray:
    """A head: air outside, soft tissue inside an ellipsoid, a bony shell, a brighter lesion."""
    r = np.sqrt(((points / np.array([85.0, 100.0, 80.0])) ** 2).sum(axis=-1))
    lesion = np.linalg.norm(points - LESION_CENTRE, axis=-1) <= LESION_RADIUS
    if modality == "CT":
        values = np.where(r <= 1.0, 40.0, -1000.0)
        values = np.where((r > 0.9) & (r <= 1.0), 1200.0, values)
        return np.where(lesion, 300.0, values)
    # MR: tissue with texture (a seeded noise), so a percentile window has something to spread.
    texture = np.random.default_rng(0).normal(0.0, 40.0, r.shape)
    values = np.where(r <= 1.0, 400.0 + texture, 0.0)
    return np.where(lesion, 900.0, values)


def gaussian_dose(points: np.ndarray) -> np.ndarray:
    """70 Gy peak near the lesion; the 95/80/50 % lines are 8, 17 and 29 mm from the peak."""
    return 70.0 * np.exp(-(np.linalg.norm(points - DOSE_CENTRE, axis=-1) ** 2) / (2.0 * 25.0**2))


GRIDS = {
    "head-first": ("HFS", (1.8, 1.6, 2.5)),
    "feet-first": ("FFS", (1.6, 1.9, 3.0)),
    "oblique": ("oblique", (1.5, 1.8, 2.2)),
}


def follow_up(kit: Any, orientation: str, modality: str = "CT") -> dict[str, sitk.Image]:
    """Image, lesion, dose and high-dose region on a follow-up grid of the given kind."""
    name, spacing = GRIDS[orientation]
    direction = kit.oblique(25.0, 15.0) if name == "oblique" else getattr(kit, name)
    # Rows ≠ columns and a field of view of about 200 × 200 × 150 mm around the head.
    size = [round(extent / s) for extent, s in zip((200.0, 220.0, 150.0), spacing, strict=True)]
    grid = kit.grid(size, spacing, direction)
    dose = kit.field(grid, gaussian_dose)
    return {
        "image": kit.field(grid, lambda p: head(p, modality)),
        "lesion": kit.sphere(grid, LESION_CENTRE, LESION_RADIUS),
        "dose": dose,
        "region": kit.like(
            grid, sitk.GetArrayFromImage(dose) >= 0.8 * float(sitk.GetArrayViewFromImage(dose).max())
        ),
    }


def colour_mask(pixels: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.all(np.abs(pixels.astype(int) - np.asarray(rgb)) <= COLOUR_TOLERANCE, axis=-1)


def panel(pixels: np.ndarray, info: PreviewInfo, name: str) -> np.ndarray:
    left, top, right, bottom = info.panels_px[name]
    return pixels[top:bottom, left:right]


def where_drawn(pixels: np.ndarray, info: PreviewInfo, name: str, rgb: tuple[int, int, int]) -> np.ndarray:
    """(row, col) of the pixels of colour ``rgb`` in a panel, relative to its centre (−0.5..0.5)."""
    region = colour_mask(panel(pixels, info, name), rgb)
    rows, cols = np.nonzero(region)
    return np.column_stack([rows / region.shape[0] - 0.5, cols / region.shape[1] - 0.5])


def hex_rgb(colour: str) -> tuple[int, int, int]:
    return (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16))


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (1500, 600)
        assert image.mode == "RGB"
        return np.asarray(image)


@pytest.mark.parametrize("orientation", list(GRIDS))
def test_lesion_is_drawn_on_the_patients_side_in_every_panel(
    orientation: str, export_grid_kit: Any, tmp_path: Path
) -> None:
    scan = follow_up(export_grid_kit, orientation)
    info = render_preview(
        image=scan["image"],
        lesion_mask=scan["lesion"],
        dose=scan["dose"],
        task="orn",
        out_path=tmp_path / "preview.png",
        title_lines=("case-0001", "Follow-up CT 2024-03-01"),
        region_mask=scan["region"],
    )
    pixels = read_png(info.path)
    assert (info.width, info.height) == (1500, 600)
    assert info.centred_on == "lesion centroid"
    assert info.centre_mm == pytest.approx(tuple(LESION_CENTRE), abs=0.5)
    assert info.slices_mm == pytest.approx(
        {"axial": LESION_CENTRE[2], "sagittal": LESION_CENTRE[0], "coronal": LESION_CENTRE[1]}, abs=0.5
    )
    orange = TASKS["orn"].colour
    drawn = {name: where_drawn(pixels, info, name, orange) for name in ("axial", "sagittal", "coronal")}
    for name, points in drawn.items():
        assert len(points) >= MIN_PIXELS, f"no lesion outline in the {name} panel"
    # Patient left (+x) → image right in axial and coronal; anterior (−y) → up in axial and
    # left in sagittal; superior (+z) → up in sagittal and coronal. The panels are centred on
    # the head's centre (LPS origin) and the lesion stays ≥ 7 mm off it along every axis.
    assert drawn["axial"][:, 1].min() > 0.0 and drawn["axial"][:, 0].max() < 0.0
    assert drawn["coronal"][:, 1].min() > 0.0 and drawn["coronal"][:, 0].max() < 0.0
    assert drawn["sagittal"][:, 1].max() < 0.0 and drawn["sagittal"][:, 0].max() < 0.0
    assert info.header[0] == f"Osteoradionecrosis — {UNREVIEWED}"
    # 4/3·π·8³ mm³ = 2.14 cc; voxelised on 2.5–3 mm slices, within 10 %.
    volume = float(info.header[1].split()[1])
    assert volume == pytest.approx(4.0 / 3.0 * np.pi * LESION_RADIUS**3 / 1000.0, rel=0.1)


def test_isodose_lines_only_with_a_dose(export_grid_kit: Any, tmp_path: Path) -> None:
    scan = follow_up(export_grid_kit, "oblique")
    common = {"image": scan["image"], "lesion_mask": scan["lesion"], "task": "orn"}
    with_dose = render_preview(**common, dose=scan["dose"], out_path=tmp_path / "dose.png")
    without = render_preview(**common, dose=None, out_path=tmp_path / "no-dose.png")
    pixels, bare = read_png(with_dose.path), read_png(without.path)
    for percent, colour in ISODOSE_COLOURS.items():
        for name in ("axial", "sagittal", "coronal"):
            count = int(colour_mask(panel(pixels, with_dose, name), hex_rgb(colour)).sum())
            assert count >= MIN_PIXELS, f"{percent}% isodose missing from the {name} panel"
        assert int(colour_mask(bare, hex_rgb(colour)).sum()) == 0, f"{percent}% isodose drawn without a dose"
    # The lesion is drawn either way.
    assert colour_mask(panel(bare, without, "axial"), TASKS["orn"].colour).sum() >= MIN_PIXELS


def test_empty_lesion_is_centred_on_the_high_dose_region(export_grid_kit: Any, tmp_path: Path) -> None:
    scan = follow_up(export_grid_kit, "feet-first")
    empty = export_grid_kit.like(
        scan["lesion"], np.zeros(sitk.GetArrayViewFromImage(scan["lesion"]).shape, bool)
    )
    info = render_preview(
        image=scan["image"],
        lesion_mask=empty,
        dose=scan["dose"],
        task="orn",
        out_path=tmp_path / "empty.png",
        region_mask=scan["region"],
    )
    pixels = read_png(info.path)
    assert info.centred_on == "high-dose region"
    assert info.centre_mm == pytest.approx(tuple(DOSE_CENTRE), abs=2.0)
    assert info.header[1] == "No lesion found — views through the high-dose region"
    for name in ("axial", "sagittal", "coronal"):
        assert colour_mask(panel(pixels, info, name), TASKS["orn"].colour).sum() == 0
    # Without a region either, the dose maximum; without a dose too, the image centre.
    no_region = render_preview(
        image=scan["image"], lesion_mask=empty, dose=scan["dose"], task="orn", out_path=tmp_path / "a.png"
    )
    assert no_region.centred_on == "dose maximum"
    nothing = render_preview(
        image=scan["image"], lesion_mask=empty, dose=None, task="orn", out_path=tmp_path / "b.png"
    )
    assert nothing.centred_on == "image centre"
    assert nothing.centre_mm == pytest.approx((0.0, 0.0, 0.0), abs=2.0)


def test_planes_cut_a_lesion_whose_centroid_lies_outside_it(export_grid_kit: Any, tmp_path: Path) -> None:
    """Two blobs at patient left and right: the centroid (x = 0) is between them, in neither.

    A sagittal plane through the centroid would miss both; the preview moves to the nearest
    lesion voxel so that every panel shows the lesion.
    """
    scan = follow_up(export_grid_kit, "head-first")
    mirrored = LESION_CENTRE * np.array([-1.0, 1.0, 1.0])
    both = sitk.Or(scan["lesion"], export_grid_kit.sphere(scan["lesion"], mirrored, LESION_RADIUS))
    info = render_preview(
        image=scan["image"], lesion_mask=both, dose=None, task="crn", out_path=tmp_path / "two.png"
    )
    pixels = read_png(info.path)
    assert info.centred_on == "lesion voxel nearest its centroid"
    assert abs(info.centre_mm[0]) > LESION_CENTRE[0] - LESION_RADIUS - 2.0
    for name in ("axial", "sagittal", "coronal"):
        assert colour_mask(panel(pixels, info, name), TASKS["crn"].colour).sum() >= MIN_PIXELS, name
    assert "2 components" in info.header[1]


@pytest.mark.parametrize("task", ["ce", "crn"])
def test_mr_tasks_render_in_their_colour(task: str, export_grid_kit: Any, tmp_path: Path) -> None:
    scan = follow_up(export_grid_kit, "oblique", modality="MR")
    info = render_preview(
        image=scan["image"],
        lesion_mask=scan["lesion"],
        dose=scan["dose"],
        task=task,
        out_path=tmp_path / "mr.png",
    )
    pixels = read_png(info.path)
    for name in ("axial", "sagittal", "coronal"):
        assert colour_mask(panel(pixels, info, name), TASKS[task].colour).sum() >= MIN_PIXELS, name
    # Percentile window: the head's tissue is grey with visible texture, neither black nor
    # clipped flat to white.
    axial = panel(pixels, info, "axial")[..., 0].astype(float)
    rows, cols = axial.shape
    middle = axial[rows // 2 - 20 : rows // 2 + 20, cols // 2 - 20 : cols // 2 + 20]
    assert 60 < middle.mean() < 240 and middle.std() > 5


def test_same_inputs_give_the_same_bytes(export_grid_kit: Any, tmp_path: Path) -> None:
    scan = follow_up(export_grid_kit, "head-first")
    paths = [tmp_path / "one.png", tmp_path / "two.png"]
    for path in paths:
        render_preview(
            image=scan["image"], lesion_mask=scan["lesion"], dose=scan["dose"], task="orn", out_path=path
        )
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png", "two.png"]  # no temporary file left
    assert paths[0].stat().st_mode & 0o777 == 0o644


def test_real_case_preview(export_orn_case: Any, export_artefacts: Path) -> None:
    """The synthetic ORN patient's true lesion on its follow-up CT, kept as an artefact to look at."""
    case = export_orn_case
    info = render_preview(
        image=case.data.followup.image,
        lesion_mask=case.lesion,
        dose=case.prepared.dose.image,
        task="orn",
        out_path=export_artefacts / "orn-preview.png",
        title_lines=("case-0001", f"Follow-up CT {case.study_date}"),
        region_mask=case.region,
    )
    pixels = read_png(info.path)
    truth = case.truth["lesion"]["centroid_followup_mm"]
    assert info.centre_mm == pytest.approx(tuple(truth), abs=0.01)
    for name in ("axial", "sagittal", "coronal"):
        assert colour_mask(panel(pixels, info, name), TASKS["orn"].colour).sum() >= MIN_PIXELS, name
