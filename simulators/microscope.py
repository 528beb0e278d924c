"""Simulated scanning electron microscope: a sample's morphology -> secondary-electron micrographs.

Two magnifications, as paper 000 images its precursors:

* **low** (~3k×): secondary particles whose equivalent diameters follow the sample's lognormal size
  distribution and whose outlines follow its sphericity distribution, with surface texture, touching
  neighbours, edge brightening and shadowing; exact ground-truth masks.
* **high** (~15k×): the primary platelets on the surfaces of a few secondary particles; their width sets
  the texture that ``morphloop describe`` measures.

Both get detector noise, a brightness/contrast drift, optional charging artefacts and an instrument info bar
with a scale bar. The field of view follows the magnification (``FIELD_OF_VIEW_AT_1X_UM / magnification``), so a
1024-px frame has 0.05 µm pixels at 3k× and 0.01 µm pixels at 15k×.

Sizes and shapes are drawn by stratified sampling (one draw per quantile, shuffled), so a frame of a few
dozen particles shows the sample's distribution rather than a noisy draw of it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage, stats

from simulators.conditions import Morphology
from simulators.fields import (
    FREE_GAP_PX,
    INFO_BAR_FRACTION,
    StarShape,
    _place_in_contact,
    _render_particles,
    _rmax,
    draw_info_bar,
    make_platelet_field,
    polygon_area_perimeter,
    write_sem_tiff,
)

MAGNIFICATIONS = {"low": 3000.0, "high": 15000.0}
#: Horizontal field of view (µm) at 1× magnification: 51.2 µm at 3k×, 10.24 µm at 15k×.
FIELD_OF_VIEW_AT_1X_UM = 153_600.0
#: Particle area over frame area at low magnification (room to place without crowding out large particles).
LOW_MAG_COVERAGE = 0.30
#: Sum of the particles' bounding-disc areas over the frame area: above it the smallest ones find no room.
MAX_BOUNDING_COVERAGE = 0.42
#: Sphericities the outline family can reach (per particle targets are clipped to this range).
SPHERICITY_RANGE = (0.58, 0.985)
#: Frozen calibration: primary-platelet width (px at 0.010 µm/px) -> texture measured by ``describe`` on
#: :func:`render_micrograph` high-magnification frames (1024², platelet aspect 4, three seeds each). Reproduce with
#: ``.venv/bin/python benchmarks/calibrate_microscope.py``. Texture decreases with width.
TEXTURE_CALIBRATION_WIDTH_PX = np.array([1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 11.0, 16.0])
TEXTURE_CALIBRATION_TEXTURE = np.array([0.956, 0.905, 0.793, 0.658, 0.421, 0.233, 0.078, 0.0])

_HARMONICS = np.arange(2, 7)  # StarShape's harmonic orders
_MAX_AMPLITUDE_SUM = 0.85  # r >= 0.15 R: keeps outlines star-shaped
_THETA = np.linspace(0.0, 2 * np.pi, 180, endpoint=False)  # outline samples for the sphericity search
_COS, _SIN = np.cos(_THETA), np.sin(_THETA)


def pixel_size_for(magnification: float, width_px: int = 1024) -> float:
    """Side of one pixel (µm) of a ``width_px``-wide frame at ``magnification``."""
    if not (magnification > 0 and math.isfinite(magnification)):
        raise ValueError(f"magnification must be a positive number, got {magnification}")
    return FIELD_OF_VIEW_AT_1X_UM / float(magnification) / int(width_px)


def platelet_width_for_texture(texture: float, pixel_size_um: float = 0.010) -> float:
    """Primary-platelet width (px at ``pixel_size_um``) whose frames ``describe`` measures as ``texture``."""
    t = float(np.clip(texture, 0.0, 1.0))
    # np.interp needs increasing x: interpolate on the reversed table (log width for a smooth curve)
    log_w = np.interp(t, TEXTURE_CALIBRATION_TEXTURE[::-1], np.log(TEXTURE_CALIBRATION_WIDTH_PX[::-1]))
    return float(np.exp(log_w)) * 0.010 / pixel_size_um


@dataclass
class Micrograph:
    """One simulated SEM frame.

    Attributes
    ----------
    image : np.ndarray
        ``H x W`` float32 in [0, 1], info bar included.
    labels : np.ndarray
        ``H x W`` int32 ground-truth masks of the secondary particles (0: background and info bar). At high
        magnification they cover the few particles in view; the truth there is the primary-platelet width.
    pixel_size_um, magnification : float
    info_bar_rows : int
    truth : dict
        What the frame shows: the sample's morphology, and for low magnification the realised number-median
        diameter and sphericity of the drawn particles (``frame_d50_um``, ``frame_sphericity_mean``,
        ``frame_sphericity_std``); for high magnification ``platelet_width_px``.
    """

    image: np.ndarray
    labels: np.ndarray
    pixel_size_um: float
    magnification: float
    info_bar_rows: int
    truth: dict = field(default_factory=dict)


def render_micrograph(
    morphology: Morphology,
    magnification: float,
    seed: int,
    *,
    shape: tuple[int, int] = (1024, 1024),
    accelerating_voltage_kv: float = 15.0,
    working_distance_mm: float = 10.0,
    drift: bool = True,
    charging: bool = False,
) -> Micrograph:
    """Render ``morphology`` as the SEM would image it at ``magnification``.

    Magnifications below 8k× image secondary particles, higher ones primary platelets. A higher accelerating
    voltage brightens edges (more secondary electrons escape near them); the working distance only goes to
    the metadata. Deterministic for a seed.

    Parameters
    ----------
    morphology : Morphology
    magnification : float
        e.g. ``MAGNIFICATIONS["low"]`` or ``MAGNIFICATIONS["high"]``.
    seed : int
    shape : (int, int)
        ``H x W`` in pixels; the pixel size is :func:`pixel_size_for` ``(magnification, W)``.
    drift : bool
        Random brightness/contrast drift of the detector (a few percent).
    charging : bool
        Charging artefacts: bright streaks along the scan lines after a few particles.

    Returns
    -------
    Micrograph
    """
    rng = np.random.default_rng(seed)
    h, w = int(shape[0]), int(shape[1])
    if min(h, w) < 64:
        raise ValueError(f"frame of {h} x {w} px is too small; use at least 64 x 64")
    pixel_size = pixel_size_for(magnification, w)
    bar_rows = max(8, int(round(INFO_BAR_FRACTION * h)))
    edge_gain = 0.2 + 0.015 * float(np.clip(accelerating_voltage_kv, 0.5, 30.0))
    if magnification < 8000:
        image, labels, truth = _low_magnification(rng, morphology, (h - bar_rows, w), pixel_size, edge_gain)
    else:
        image, labels, truth = _high_magnification(rng, morphology, (h - bar_rows, w), pixel_size)
    if charging:
        image = _charging_streaks(rng, image)
    if drift:
        image = image * rng.uniform(0.9, 1.1) + rng.uniform(-0.02, 0.02)
    image = np.clip(np.concatenate([image, np.zeros((bar_rows, w), np.float32)]), 0.0, 1.0).astype(np.float32)
    draw_info_bar(image, bar_rows, pixel_size, rng)
    labels = np.concatenate([labels, np.zeros((bar_rows, w), np.int32)])
    truth = {**morphology.as_dict(), **truth, "accelerating_voltage_kv": float(accelerating_voltage_kv),
             "working_distance_mm": float(working_distance_mm)}
    return Micrograph(image, labels, pixel_size, float(magnification), bar_rows, truth)


def stratified_lognormal(rng: np.random.Generator, median: float, sigma: float, n: int) -> np.ndarray:
    """``n`` lognormal values, one per quantile ``(i + U) / n``, in random order."""
    u = (np.arange(n) + rng.uniform(0.25, 0.75, n)) / n
    return rng.permutation(median * np.exp(sigma * stats.norm.ppf(u)))


def stratified_sphericities(rng: np.random.Generator, mean: float, std: float, n: int) -> np.ndarray:
    """``n`` per-particle sphericities from a Beta distribution on [0.4, 1] with the given mean and std."""
    lo, hi = 0.4, 1.0
    m = (np.clip(mean, lo + 0.01, hi - 0.01) - lo) / (hi - lo)
    v = min((std / (hi - lo)) ** 2, 0.9 * m * (1 - m))
    k = m * (1 - m) / max(v, 1e-6) - 1
    u = (np.arange(n) + rng.uniform(0.25, 0.75, n)) / n
    values = lo + (hi - lo) * stats.beta.ppf(u, m * k, (1 - m) * k)
    return rng.permutation(np.clip(values, *SPHERICITY_RANGE))


def shape_with_sphericity(rng: np.random.Generator, radius_px: float, target: float) -> StarShape:
    """A random star-shaped outline of equivalent radius ``radius_px`` whose sphericity is ``target``.

    The harmonic amplitudes of a random draw are scaled by a common gain. 4πA/P² does not depend on the size,
    so it is evaluated for a grid of gains at once on the unit outline and the gain interpolated.
    """
    base = rng.uniform(0.6, 1.4, len(_HARMONICS)) / _HARMONICS
    phases = rng.uniform(0.0, 2 * np.pi, len(_HARMONICS))
    gains = np.linspace(0.0, _MAX_AMPLITUDE_SUM / float(base.sum()), 40)
    wave = (base[:, None] * np.cos(_HARMONICS[:, None] * _THETA[None, :] + phases[:, None])).sum(0)
    r = 1.0 + gains[:, None] * wave[None, :]  # gains x vertices
    x, y = r * _COS, r * _SIN
    xn, yn = np.roll(x, -1, axis=1), np.roll(y, -1, axis=1)
    area = 0.5 * np.abs((x * yn - xn * y).sum(1))
    perimeter = np.hypot(xn - x, yn - y).sum(1)
    psi = 4 * np.pi * area / perimeter**2
    below = np.flatnonzero(psi < target)
    if not below.size:
        gain = gains[-1]
    elif below[0] == 0:
        gain = 0.0
    else:
        i = below[0]  # psi[i - 1] >= target > psi[i]
        gain = gains[i - 1] + (gains[i] - gains[i - 1]) * (psi[i - 1] - target) / (psi[i - 1] - psi[i])
    amplitudes = base * gain
    return StarShape(radius_px / math.sqrt(1.0 + 0.5 * float(np.sum(amplitudes**2))), amplitudes, phases)


def _low_magnification(rng, morphology: Morphology, shape_hw, pixel_size: float, edge_gain: float):
    h, w = shape_hw
    d50_px = morphology.d50_um / pixel_size
    mean_area = math.pi / 4 * d50_px**2 * math.exp(2 * morphology.d50_spread**2)
    n = int(np.clip(round(LOW_MAG_COVERAGE * h * w / mean_area), 8, 400))
    for _ in range(4):  # irregular outlines need more room: shrink n until the bounding discs fit easily
        diameters = stratified_lognormal(rng, d50_px, morphology.d50_spread, n)
        targets = stratified_sphericities(rng, morphology.sphericity_mean, morphology.sphericity_std, n)
        shapes = [shape_with_sphericity(rng, d / 2, psi) for d, psi in zip(diameters, targets)]
        bounding = sum(math.pi * (_rmax(s) + FREE_GAP_PX) ** 2 for s in shapes)
        if bounding <= MAX_BOUNDING_COVERAGE * h * w or n <= 8:
            break
        n = max(8, int(n * MAX_BOUNDING_COVERAGE * h * w / bounding))
    placed, centres = _place_inside(rng, shapes, (h, w))
    surface = 0.04 + 0.08 * morphology.texture  # rougher surfaces for thinner, denser primaries
    image, labels = _render_particles(rng, placed, centres, (h, w), d50_px, edge_gain, surface, 0.3, 2)
    image = ndimage.gaussian_filter(image, 0.8) + rng.normal(0.0, 0.03, image.shape).astype(np.float32)
    eq_d, psi = [], []
    for s in placed:
        area, perimeter = polygon_area_perimeter(s.polygon(360))
        eq_d.append(2 * math.sqrt(area / math.pi))
        psi.append(4 * math.pi * area / perimeter**2)
    truth = {"n_particles": len(placed), "frame_d50_um": float(np.median(eq_d)) * pixel_size,
             "frame_sphericity_mean": float(np.mean(psi)), "frame_sphericity_std": float(np.std(psi))}
    return image.astype(np.float32), labels, truth


def _place_inside(rng, shapes: list[StarShape], shape_hw, touching: float = 0.3, tries: int = 3000):
    """Place outlines wholly inside the frame, largest first (so the size distribution survives crowding);
    about ``touching`` of them against an already placed neighbour. Returns the placed shapes and centres."""
    h, w = shape_hw
    order = np.argsort([-s.radius for s in shapes])
    placed: list[StarShape] = []
    centres: list[np.ndarray] = []
    rmax: list[float] = []
    for i in order:
        s = shapes[i]
        ri = _rmax(s) + 2.0
        if 2 * ri >= min(h, w):
            continue
        c = None
        if placed and rng.uniform() < touching:
            cand, _ = _place_in_contact(rng, s, ri, list(range(len(placed))), placed, centres, rmax, (h, w))
            if cand is not None and ri <= cand[0] <= w - ri and ri <= cand[1] <= h - ri:
                c = cand
        if c is None:
            cs, rs = np.asarray(centres).reshape(-1, 2), np.asarray(rmax)
            for _ in range(tries):
                cand = rng.uniform((ri, ri), (w - ri, h - ri))
                if not len(rs) or np.all(np.hypot(*(cs - cand).T) >= rs + ri + FREE_GAP_PX):
                    c = cand
                    break
        if c is None:
            continue
        placed.append(s)
        centres.append(c)
        rmax.append(ri)
    return placed, np.asarray(centres).reshape(-1, 2)


def _high_magnification(rng, morphology: Morphology, shape_hw, pixel_size: float):
    width_px = platelet_width_for_texture(morphology.texture, pixel_size)
    image, labels = make_platelet_field(int(rng.integers(2**31)), width_px, shape_hw,
                                        aspect=morphology.primary_aspect, return_labels=True)
    return image, labels, {"platelet_width_px": width_px, "platelet_width_nm": width_px * pixel_size * 1e3}


def _charging_streaks(rng, image: np.ndarray) -> np.ndarray:
    """Charging: a few scan lines saturate and decay to the right of a bright spot."""
    out = image.copy()
    h, w = out.shape
    for _ in range(int(rng.integers(2, 6))):
        y, x = int(rng.integers(0, h - 3)), int(rng.integers(0, w // 2))
        rows = slice(y, y + int(rng.integers(1, 4)))
        decay = np.exp(-np.arange(w - x) / rng.uniform(0.05, 0.3) / w).astype(np.float32)
        out[rows, x:] += 0.5 * decay
    return out


def write_micrograph(path: str | Path, micrograph: Micrograph, metadata: dict | None = None) -> Path:
    """Write the frame as an 8-bit TIFF with its pixel size and magnification in the tags.

    Ground-truth masks go to ``truth/<stem>_labels.tif`` beside it (uint16), out of the way
    of globs over the images.

    Returns
    -------
    Path
        The image file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {k: v for k, v in (metadata or {}).items() if k not in ("pixel_size_um", "magnification")}
    write_sem_tiff(path, micrograph.image, micrograph.pixel_size_um, magnification=micrograph.magnification,
                   extra=extra)
    labels_path(path).parent.mkdir(exist_ok=True)
    tifffile.imwrite(labels_path(path), micrograph.labels.astype(np.uint16), photometric="minisblack")
    return path


def labels_path(image_path: str | Path) -> Path:
    """Where :func:`write_micrograph` puts the ground-truth masks of ``image_path``."""
    p = Path(image_path)
    return p.parent / "truth" / (p.stem + "_labels.tif")
