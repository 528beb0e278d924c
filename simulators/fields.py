"""Synthetic SEM-like images with exact ground truth.

Two kinds of frames, as an SEM shows a cathode precursor at two magnifications:

* :func:`make_particle_field` -- low magnification: separated (or touching) secondary particles, dark
  background, instrument info bar. The truth (equivalent diameter, sphericity, border flags) comes from the
  particles' exact outlines, not from the pixels, so it can judge a segmenter and the D50 / sphericity
  descriptors.
* :func:`make_platelet_network` / :func:`make_platelet_field` -- high magnification: a network of thin
  platelets seen edge-on, whose width sets the texture (wider platelets, lower fine-scale wavelet energy).

Coordinates: ``x`` is the column, ``y`` the row; pixel ``(i, j)`` covers ``x in [j, j+1)``, ``y in [i, i+1)``,
so its centre is ``(j + 0.5, i + 0.5)`` and a polygon's area in these units is its expected pixel count.

This module imports nothing from the rest of MorphoLoop (it is the hidden truth of the virtual lab).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage

#: Harmonics of the star-shaped outline ``r(theta) = R (1 + sum_k a_k cos(k theta + phi_k))``.
HARMONICS = np.arange(2, 7)
#: ``a_k = AMPLITUDE_GAIN * irregularity / k * U(0.6, 1.4)``: irregularity 0.15 gives mean sphericity ~0.8.
AMPLITUDE_GAIN = 2.3
#: Smallest radius allowed, as a fraction of ``R`` (the outline stays star-shaped around its centre).
MIN_RADIUS_FRACTION = 0.25
#: Gray levels of the secondary-electron look.
BACKGROUND_LEVEL = 0.12
PARTICLE_LEVEL_RANGE = (0.55, 0.75)
INFO_BAR_FRACTION = 0.07
INFO_BAR_LEVEL = 0.04
INFO_TEXT_LEVEL = 0.95
#: Clearance (px) between the bounding circles of particles that are not placed in contact.
FREE_GAP_PX = 2.0


# --------------------------------------------------------------------------------------------- outlines
@dataclass(frozen=True)
class StarShape:
    """A star-shaped outline ``r(theta) = radius (1 + sum_k a_k cos(k theta + phi_k))`` about ``(0, 0)``."""

    radius: float
    amplitudes: np.ndarray
    phases: np.ndarray

    def radius_at(self, dx: np.ndarray, dy: np.ndarray, rho: np.ndarray) -> np.ndarray:
        """Outline radius in the direction of the offsets ``(dx, dy)`` (``rho = hypot(dx, dy)``)."""
        z = (dx + 1j * dy) / np.maximum(rho, 1e-9)
        zk = z * z
        r = np.ones(np.shape(rho), dtype=np.float64)
        for a, ph in zip(self.amplitudes, self.phases):
            r += a * (zk * np.exp(1j * ph)).real
            zk = zk * z
        return self.radius * r

    def signed_radial_offset(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """``rho - r(theta)``: negative inside the outline, positive outside (px)."""
        rho = np.hypot(dx, dy)
        return rho - self.radius_at(dx, dy, rho)

    def polygon(self, n_vertices: int = 360) -> np.ndarray:
        """The outline as an ``n x 2`` array of ``(x, y)`` vertices, counter-clockwise in ``theta``."""
        theta = np.linspace(0.0, 2 * np.pi, n_vertices, endpoint=False)
        dx, dy = np.cos(theta), np.sin(theta)
        r = self.radius_at(dx, dy, np.ones_like(theta))
        return np.column_stack([r * dx, r * dy])

    def max_log_slope(self) -> float:
        """Upper bound of ``|r'(theta) / r(theta)|`` (used to widen the anti-aliasing band)."""
        k = HARMONICS[: len(self.amplitudes)]
        return float(np.sum(k * np.abs(self.amplitudes)) / (1.0 - np.sum(np.abs(self.amplitudes))))


def random_star_shape(rng: np.random.Generator, radius_px: float, irregularity: float) -> StarShape:
    """Draw a :class:`StarShape` whose enclosed area is ``pi radius_px**2`` (see :func:`random_particle_polygon`)."""
    amplitudes = AMPLITUDE_GAIN * max(irregularity, 0.0) / HARMONICS * rng.uniform(0.6, 1.4, len(HARMONICS))
    phases = rng.uniform(0.0, 2 * np.pi, len(HARMONICS))
    worst = float(np.sum(amplitudes))  # r >= R (1 - sum a_k)
    if worst > 1.0 - MIN_RADIUS_FRACTION:
        amplitudes = amplitudes * (1.0 - MIN_RADIUS_FRACTION) / worst
    # Exact area of r(theta) = R (1 + sum a_k cos): pi R^2 (1 + sum a_k^2 / 2).
    scale = 1.0 / math.sqrt(1.0 + 0.5 * float(np.sum(amplitudes**2)))
    return StarShape(radius=float(radius_px) * scale, amplitudes=amplitudes, phases=phases)


def random_particle_polygon(
    rng: np.random.Generator, radius_px: float, irregularity: float, n_vertices: int = 360
) -> np.ndarray:
    """A random star-shaped particle outline centred on ``(0, 0)``.

    ``r(theta) = R (1 + sum_{k=2..6} a_k cos(k theta + phi_k))`` with ``a_k = 2.3 irregularity / k * U(0.6, 1.4)``
    and random phases, rescaled so the smooth outline encloses ``pi radius_px**2`` (``radius_px`` is the
    equivalent-area radius). Irregularity 0 gives a circle (sphericity 1), 0.08 about 0.93, 0.15 about 0.8.
    Amplitudes are shrunk when needed so that ``r >= 0.25 R``.

    Parameters
    ----------
    rng : numpy.random.Generator
    radius_px : float
        Equivalent-area radius in pixels.
    irregularity : float
        Non-negative roughness of the outline.
    n_vertices : int
        Number of vertices, equally spaced in ``theta``.

    Returns
    -------
    np.ndarray
        ``n_vertices x 2`` array of ``(x, y)`` vertices.
    """
    return random_star_shape(rng, radius_px, irregularity).polygon(n_vertices)


def polygon_area_perimeter(poly: np.ndarray) -> tuple[float, float]:
    """Exact area (shoelace, absolute) and perimeter (sum of edge lengths) of a closed ``n x 2`` polygon."""
    x, y = np.asarray(poly, dtype=np.float64).T
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    area = 0.5 * abs(float(np.dot(x, yn) - np.dot(xn, y)))
    perimeter = float(np.hypot(xn - x, yn - y).sum())
    return area, perimeter


def polygon_centroid(poly: np.ndarray) -> tuple[float, float]:
    """Area centroid ``(cx, cy)`` of a closed simple polygon."""
    x, y = np.asarray(poly, dtype=np.float64).T
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    a6 = 3.0 * cross.sum()
    return float(((x + xn) * cross).sum() / a6), float(((y + yn) * cross).sum() / a6)


def sphericity(poly: np.ndarray) -> float:
    """``4 pi A / P**2`` of a polygon (1 for a circle)."""
    area, perimeter = polygon_area_perimeter(poly)
    return 4 * math.pi * area / perimeter**2


# ------------------------------------------------------------------------------------------ the field
@dataclass
class ParticleField:
    """A synthetic low-magnification SEM frame and its truth.

    Attributes
    ----------
    image : np.ndarray
        ``H x W`` float32 in [0, 1].
    labels : np.ndarray
        ``H x W`` int32 truth labels (0 background; label ``i`` is row ``i - 1`` of ``truth``). A pixel carries
        the label of the particle containing its centre; the info-bar rows are 0.
    truth : pandas.DataFrame
        One row per particle, from its exact outline: ``particle_id, cx, cy, area_px, perimeter_px,
        eq_diam_px, sphericity, touches_border, in_info_bar, in_contact``. Border particles describe the
        whole particle, including the hidden part.
    pixel_size_um : float
    info_bar_rows : int
        Height of the info bar at the bottom (0 when none).
    polygons : list of np.ndarray
        Each particle's outline (``n x 2``, ``(x, y)`` in image pixels).
    scale_bar_um, scale_bar_px : float
        Length of the scale bar drawn in the info bar (0 when none).
    """

    image: np.ndarray
    labels: np.ndarray
    truth: pd.DataFrame
    pixel_size_um: float
    info_bar_rows: int
    polygons: list[np.ndarray] = field(default_factory=list)
    scale_bar_um: float = 0.0
    scale_bar_px: float = 0.0

    def summary(self) -> dict:
        """Truth descriptors over the particles that do not touch the border (or the info bar).

        Returns
        -------
        dict
            ``d50_px`` (number median of ``eq_diam_px``), ``d50_um``, ``d10_um``, ``d90_um`` (number
            percentiles, linear interpolation), ``d50_volume_um`` (volume-weighted median, weights ``d**3``,
            interpolated between mid-points of the cumulative weights), ``sphericity_mean``,
            ``sphericity_std`` (ddof 0), ``n_particles`` (counted), ``n_border`` (excluded).
        """
        inner = self.truth[~self.truth["touches_border"]]
        d = inner["eq_diam_px"].to_numpy(dtype=float)
        psi = inner["sphericity"].to_numpy(dtype=float)
        out = {"n_particles": int(len(d)), "n_border": int(len(self.truth) - len(d))}
        if len(d) == 0:
            nan = float("nan")
            keys = ("d50_px", "d50_um", "d10_um", "d90_um", "d50_volume_um", "sphericity_mean", "sphericity_std")
            return {**{k: nan for k in keys}, **out}
        d10, d50, d90 = np.percentile(d, [10, 50, 90])
        s = self.pixel_size_um
        return {
            "d50_px": float(d50),
            "d50_um": float(d50 * s),
            "d10_um": float(d10 * s),
            "d90_um": float(d90 * s),
            "d50_volume_um": float(weighted_median(d, d**3) * s),
            "sphericity_mean": float(psi.mean()),
            "sphericity_std": float(psi.std(ddof=0)),
            **out,
        }


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """Median of ``values`` under ``weights``, interpolated between the mid-points of the cumulative weights."""
    order = np.argsort(values)
    v, w = np.asarray(values, float)[order], np.asarray(weights, float)[order]
    cdf = (np.cumsum(w) - 0.5 * w) / w.sum()
    return float(np.interp(0.5, cdf, v))


def make_particle_field(
    seed: int,
    *,
    shape: tuple[int, int] = (1024, 1024),
    pixel_size_um: float = 0.1,
    n_particles: int = 60,
    d50_px: float = 60.0,
    size_spread: float = 0.25,
    irregularity: float = 0.08,
    irregularity_spread: float = 0.04,
    touching: float = 0.0,
    uneven_illumination: float = 0.4,
    info_bar: bool = True,
    noise: float = 0.03,
    edge_brightening: float = 0.3,
    surface_texture: float = 0.05,
    blur_sigma: float = 0.8,
    supersample: int = 4,
) -> ParticleField:
    """Render a low-magnification SEM frame of secondary particles with exact truth.

    Parameters
    ----------
    seed : int
        Seed of the ``numpy.random.Generator``; the same seed gives the same field.
    shape : (int, int)
        ``H, W`` in pixels.
    pixel_size_um : float
        Side of one pixel in micrometres (sets the scale bar and the ``*_um`` summaries).
    n_particles : int
        Particles requested; fewer are placed when the frame is too crowded to place them without overlap.
    d50_px, size_spread : float
        Equivalent diameters are lognormal with median ``d50_px`` and log-sigma ``size_spread``.
    irregularity, irregularity_spread : float
        Each particle's irregularity is ``|N(irregularity, irregularity_spread)|``.
    touching : float
        Fraction (0..1) of particles grouped into clusters of 2--3 particles in contact (gap 0 to ~0.6 px
        between outlines, no overlap; ``truth.in_contact``). The others keep a clearance of at least 2 px
        between bounding circles. A cluster member that finds no room is placed free.
    uneven_illumination : float
        Amplitude of the smooth multiplicative illumination field (gradient plus broad Gaussian).
    info_bar : bool
        Stamp a flat instrument bar (text blocks and scale bar) over the bottom ~7 % of the rows.
    noise, blur_sigma : float
        Additive Gaussian noise sigma and Gaussian blur sigma (px), applied before the info bar.
    edge_brightening, surface_texture : float
        Relative brightness of the rim and of the smoothed-noise surface texture of each particle.
    supersample : int
        Sub-samples per pixel side used to anti-alias the particle edges.

    Returns
    -------
    ParticleField
    """
    rng = np.random.default_rng(seed)
    h, w = int(shape[0]), int(shape[1])
    bar_rows = max(8, int(round(INFO_BAR_FRACTION * h))) if info_bar else 0
    h_img = h - bar_rows

    diameters = d50_px * np.exp(size_spread * rng.standard_normal(n_particles))
    irregularities = np.abs(rng.normal(irregularity, irregularity_spread, n_particles))
    shapes = [random_star_shape(rng, d / 2, irr) for d, irr in zip(diameters, irregularities)]
    order, attach_to_group = _contact_plan(rng, n_particles, touching)
    centres, kept, contact = _place(rng, [shapes[i] for i in order], attach_to_group, (h, w))
    perm = rng.permutation(len(kept))  # ids in random order, not in placement order
    shapes = [shapes[order[kept[p]]] for p in perm]
    centres, contact = centres[perm], [contact[p] for p in perm]

    polygons, rows = [], []
    for pid, (shape_, c) in enumerate(zip(shapes, centres), start=1):
        poly = shape_.polygon() + c
        area, perim = polygon_area_perimeter(poly)
        cx, cy = polygon_centroid(poly)
        (xmin, ymin), (xmax, ymax) = poly.min(0), poly.max(0)
        in_bar = bool(bar_rows and ymax > h_img)
        border = bool(xmin < 1 or ymin < 1 or xmax > w - 1 or ymax > h_img - 1)
        polygons.append(poly)
        rows.append((pid, cx, cy, area, perim, 2 * math.sqrt(area / math.pi), 4 * math.pi * area / perim**2,
                     border, in_bar, bool(contact[pid - 1])))
    truth = pd.DataFrame(rows, columns=["particle_id", "cx", "cy", "area_px", "perimeter_px", "eq_diam_px",
                                        "sphericity", "touches_border", "in_info_bar", "in_contact"])

    image, labels = _render_particles(rng, shapes, centres, (h, w), d50_px, edge_brightening, surface_texture,
                                      uneven_illumination, supersample)
    if blur_sigma > 0:
        image = ndimage.gaussian_filter(image, blur_sigma)
    if noise > 0:
        image += rng.normal(0.0, noise, image.shape).astype(np.float32)
    np.clip(image, 0.0, 1.0, out=image)
    scale_um = scale_px = 0.0
    if bar_rows:
        scale_um, scale_px = draw_info_bar(image, bar_rows, pixel_size_um, rng)
        labels[h_img:] = 0
    return ParticleField(image=image.astype(np.float32), labels=labels, truth=truth,
                         pixel_size_um=float(pixel_size_um), info_bar_rows=bar_rows, polygons=polygons,
                         scale_bar_um=scale_um, scale_bar_px=scale_px)


def _overlaps(a: StarShape, ca: np.ndarray, b: StarShape, cb: np.ndarray) -> bool:
    """Whether two outlines overlap (a vertex of one strictly inside the other)."""
    pa, pb = a.polygon() + ca, b.polygon() + cb
    d_ab, d_ba = pa - cb, pb - ca
    return bool((b.signed_radial_offset(d_ab[:, 0], d_ab[:, 1]) < 0).any()
                or (a.signed_radial_offset(d_ba[:, 0], d_ba[:, 1]) < 0).any())


def _rmax(s: StarShape) -> float:
    return s.radius * (1.0 + float(np.sum(s.amplitudes)))


def _contact_plan(rng, n: int, touching: float) -> tuple[np.ndarray, list[int]]:
    """Placement order and, per placed position, the group it joins (-1: free, else the seed's position).

    About ``touching * n`` particles are grouped into small clusters (2 or 3 particles in contact);
    the clusters are placed first, the free particles after them.
    """
    order = rng.permutation(n)
    wanted = int(round(np.clip(touching, 0.0, 1.0) * n))
    group: list[int] = []
    pos = 0
    while wanted - pos >= 2 and n - pos >= 2:
        size = int(min(rng.choice([2, 2, 3]), n - pos))
        if wanted - pos - size == 1 and n - pos >= size + 1:
            size += 1  # no lone leftover that could not touch anything
        group += [-1] + [pos] * (size - 1)
        pos += size
    group += [-1] * (n - pos)
    return order, group


def _place(rng, shapes, group, shape_hw, max_tries: int = 2000):
    """Centres (``m x 2``), positions (in ``shapes``) of the placed ones, and their in-contact flags."""
    h, w = shape_hw
    centres: list[np.ndarray] = []
    rmax: list[float] = []
    placed: list[StarShape] = []
    kept: list[int] = []
    contact: list[bool] = []
    slot: dict[int, int] = {}  # position in shapes -> index in placed
    for i, s in enumerate(shapes):
        ri = _rmax(s)
        c, j = None, -1
        if group[i] >= 0 and group[i] in slot:
            members = [slot[k] for k in range(group[i], i) if k in slot]
            c, j = _place_in_contact(rng, s, ri, members, placed, centres, rmax, (h, w))
        if c is None:
            cs, rs = np.asarray(centres).reshape(-1, 2), np.asarray(rmax)
            for _ in range(max_tries):
                cand = rng.uniform((0, 0), (w, h))
                if not len(rs) or np.all(np.hypot(*(cs - cand).T) >= rs + ri + FREE_GAP_PX):
                    c = cand
                    break
        if c is None:
            continue
        if j >= 0:
            contact[j] = True
        slot[i] = len(placed)
        contact.append(j >= 0)
        centres.append(c)
        rmax.append(ri)
        placed.append(s)
        kept.append(i)
    return np.asarray(centres).reshape(-1, 2), kept, contact


def _place_in_contact(rng, s, ri, members, placed, centres, rmax, shape_hw, tries: int = 60):
    """Centre that puts ``s`` against one of ``members`` (indices into ``placed``) with a gap of 0 to ~0.6 px,
    overlapping nothing, and that member's index; ``(None, -1)`` when no try succeeds."""
    h, w = shape_hw
    cs, rs = np.asarray(centres), np.asarray(rmax)
    for _ in range(tries):
        j = int(members[rng.integers(len(members))])
        angle = rng.uniform(0, 2 * np.pi)
        u = np.array([math.cos(angle), math.sin(angle)])
        lo, hi = 0.0, ri + rs[j]
        while hi - lo > 0.05:  # overlap at lo, none at hi
            mid = 0.5 * (lo + hi)
            if _overlaps(s, cs[j] + mid * u, placed[j], cs[j]):
                lo = mid
            else:
                hi = mid
        c = cs[j] + (hi + rng.uniform(0.0, 0.5)) * u
        if not (0 <= c[0] < w and 0 <= c[1] < h):
            continue
        dist = np.hypot(*(cs - c).T)
        near = np.flatnonzero(dist < rs + ri + FREE_GAP_PX)
        if all(k == j or not _overlaps(s, c, placed[k], cs[k]) for k in near):
            return c, j
    return None, -1


def _render_particles(rng, shapes, centres, shape_hw, d50_px, edge_brightening, surface_texture,
                      uneven_illumination, supersample):
    """Noise-free, unblurred image (float32) and the label map of the placed particles."""
    h, w = shape_hw
    num = np.zeros((h, w), np.float32)  # sum of coverage x particle intensity
    cov = np.zeros((h, w), np.float32)  # sum of coverage
    labels = np.zeros((h, w), np.int32)
    ss = max(1, int(supersample))
    sub = ((np.arange(ss) + 0.5) / ss - 0.5).astype(np.float64)
    sub_dx, sub_dy = np.meshgrid(sub, sub)
    rim_px = max(1.5, 0.04 * d50_px)
    light = np.array([-1.0, -1.0]) / math.sqrt(2)  # detector at the top left: lit side up-left
    for pid, (s, c) in enumerate(zip(shapes, centres), start=1):
        r = _rmax(s) + 2
        x0, x1 = max(0, int(c[0] - r)), min(w, int(c[0] + r) + 1)
        y0, y1 = max(0, int(c[1] - r)), min(h, int(c[1] + r) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        dx = (np.arange(x0, x1) + 0.5 - c[0])[None, :].repeat(y1 - y0, 0)
        dy = (np.arange(y0, y1) + 0.5 - c[1])[:, None].repeat(x1 - x0, 1)
        off = s.signed_radial_offset(dx, dy)
        inside = off < 0
        coverage = inside.astype(np.float32)
        band = np.abs(off) < 0.75 * math.sqrt(1 + s.max_log_slope() ** 2) + 0.1
        if ss > 1 and band.any():
            bx = dx[band][:, None] + sub_dx.ravel()[None, :]
            by = dy[band][:, None] + sub_dy.ravel()[None, :]
            coverage[band] = (s.signed_radial_offset(bx, by) < 0).mean(axis=1)
        depth = ndimage.distance_transform_edt(inside)
        level = rng.uniform(*PARTICLE_LEVEL_RANGE)
        shading = 1.0 + 0.12 * (dx * light[0] + dy * light[1]) / max(s.radius, 1.0)
        # Secondary-electron edge effect: a sharp rim plus a dome-like rise toward the outline (tilted surface).
        dome = (1.0 - depth / max(float(depth.max()), 1.0)) ** 2
        rim = 1.0 + edge_brightening * (0.7 * np.exp(-np.maximum(depth - 0.5, 0.0) / rim_px) + 0.5 * dome)
        value = (level * shading * rim).astype(np.float32)
        num[y0:y1, x0:x1] += coverage * value
        cov[y0:y1, x0:x1] += coverage
        labels[y0:y1, x0:x1][inside] = pid

    fine = _smooth_noise(rng, (h, w), 1.2)
    coarse = _smooth_noise(rng, (h, w), 4.0)
    texture = 1.0 + surface_texture * (fine + 0.5 * coarse)
    particle = num / np.maximum(cov, 1e-6) * texture
    occupancy = np.minimum(cov, 1.0)
    shift = max(2, int(round(0.05 * d50_px)))
    shadow = np.zeros_like(occupancy)
    shadow[shift:, shift:] = occupancy[:-shift, :-shift]
    shadow = ndimage.gaussian_filter(shadow, max(2.0, 0.08 * d50_px))
    background = BACKGROUND_LEVEL * (1.0 + 0.08 * coarse) * (1.0 - 0.45 * shadow)
    image = background * (1.0 - occupancy) + particle * occupancy
    return (image * _illumination(rng, (h, w), uneven_illumination)).astype(np.float32), labels


def _smooth_noise(rng, shape, sigma) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation (float32)."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return n / max(float(n.std()), 1e-9)


def _illumination(rng, shape, amplitude) -> np.ndarray:
    """Smooth multiplicative field ``1 + amplitude (linear gradient + broad Gaussian)``, mean about 1."""
    h, w = shape
    y = (np.arange(h, dtype=np.float32) + 0.5) / max(h, w)
    x = (np.arange(w, dtype=np.float32) + 0.5) / max(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    lin_x, lin_y = math.cos(angle) * (x - x.mean()), math.sin(angle) * (y - y.mean())
    gx, gy, sigma = rng.uniform(0, x[-1]), rng.uniform(0, y[-1]), rng.uniform(0.25, 0.5)
    gauss = np.exp(-((y[:, None] - gy) ** 2 + (x[None, :] - gx) ** 2) / (2 * sigma**2))
    field_ = 1.0 + amplitude * (0.6 * (lin_y[:, None] + lin_x[None, :]) + 0.5 * (gauss - gauss.mean()))
    return np.maximum(field_, 0.1).astype(np.float32)


# ------------------------------------------------------------------------------------------ info bar
def nice_scale_length_um(width_px: int, pixel_size_um: float, fraction: float = 0.2) -> float:
    """Largest ``{1, 2, 5} x 10**k`` micrometres not longer than ``fraction`` of the frame width."""
    target = fraction * width_px * pixel_size_um
    exponent = math.floor(math.log10(target))
    for m in (5, 2, 1):
        if m * 10.0**exponent <= target:
            return m * 10.0**exponent
    return 10.0**exponent


def draw_info_bar(image: np.ndarray, rows: int, pixel_size_um: float, rng: np.random.Generator) -> tuple[float, float]:
    """Overwrite the bottom ``rows`` of ``image`` with a flat instrument bar, in place.

    Text is drawn as blocks of glyph-like rectangles; the scale bar sits at the right, its length in pixels
    is ``scale_um / pixel_size_um``. Returns ``(scale_um, scale_px)``.
    """
    h, w = image.shape
    bar = np.full((rows, w), INFO_BAR_LEVEL, np.float32)
    text_h = max(3, int(round(0.3 * rows)))
    top = (rows - text_h) // 2
    x = max(2, w // 60)
    for _ in range(3):  # three "fields" of text (HV, WD, mag ...)
        for _ in range(int(rng.integers(5, 10))):
            gw = int(rng.integers(max(2, text_h // 2), max(3, text_h)))
            if x + gw >= int(0.7 * w):
                break
            bar[top: top + text_h, x: x + gw] = INFO_TEXT_LEVEL
            x += gw + max(1, text_h // 4)
        x += 3 * text_h
    scale_um = nice_scale_length_um(w, pixel_size_um)
    scale_px = scale_um / pixel_size_um
    x1 = w - max(3, w // 40)
    x0 = int(round(x1 - scale_px))
    thick = max(2, int(round(0.12 * rows)))
    y_bar = rows - max(2, rows // 5) - thick
    bar[y_bar: y_bar + thick, x0:x1] = INFO_TEXT_LEVEL
    label_top = max(1, y_bar - text_h - max(1, rows // 8))
    for k in range(3):  # the "5 um" label above the scale bar
        gx = x0 + int(0.35 * scale_px) + k * text_h
        bar[label_top: label_top + text_h, gx: gx + max(2, text_h // 2 + 1)] = INFO_TEXT_LEVEL
    image[h - rows:] = bar
    return float(scale_um), float(x1 - x0)


# ------------------------------------------------------------------------------------------ platelets
def make_platelet_network(
    seed: int,
    *,
    width_px: float,
    shape: tuple[int, int] = (512, 512),
    coverage: float = 0.5,
    aspect: float = 8.0,
    pixel_size_um: float = 0.01,
    noise: float = 0.03,
    blur_sigma: float = 0.7,
    background: float = 0.1,
    foreground: float = 0.75,
) -> np.ndarray:
    """Primary platelets seen edge-on: bright anti-aliased capsules on a dark background.

    Capsules of width ``width_px`` and length ``max(aspect * width_px, 20)`` (at most half the frame),
    random centre and orientation, brightness ``foreground * U(0.88, 1.12)``, are drawn one over the other
    until the union of their coverage reaches ``coverage`` of the frame (whatever the width), then blurred
    and noised. ``pixel_size_um`` is not used by the drawing; it documents the scale the frame stands for.

    Returns
    -------
    np.ndarray
        ``H x W`` float32 in [0, 1].
    """
    if not 0.0 < coverage <= 0.95:
        raise ValueError(f"coverage must be in (0, 0.95], got {coverage}")
    if width_px <= 0:
        raise ValueError(f"width_px must be positive, got {width_px}")
    rng = np.random.default_rng(seed)
    h, w = int(shape[0]), int(shape[1])
    image = np.full((h, w), background, np.float32)
    union = np.zeros((h, w), np.float32)
    radius = 0.5 * float(width_px)
    length = min(max(aspect * width_px, 20.0), 0.5 * min(h, w))
    half = max(0.5 * length - radius, 0.0)  # half-length of the capsule's core segment
    target, covered = coverage * h * w, 0.0
    reach = half + radius + 1.5
    for _ in range(1_000_000):
        if covered >= target:
            break
        cx, cy = rng.uniform(-half, w + half), rng.uniform(-half, h + half)
        angle = rng.uniform(0, np.pi)
        ux, uy = math.cos(angle), math.sin(angle)
        x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 1)
        y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        px = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
        py = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
        t = np.clip(px * ux + py * uy, -half, half)
        dist = np.hypot(px - t * ux, py - t * uy)
        a = np.clip(radius - dist + 0.5, 0.0, 1.0)
        if not a.any():
            continue
        level = foreground * rng.uniform(0.88, 1.12)
        img, uni = image[y0:y1, x0:x1], union[y0:y1, x0:x1]
        img += a * (level - img)
        new = np.maximum(uni, a)
        covered += float((new - uni).sum())
        uni[...] = new
    if blur_sigma > 0:
        image = ndimage.gaussian_filter(image, blur_sigma)
    if noise > 0:
        image += rng.normal(0.0, noise, image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def make_platelet_field(
    seed: int,
    width_px: float,
    shape: tuple[int, int] = (1024, 1024),
    *,
    n_particles: int = 3,
    coverage: float = 0.55,
    aspect: float = 8.0,
    noise: float = 0.03,
    blur_sigma: float = 0.7,
    return_labels: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """A high-magnification frame: a few large secondary particles whose surface is a platelet network.

    Discs (radius 0.3--0.7 of the frame's short side, centres anywhere in the frame) are filled with
    :func:`make_platelet_network` of ``width_px`` on a mid-dark crevice level, shaded brighter toward their
    rim, over a dark background; then blurred and noised.

    Returns
    -------
    np.ndarray or (np.ndarray, np.ndarray)
        ``H x W`` float32 in [0, 1]; with ``return_labels``, also the ``H x W`` int32 masks of the secondary
        particles (the disc covering each pixel centre on top, 0 for background).
    """
    rng = np.random.default_rng(seed)
    h, w = int(shape[0]), int(shape[1])
    network = make_platelet_network(int(rng.integers(2**31)), width_px=width_px, shape=(h, w),
                                     coverage=coverage, aspect=aspect, noise=0.0, blur_sigma=0.0,
                                     background=0.22, foreground=0.75)
    yy = np.arange(h, dtype=np.float32)[:, None] + 0.5
    xx = np.arange(w, dtype=np.float32)[None, :] + 0.5
    occupancy = np.zeros((h, w), np.float32)
    shade = np.ones((h, w), np.float32)
    labels = np.zeros((h, w), np.int32)
    for index in range(max(1, n_particles)):
        r = rng.uniform(0.3, 0.7) * min(h, w)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rho = np.hypot(xx - cx, yy - cy) / r
        a = np.clip((1.0 - rho) * r + 0.5, 0.0, 1.0)
        shade = np.where(a > occupancy, 0.85 + 0.3 * np.clip(rho, 0, 1) ** 4, shade)
        labels[(rho < 1.0) & (a > occupancy)] = index + 1
        occupancy = np.maximum(occupancy, a)
    image = BACKGROUND_LEVEL * 0.7 * (1.0 - occupancy) + network * shade * occupancy
    if blur_sigma > 0:
        image = ndimage.gaussian_filter(image, blur_sigma)
    if noise > 0:
        image += rng.normal(0.0, noise, image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    return (image, labels) if return_labels else image


# ------------------------------------------------------------------------------------------ TIFF
def write_sem_tiff(
    path: str | Path,
    image: np.ndarray,
    pixel_size_um: float,
    *,
    magnification: float | None = None,
    bits: int = 8,
    extra: dict | None = None,
) -> Path:
    """Write an SEM frame as a grayscale TIFF that carries its pixel size twice.

    (a) ImageDescription: JSON ``{"pixel_size_um": ..., "magnification": ..., **extra}``;
    (b) XResolution / YResolution in pixels per centimetre (``1e4 / pixel_size_um``), ResolutionUnit CENTIMETER.

    Parameters
    ----------
    path : str or Path
    image : np.ndarray
        ``H x W``; floats are taken as [0, 1] and scaled to the full range, integers are written as given.
    pixel_size_um : float
        Positive side of one pixel in micrometres.
    magnification : float, optional
    bits : {8, 16}
        Sample depth (uint8 or uint16).
    extra : dict, optional
        More JSON-able metadata for the description.

    Returns
    -------
    Path
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    if not (pixel_size_um > 0 and math.isfinite(pixel_size_um)):
        raise ValueError(f"pixel_size_um must be a positive finite number, got {pixel_size_um}")
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"expected an H x W image, got shape {a.shape}")
    dtype = np.uint8 if bits == 8 else np.uint16
    top = np.iinfo(dtype).max
    if np.issubdtype(a.dtype, np.floating) or a.dtype == bool:
        data = np.round(np.clip(a.astype(np.float64), 0.0, 1.0) * top).astype(dtype)
    else:
        data = np.clip(a, 0, top).astype(dtype)
    meta = {"pixel_size_um": float(pixel_size_um), "magnification": magnification, **(extra or {})}
    ppcm = 1e4 / float(pixel_size_um)
    path = Path(path)
    tifffile.imwrite(path, data, photometric="minisblack", description=json.dumps(meta), metadata=None,
                     resolution=(ppcm, ppcm), resolutionunit="CENTIMETER")
    return path
