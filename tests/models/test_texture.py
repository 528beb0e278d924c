"""Texture: falls monotonically with platelet width (paper 000 Fig. S1), compares across pixel sizes."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from models.texture import (CALIBRATION_ENERGY_AT_TEXTURE_0, CALIBRATION_ENERGY_AT_TEXTURE_1, TextureConfig,
                            TextureError, measure_texture, normalise_texture, roi_wavelet_energy)
from simulators.fields import make_platelet_network

WIDTHS = [2, 3, 4, 5, 6, 8, 10, 13]


@pytest.mark.parametrize("seed", [501, 502])
def test_texture_falls_monotonically_with_platelet_width(seed):
    textures, energies = [], []
    for w in WIDTHS:
        image = make_platelet_network(seed * 100 + w, width_px=w, pixel_size_um=0.01)
        result = measure_texture(image, 0.01)
        textures.append(result.texture)
        energies.append(result.texture_energy)
    assert spearmanr(WIDTHS, energies)[0] <= -0.9
    assert spearmanr(WIDTHS, textures)[0] <= -0.9
    assert all(0.0 <= t <= 1.0 for t in textures)
    assert textures[0] > 0.6 and textures[-1] < 0.25


def test_texture_resamples_to_the_reference_pixel_size():
    """The same network imaged with pixels twice as fine gives nearly the same texture."""
    for w in (3, 8):
        fine = make_platelet_network(77, width_px=2 * w, shape=(1024, 1024), pixel_size_um=0.005)
        ref = make_platelet_network(77, width_px=w, shape=(512, 512), pixel_size_um=0.01)
        assert measure_texture(fine, 0.005).texture == pytest.approx(measure_texture(ref, 0.01).texture, abs=0.15)


def test_energy_is_contrast_invariant_and_bounded():
    rng = np.random.default_rng(0)
    roi = rng.random((256, 256))
    e1 = roi_wavelet_energy(roi)[0]
    e2 = roi_wavelet_energy(0.2 * roi + 0.3)[0]
    assert e1 == pytest.approx(e2, rel=1e-6)
    assert 0.9 < e1 <= 1.0  # white noise: nearly all energy in the fine bands
    smooth = np.add.outer(np.arange(256.0), np.arange(256.0))
    assert roi_wavelet_energy(smooth)[0] < 0.1  # a ramp: energy only at the periodic seam


def test_calibration_maps_documented_anchors():
    assert normalise_texture(CALIBRATION_ENERGY_AT_TEXTURE_1) == pytest.approx(1.0)
    assert normalise_texture(CALIBRATION_ENERGY_AT_TEXTURE_0) == pytest.approx(0.0)
    assert normalise_texture(10.0) == 1.0 and normalise_texture(-1.0) == 0.0


def test_texture_errors_are_explicit():
    image = make_platelet_network(1, width_px=3, shape=(128, 128), pixel_size_um=0.01)
    with pytest.raises(TextureError, match="ROI"):
        measure_texture(image, 0.01)  # 128 px frame, ROI needs 256
    with pytest.raises(TextureError, match="too coarse"):
        measure_texture(np.random.default_rng(0).random((512, 512)), 1.0)
    assert TextureConfig().levels == 3 and TextureConfig().wavelet == "db2"  # documented defaults
