"""The simulated SEM: frames, metadata, ground truth, and that ``describe`` reads back what was drawn."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from models.describe import Describer
from models.imageio import SEMImage, read_image
from simulators.conditions import Morphology
from simulators.microscope import (
    MAGNIFICATIONS,
    TEXTURE_CALIBRATION_TEXTURE,
    labels_path,
    pixel_size_for,
    platelet_width_for_texture,
    render_micrograph,
    shape_with_sphericity,
    stratified_lognormal,
    write_micrograph,
)
from simulators.fields import polygon_area_perimeter

MORPHOLOGY = Morphology(d50_um=3.0, d50_spread=0.22, sphericity_mean=0.82, sphericity_std=0.06, texture=0.6,
                        primary_aspect=4.0)


def test_pixel_size_follows_magnification():
    assert pixel_size_for(MAGNIFICATIONS["low"], 1024) == pytest.approx(0.05)
    assert pixel_size_for(MAGNIFICATIONS["high"], 1024) == pytest.approx(0.01)
    assert pixel_size_for(3000, 512) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="magnification"):
        pixel_size_for(0)


def test_render_is_deterministic_for_a_seed():
    a = render_micrograph(MORPHOLOGY, MAGNIFICATIONS["low"], 3, shape=(256, 256))
    b = render_micrograph(MORPHOLOGY, MAGNIFICATIONS["low"], 3, shape=(256, 256))
    c = render_micrograph(MORPHOLOGY, MAGNIFICATIONS["low"], 4, shape=(256, 256))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, c.image)
    assert a.image.dtype == np.float32 and 0.0 <= a.image.min() and a.image.max() <= 1.0
    assert a.labels[-a.info_bar_rows:].max() == 0  # nothing labelled under the info bar


def test_outline_hits_the_requested_sphericity():
    rng = np.random.default_rng(0)
    for target in (0.62, 0.75, 0.9, 0.97):
        area, perimeter = polygon_area_perimeter(shape_with_sphericity(rng, 40.0, target).polygon(360))
        assert 4 * np.pi * area / perimeter**2 == pytest.approx(target, abs=0.01)
        assert np.sqrt(area / np.pi) == pytest.approx(40.0, rel=0.02)


def test_stratified_sizes_have_the_requested_median():
    values = stratified_lognormal(np.random.default_rng(1), 50.0, 0.3, 25)
    assert np.median(values) == pytest.approx(50.0, rel=0.03)


def test_texture_calibration_is_monotone_and_invertible():
    assert np.all(np.diff(TEXTURE_CALIBRATION_TEXTURE) < 0)
    widths = [platelet_width_for_texture(t) for t in (0.9, 0.6, 0.3, 0.05)]
    assert widths == sorted(widths)
    assert platelet_width_for_texture(0.6, pixel_size_um=0.02) == pytest.approx(platelet_width_for_texture(0.6) / 2)


def test_written_tiff_carries_pixel_size_and_masks(tmp_path):
    frame = render_micrograph(MORPHOLOGY, MAGNIFICATIONS["low"], 1, shape=(256, 320))
    path = write_micrograph(tmp_path / "s1_low.tif", frame, {"sample_id": "S1"})
    image = read_image(path)
    assert image.pixel_size_um == pytest.approx(frame.pixel_size_um)
    assert image.pixels.shape == (256, 320)
    labels = tifffile.imread(labels_path(path))
    assert labels.max() == frame.labels.max() > 0


def test_charging_adds_bright_streaks():
    clean = render_micrograph(MORPHOLOGY, MAGNIFICATIONS["low"], 2, shape=(256, 256), drift=False)
    charged = render_micrograph(MORPHOLOGY, MAGNIFICATIONS["low"], 2, shape=(256, 256), drift=False, charging=True)
    assert charged.image.mean() > clean.image.mean()


@pytest.mark.parametrize("morphology", [
    MORPHOLOGY,
    Morphology(2.0, 0.3, 0.9, 0.03, 0.9, 6.0),
    Morphology(5.0, 0.15, 0.7, 0.08, 0.2, 2.0),
])
def test_describe_reads_back_the_drawn_morphology(morphology):
    describer = Describer()
    low = render_micrograph(morphology, MAGNIFICATIONS["low"], 7)
    high = render_micrograph(morphology, MAGNIFICATIONS["high"], 7)
    d = describer.describe_array(SEMImage(low.image, low.pixel_size_um, "sim", "low")).descriptors
    t = describer.describe_array(SEMImage(high.image, high.pixel_size_um, "sim", "high")).descriptors
    assert d["d50_um"] == pytest.approx(morphology.d50_um, rel=0.05)
    assert d["sphericity_mean"] == pytest.approx(morphology.sphericity_mean, abs=0.03)
    assert t["texture"] == pytest.approx(morphology.texture, abs=0.06)


def test_high_magnification_frames_have_masks_too(tmp_path):
    frame = render_micrograph(MORPHOLOGY, MAGNIFICATIONS["high"], 1, shape=(256, 256))
    assert frame.labels.shape == frame.image.shape and frame.labels.max() >= 1
    assert frame.labels[-frame.info_bar_rows:].max() == 0
    # particles (labelled) are brighter than the background on average
    assert frame.image[frame.labels > 0].mean() > frame.image[:-frame.info_bar_rows][frame.labels[:-frame.info_bar_rows] == 0].mean()
    path = write_micrograph(tmp_path / "h.tif", frame)
    assert tifffile.imread(labels_path(path)).max() == frame.labels.max()
