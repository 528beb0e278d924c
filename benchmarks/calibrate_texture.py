"""Reproduce the frozen texture calibration of :mod:`models.texture`.

Texture 1 and 0 are the mean ``texture_energy`` of simulated platelet networks (coverage 0.5, 512² frames at
the reference pixel size) with platelets 1.5 and 16 reference pixels wide, over seeds 0-4.

    .venv/bin/python benchmarks/calibrate_texture.py
"""
from __future__ import annotations

import numpy as np

from models.texture import TextureConfig, measure_texture
from simulators.fields import make_platelet_network

WIDTH_AT_TEXTURE_1 = 1.5
WIDTH_AT_TEXTURE_0 = 16.0
SEEDS = range(5)


def mean_energy(width_px: float, config: TextureConfig = TextureConfig()) -> float:
    """Mean texture energy of networks of ``width_px``-wide platelets over :data:`SEEDS`."""
    px = config.reference_pixel_size_um
    values = [
        measure_texture(make_platelet_network(90_000 + seed, width_px=width_px, pixel_size_um=px), px, config)
        .texture_energy
        for seed in SEEDS
    ]
    return float(np.mean(values))


if __name__ == "__main__":
    hi, lo = mean_energy(WIDTH_AT_TEXTURE_1), mean_energy(WIDTH_AT_TEXTURE_0)
    print(f"CALIBRATION_ENERGY_AT_TEXTURE_1 = {hi:.4f}   # platelets {WIDTH_AT_TEXTURE_1} reference px wide")
    print(f"CALIBRATION_ENERGY_AT_TEXTURE_0 = {lo:.4f}   # platelets {WIDTH_AT_TEXTURE_0} reference px wide")
