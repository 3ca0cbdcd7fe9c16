"""Sample the phantom on an image grid and turn tissues into CT or MR values.

The planning CT shows the anatomy before any injury. A follow-up grid is
evaluated through the true transform (follow-up point → planning point), so
the anatomy and the lesion appear misaligned by exactly that transform. The
ground truth is the lesion sampled at the follow-up voxel centres.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from .geometry import Grid
from .lesions import Lesion
from .phantom import tissue_labels
from .tissues import appearance_table
from .transform import TrueTransform

TASK_CONTRAST = {"orn": "ct", "ce": "flair", "crn": "t1c"}

# Scanner blur: Gaussian point-spread, sigma in mm.
_PSF_SIGMA_MM = 0.6
_CT_NOISE_HU = 12.0
_MR_NOISE = 10.0


def _blur(volume: np.ndarray, grid: Grid) -> np.ndarray:
    sigma = [_PSF_SIGMA_MM / s for s in (grid.spacing[2], grid.spacing[1], grid.spacing[0])]
    return gaussian_filter(volume, sigma=sigma, mode="nearest")


def _finish_ct(hu: np.ndarray, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    noisy = _blur(hu, grid) + rng.normal(0.0, _CT_NOISE_HU, hu.shape).astype(np.float32)
    return noisy.astype(np.float32)


def _finish_mr(signal: np.ndarray, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    x, y, z = grid.points()
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    # A gentle linear receive-coil bias (±8 % over 100 mm) and Rician noise
    # (magnitude of complex Gaussian noise), as in real magnitude images.
    ramp = (direction[0] * x + direction[1] * y + direction[2] * (z - z.mean())) / 100.0
    biased = _blur(signal, grid) * (1.0 + 0.08 * np.clip(ramp, -1.5, 1.5))
    real = biased + rng.normal(0.0, _MR_NOISE, signal.shape)
    imag = rng.normal(0.0, _MR_NOISE, signal.shape)
    return np.hypot(real, imag).astype(np.float32)


def render_planning_ct(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Planning CT in HU, float32, shape (slices, rows, columns)."""
    labels = tissue_labels(*grid.points())
    return _finish_ct(appearance_table("ct")[labels], grid, rng)


def _paint_orn(hu: np.ndarray, truth: np.ndarray, tex: np.ndarray) -> None:
    # Lytic destruction: bone replaced by granulation tissue, with mottled
    # residual fragments (sequestra) where the texture peaks.
    hu[truth] = 40.0 + 90.0 * tex[truth]
    hu[truth & (tex > 0.75)] = 650.0


def _paint_ce(img: np.ndarray, q: np.ndarray, host: np.ndarray, tex: np.ndarray) -> None:
    # Diffuse FLAIR hyperintensity with a soft edge centred on the boundary.
    weight = host / (1.0 + np.exp((q - 1.0) / 0.06))
    edema = 720.0 * (1.0 + 0.12 * tex)
    img[:] = img * (1.0 - weight) + edema * weight


def _paint_crn(img: np.ndarray, q: np.ndarray, host: np.ndarray, tex: np.ndarray, core: float) -> None:
    # Ring enhancement: bright rim, dark necrotic core, mild T1-hypointense
    # perilesional edema.
    img[host & (q >= 1.0) & (q < 1.5)] *= 0.85
    rim = host & (q >= core) & (q < 1.0)
    img[rim] = 1000.0 * (1.0 + 0.1 * tex[rim])
    img[host & (q < core)] = 140.0


def _crn_core(lesion: Lesion, scale: float) -> float:
    mean_radius = scale * float(np.prod(lesion.semi)) ** (1.0 / 3.0)
    return max(0.35, 1.0 - 2.5 / mean_radius)  # rim about 2.5 mm thick


def _lesion_fields(
    lesion: Lesion, scale: float, x: np.ndarray, y: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised lesion coordinate q (boundary at 1) and texture, near the lesion only."""
    # Beyond this distance q > 1.5 everywhere (the widest band painted), so
    # the costly blob evaluation is limited to a ball around the centre.
    reach = 1.5 * scale * float(np.max(lesion.semi)) / (1.0 - lesion.roughness)
    d2 = (x - lesion.centre[0]) ** 2 + (y - lesion.centre[1]) ** 2 + (z - lesion.centre[2]) ** 2
    near = d2 < reach**2
    q = np.full(x.shape, np.inf, dtype=np.float32)
    tex = np.zeros(x.shape, dtype=np.float32)
    q[near] = lesion.shape_coordinate(x[near], y[near], z[near]) / scale
    tex[near] = lesion.texture(x[near], y[near], z[near])
    return q, tex


def render_followup(
    grid: Grid,
    transform: TrueTransform,
    lesion: Lesion,
    index: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Follow-up image and ground-truth mask for follow-up ``index``.

    Returns
    -------
    image : numpy.ndarray, float32, shape (slices, rows, columns)
        HU for ORN (CT), signal units for CE (FLAIR) and CRN (T1 post-contrast).
    truth : numpy.ndarray, bool, same shape
    """
    xp, yp, zp = transform.apply_xyz(*grid.points())
    labels = tissue_labels(xp, yp, zp)
    scale = lesion.scales[index]
    q, tex = _lesion_fields(lesion, scale, xp, yp, zp)
    host = lesion.host_mask(xp, yp, zp, labels)
    truth = host & (q < 1.0)
    image = appearance_table(TASK_CONTRAST[lesion.task])[labels]
    if lesion.task == "orn":
        _paint_orn(image, truth, tex)
        return _finish_ct(image, grid, rng), truth
    if lesion.task == "ce":
        _paint_ce(image, q, host, tex)
    else:
        _paint_crn(image, q, host, tex, _crn_core(lesion, scale))
    return _finish_mr(image, grid, rng), truth
