"""Primary-particle texture from high-magnification SEM images (paper 000, SI §1.2.1 and Fig. S1).

Pipeline: suppress the background (large dark regions between secondary particles), detect particle centres,
extract square ROIs around them at a fixed physical size, resample each ROI to the reference pixel size,
histogram-equalise it (contrast invariance), decompose it with a 2-D discrete wavelet transform and take the
sub-band energies E = 1/(N·M) ΣΣ|W(i,j)|² (eq. 1).

Aggregation (documented choice): each detail sub-band's energy is weighted by its share of the ROI's pixels
(N_j·M_j / N·M) and summed over the ``levels`` finest levels and the three orientations, then divided by the
ROI's variance. With an orthonormal wavelet this is the fraction of the equalised ROI's contrast energy that
lives in structures finer than 2**levels reference pixels: "texture values are elevated when a significant
portion of the energy resides in the high-frequency bands" (SI §2). This raw value is ``texture_energy``.

``texture`` maps it linearly onto [0, 1] with a frozen calibration measured on simulated platelet networks at
the reference pixel size (coverage 0.5): 1 for platelets 1.5 reference px wide, 0 for 16 px wide.
Reproduce the constants with ``python benchmarks/calibrate_texture.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pywt
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.transform import resize


class TextureError(ValueError):
    """The image cannot give a texture value; the message says why."""


@dataclass(frozen=True)
class TextureConfig:
    """Parameters of the texture descriptor. Values from different configs do not compare.

    Attributes
    ----------
    wavelet : str
        PyWavelets orthogonal wavelet (default Daubechies-2).
    levels : int
        Number of finest decomposition levels aggregated (3: structures up to 8 reference px).
    roi_px : int
        ROI side after resampling, in reference pixels (paper: 256).
    reference_pixel_size_um : float
        Every ROI is resampled to this pixel size (10 nm/px: a ~15k× frame of 1024 px).
    max_rois : int
        At most this many ROIs per image.
    min_foreground_fraction : float
        ROIs with more background than this are not used.
    """

    wavelet: str = "db2"
    levels: int = 3
    roi_px: int = 256
    reference_pixel_size_um: float = 0.010
    max_rois: int = 12
    min_foreground_fraction: float = 0.8


#: Frozen calibration (TextureConfig defaults): texture_energy of simulated platelet networks at the
#: reference pixel size. Reproduce with ``python benchmarks/calibrate_texture.py``.
CALIBRATION_ENERGY_AT_TEXTURE_1 = 0.6980   # platelets 1.5 reference px wide
CALIBRATION_ENERGY_AT_TEXTURE_0 = 0.2060   # platelets 16 reference px wide


def normalise_texture(energy: float | np.ndarray) -> float | np.ndarray:
    """Map raw ``texture_energy`` onto the calibrated [0, 1] texture scale (clipped)."""
    lo, hi = CALIBRATION_ENERGY_AT_TEXTURE_0, CALIBRATION_ENERGY_AT_TEXTURE_1
    t = np.clip((np.asarray(energy, float) - lo) / (hi - lo), 0.0, 1.0)
    return float(t) if np.ndim(t) == 0 else t


def equalize_rois(rois: np.ndarray, masks: np.ndarray | None = None, nbins: int = 256) -> np.ndarray:
    """Histogram-equalise each ROI of ``n x h x w`` (to [0, 1]), the histogram taken over its mask.

    Vectorised over ROIs: every ROI is quantised to ``nbins`` levels between its own min and max, and its
    cumulative histogram (over the foreground when ``masks`` is given) becomes the lookup table.
    """
    n = rois.shape[0]
    flat = rois.reshape(n, -1)
    lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    scale = (nbins - 1) / np.maximum(hi - lo, 1e-12)
    levels = ((flat - lo) * scale + 0.5).astype(np.int32)
    levels += (np.arange(n, dtype=np.int32) * nbins)[:, None]  # one histogram per ROI in one bincount
    if masks is None:
        hist = np.bincount(levels.ravel(), minlength=n * nbins)
    else:
        fg = np.asarray(masks, bool).reshape(n, -1)
        hist = np.bincount(levels[fg], minlength=n * nbins)
    cdf = np.cumsum(hist.reshape(n, nbins), axis=1, dtype=np.float64)
    cdf = (cdf / np.maximum(cdf[:, -1:], 1e-12)).astype(np.float32).ravel()
    return cdf[levels].reshape(rois.shape)


def roi_wavelet_energy(rois: np.ndarray, config: TextureConfig = TextureConfig(),
                       masks: np.ndarray | None = None) -> np.ndarray:
    """Aggregated detail-band energy of equalised ROIs.

    Parameters
    ----------
    rois : np.ndarray
        ``n x roi x roi`` float, already at the reference pixel size.
    masks : np.ndarray, optional
        ``n x roi x roi`` bool foreground; background pixels are left out of the equalisation.

    Returns
    -------
    np.ndarray
        ``n`` energies in [0, 1].
    """
    rois = np.asarray(rois, np.float32)
    if rois.ndim == 2:
        rois = rois[None]
    eq = equalize_rois(rois, masks)
    eq -= eq.mean(axis=(1, 2), keepdims=True)
    variance = eq.var(axis=(1, 2), dtype=np.float64)
    coeffs = pywt.wavedec2(eq, config.wavelet, mode="periodization", level=config.levels, axes=(-2, -1))
    n_pixels = rois.shape[1] * rois.shape[2]
    energy = np.zeros(len(rois))
    for details in coeffs[1:]:  # coarsest first; every level is one of the `levels` finest
        for band in details:
            sub_energy = np.mean(np.square(band, dtype=np.float64), axis=(1, 2))  # eq. (1)
            energy += sub_energy * band.shape[1] * band.shape[2] / n_pixels
    return np.where(variance > 0, energy / np.maximum(variance, 1e-12), np.nan)


def texture_foreground(image: np.ndarray, pixel_size_um: float, config: TextureConfig = TextureConfig()
                       ) -> np.ndarray:
    """Where the primary-particle surface is: everything but large dark regions (``H x W`` bool).

    Smoothing at a few tens of nanometres merges the platelet network into one bright surface; dark regions
    wider than a quarter ROI that survive a morphological opening are background.
    """
    scale = config.reference_pixel_size_um / pixel_size_um  # native px per reference px
    smooth = ndi.gaussian_filter(image.astype(np.float32), max(1.0, 6 * scale))
    if float(np.ptp(smooth)) < 1e-6:
        return np.ones(image.shape, bool)
    dark = smooth < threshold_otsu(smooth)
    radius = max(2, int(round(config.roi_px * scale / 8)))
    step = max(1, radius // 8)  # open on a coarse grid: the structure is large, the cost stays small
    coarse = dark[::step, ::step]
    footprint = _disk(max(1, radius // step))
    coarse = ndi.binary_opening(coarse, structure=footprint)
    background = np.kron(coarse, np.ones((step, step), bool))[: image.shape[0], : image.shape[1]]
    if background.shape != image.shape:
        background = np.pad(background, [(0, image.shape[0] - background.shape[0]),
                                         (0, image.shape[1] - background.shape[1])], mode="edge")
    return ~background


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius: radius + 1, -radius: radius + 1]
    return x * x + y * y <= radius * radius


def select_rois(foreground: np.ndarray, side: int, max_rois: int, min_fraction: float
                ) -> list[tuple[int, int]]:
    """Top-left corners of up to ``max_rois`` windows of ``side`` px, centred on particles where possible.

    Candidates are the centres of the foreground's distance-transform maxima (particle centres) and a tiling
    of the frame; windows are kept greedily by foreground fraction, overlapping earlier picks by < 50%.
    """
    h, w = foreground.shape
    if side > h or side > w:
        return []
    integral = np.pad(foreground.astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)

    def fraction(y0: int, x0: int) -> float:
        s = integral[y0 + side, x0 + side] - integral[y0, x0 + side] - integral[y0 + side, x0] + integral[y0, x0]
        return float(s) / side**2

    from skimage.feature import peak_local_max

    dist = ndi.distance_transform_edt(np.pad(foreground, 1))[1:-1, 1:-1]
    centres = peak_local_max(dist, min_distance=max(1, side // 2), threshold_abs=side / 8, num_peaks=4 * max_rois)
    stride = max(1, side // 2)
    grid = [(y + side // 2, x + side // 2) for y in range(0, h - side + 1, stride) for x in range(0, w - side + 1, stride)]
    candidates = [(int(c[0]), int(c[1])) for c in centres] + grid
    corners: list[tuple[int, int, float]] = []
    for cy, cx in candidates:
        y0 = int(np.clip(cy - side // 2, 0, h - side))
        x0 = int(np.clip(cx - side // 2, 0, w - side))
        corners.append((y0, x0, fraction(y0, x0)))
    # particle centres first among equals: stable sort keeps their order
    corners.sort(key=lambda c: -round(c[2], 2))
    chosen: list[tuple[int, int]] = []
    for y0, x0, frac in corners:
        if frac < min_fraction or len(chosen) >= max_rois:
            break
        if all(_overlap(y0, x0, a, b, side) < 0.5 for a, b in chosen):
            chosen.append((y0, x0))
    return chosen


def _overlap(y0: int, x0: int, y1: int, x1: int, side: int) -> float:
    dy = max(0, side - abs(y0 - y1))
    dx = max(0, side - abs(x0 - x1))
    return dy * dx / side**2


@dataclass(frozen=True)
class TextureResult:
    """``texture`` in [0, 1] (calibrated), raw ``texture_energy``, the per-ROI energies and ROI corners."""

    texture: float
    texture_energy: float
    roi_energies: np.ndarray
    roi_corners: list[tuple[int, int]]
    roi_side_px: int


def measure_texture(image: np.ndarray, pixel_size_um: float, config: TextureConfig = TextureConfig()
                    ) -> TextureResult:
    """Texture descriptor of a high-magnification image (``H x W`` float in [0, 1], info bar removed).

    Raises
    ------
    TextureError
        When the frame is smaller than one ROI at the reference scale or holds no particle surface.
    """
    scale = config.reference_pixel_size_um / pixel_size_um
    side = int(round(config.roi_px * scale))
    h, w = image.shape
    if side < 16:
        raise TextureError(
            f"pixel size {pixel_size_um:g} µm is too coarse for texture: a {config.roi_px}-px ROI at "
            f"{config.reference_pixel_size_um * 1000:g} nm/px would be {side} native px; "
            "use a high-magnification image (~15k×)"
        )
    if side > h or side > w:
        raise TextureError(
            f"image is {w}x{h} px but one texture ROI needs {side}x{side} native px "
            f"({config.roi_px} px at {config.reference_pixel_size_um * 1000:g} nm/px); "
            "check --pixel-size-um or use a larger field of view"
        )
    foreground = texture_foreground(image, pixel_size_um, config)
    corners = select_rois(foreground, side, config.max_rois, config.min_foreground_fraction)
    if not corners:
        raise TextureError(
            "no region of the image is covered by particles over a full texture ROI; "
            "is this a high-magnification image of particle surfaces?"
        )
    rois, masks = [], []
    for y0, x0 in corners:
        roi = image[y0: y0 + side, x0: x0 + side]
        fg = foreground[y0: y0 + side, x0: x0 + side]
        if side != config.roi_px:
            roi = resize(roi, (config.roi_px, config.roi_px), order=1, anti_aliasing=side > config.roi_px,
                         preserve_range=True)
            fg = resize(fg.astype(float), (config.roi_px, config.roi_px), order=0) > 0.5
        rois.append(roi)
        masks.append(fg)
    energies = roi_wavelet_energy(np.stack(rois), config, np.stack(masks))
    if np.all(np.isnan(energies)):
        raise TextureError("every texture ROI is flat (constant intensity); nothing to measure")
    energy = float(np.nanmean(energies))
    return TextureResult(normalise_texture(energy), energy, energies, corners, side)
