"""Descriptors of generated (or simulated) tiles with ``describe``'s pipeline, pooled per condition.

``low`` tiles: watershed segmentation and the particle table of ``morphloop describe``; particles of all the
condition's tiles are pooled before taking the median, so a few small tiles give a stable D50 (paper 000 pools
several images per condition). ``high`` tiles: the wavelet texture on one 128-px ROI per tile (a 256-px ROI does
not fit a 128-px tile; at the same 10 nm reference pixel size the value differs by a small offset that the
model's ``texture_calibration`` removes).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from models.particles import ParticleFilter, measure_particles, size_statistics
from models.segmentation import NoParticlesError, WatershedConfig, segment_watershed
from models.texture import TextureConfig, TextureError, measure_texture

TILE_TEXTURE = TextureConfig(roi_px=128, max_rois=1)
DESCRIPTOR_NAMES = ("d50_um", "sphericity_mean", "sphericity_std", "texture")
#: Saved with a model: its training conditions' simulated-tile descriptors (baselines, generation calibration).
TRAINING_DESCRIPTORS_FILE = "training_descriptors.json"
#: Columns of that table holding what the lab measured of each training sample (``describe`` on its full SEM
#: frames; ``morphloop surrogate measure-training``), beside the tiles' ``tile_*``.
MEASURED_PREFIX = "measured_"
#: Saved with a model: lab samples measured without entering the image training set (conditions and
#: ``measured_*`` columns; ``morphloop surrogate measure-lab``). The training-set GP learns from them too.
LAB_DESCRIPTORS_FILE = "lab_descriptors.json"


def particle_table(tile: np.ndarray, pixel_size_um: float, watershed: WatershedConfig = WatershedConfig(),
                   particle_filter: ParticleFilter = ParticleFilter()) -> pd.DataFrame:
    """Kept particles of one low-magnification tile (empty when nothing is segmented)."""
    try:
        labels = segment_watershed(np.asarray(tile, np.float32), watershed)
    except NoParticlesError:
        return pd.DataFrame(columns=["eq_diameter_um", "sphericity"])
    return measure_particles(labels, pixel_size_um, particle_filter)


def describe_low_tiles(tiles: np.ndarray, pixel_size_um: float) -> dict[str, float]:
    """Pooled particle descriptors of ``k x H x W`` tiles of one condition.

    Returns ``d50_um``, ``sphericity_mean``, ``sphericity_std`` (pooled), ``n_particles``, and
    ``d50_um_spread`` (std of the per-tile medians; NaN with fewer than two measurable tiles).
    """
    tables = [particle_table(t, pixel_size_um) for t in tiles]
    per_tile = [float(np.median(t["eq_diameter_um"])) for t in tables if len(t)]
    pooled = pd.concat([t for t in tables if len(t)], ignore_index=True) if per_tile else pd.DataFrame()
    stats = size_statistics(pooled) if len(pooled) else size_statistics(pd.DataFrame(columns=["eq_diameter_um"]))
    nan = float("nan")
    return {"d50_um": nan if stats["d50_um"] is None else stats["d50_um"],
            "sphericity_mean": nan if stats["sphericity_mean"] is None else stats["sphericity_mean"],
            "sphericity_std": nan if stats["sphericity_std"] is None else stats["sphericity_std"],
            "n_particles": int(stats["n_particles"]),
            "d50_um_spread": float(np.std(per_tile)) if len(per_tile) > 1 else nan,
            "diameters_um": pooled["eq_diameter_um"].to_numpy(float) if len(pooled) else np.zeros(0),
            "sphericities": pooled["sphericity"].to_numpy(float) if len(pooled) else np.zeros(0)}


def tile_textures(tiles: np.ndarray, pixel_size_um: float) -> np.ndarray:
    """Uncalibrated texture of each high-magnification tile (NaN where no ROI qualifies)."""
    out = np.full(len(tiles), np.nan)
    for i, tile in enumerate(tiles):
        try:
            out[i] = measure_texture(np.asarray(tile, np.float32), pixel_size_um, TILE_TEXTURE).texture
        except TextureError:
            pass
    return out


def describe_high_tiles(tiles: np.ndarray, pixel_size_um: float, calibration=(0.0, 1.0)) -> dict[str, float]:
    """Mean calibrated ``texture`` of ``k x H x W`` tiles and its ``texture_spread`` (std across tiles)."""
    raw = tile_textures(tiles, pixel_size_um)
    a, b = calibration
    cal = np.clip(a + b * raw, 0.0, 1.0)
    good = cal[np.isfinite(cal)]
    return {"texture": float(good.mean()) if len(good) else float("nan"),
            "texture_spread": float(good.std()) if len(good) > 1 else float("nan")}


def fit_affine(measured: np.ndarray, reference: np.ndarray) -> list[float]:
    """Least-squares ``[a, b]`` with ``reference ≈ a + b * measured`` over finite pairs (identity if < 3)."""
    m, r = np.asarray(measured, float), np.asarray(reference, float)
    ok = np.isfinite(m) & np.isfinite(r)
    if ok.sum() < 3 or np.ptp(m[ok]) == 0:
        return [0.0, 1.0]
    b, a = np.polyfit(m[ok], r[ok], 1)
    return [float(a), float(b)]
