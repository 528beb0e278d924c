"""Per-particle measures: the perimeter estimator is unbiased and the statistics are the documented ones."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage.draw import polygon as draw_polygon

from models.particles import ParticleFilter, measure_particles, size_statistics, weighted_quantile
from simulators.fields import polygon_area_perimeter, random_particle_polygon


def _raster(poly: np.ndarray, shape=(200, 200), offset=(100.3, 99.7), supersample=4) -> np.ndarray:
    h, w = shape
    rr, cc = draw_polygon((poly[:, 1] + offset[1]) * supersample, (poly[:, 0] + offset[0]) * supersample,
                          (h * supersample, w * supersample))
    fine = np.zeros((h * supersample, w * supersample))
    fine[rr, cc] = 1
    return (fine.reshape(h, supersample, w, supersample).mean((1, 3)) > 0.5).astype(np.int32)


@pytest.mark.parametrize("radius", [6, 15, 40])
def test_disc_sphericity_close_to_one_at_all_sizes(radius):
    yy, xx = np.mgrid[:200, :200]
    labels = (((yy - 100.2) ** 2 + (xx - 99.6) ** 2) <= radius**2).astype(np.int32)
    table = measure_particles(labels, 0.5, ParticleFilter(min_area_px=1))
    assert len(table) == 1
    assert table.sphericity.iloc[0] == pytest.approx(1.0, abs=0.05 if radius < 10 else 0.02)
    assert table.eq_diameter_um.iloc[0] == pytest.approx(2 * radius * 0.5, rel=0.02)


def test_sphericity_unbiased_on_irregular_outlines():
    rng = np.random.default_rng(3)
    errors = []
    for _ in range(30):
        poly = random_particle_polygon(rng, radius_px=25, irregularity=0.12)
        area, perimeter = polygon_area_perimeter(poly)
        table = measure_particles(_raster(poly), 1.0, ParticleFilter(min_area_px=1, min_solidity=0))
        errors.append(table.sphericity.iloc[0] - 4 * np.pi * area / perimeter**2)
    assert abs(np.mean(errors)) < 0.01
    assert np.std(errors) < 0.03


def test_border_particles_and_small_specks_are_excluded():
    labels = np.zeros((100, 100), np.int32)
    labels[0:10, 40:50] = 1          # touches the top border
    labels[40:60, 40:60] = 2         # kept
    labels[80:82, 80:82] = 3         # 4 px speck
    table = measure_particles(labels, 1.0)
    assert table.particle_id.tolist() == [2]


def test_merged_masks_with_low_solidity_are_excluded():
    labels = np.zeros((120, 120), np.int32)
    labels[20:100, 20:30] = 1
    labels[90:100, 20:100] = 1       # an L shape: solidity ~0.24
    labels[40:60, 60:80] = 2
    table = measure_particles(labels, 1.0)
    assert table.particle_id.tolist() == [2]


def test_size_statistics_definitions():
    d = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    table = pd.DataFrame({"eq_diameter_um": d, "sphericity": [0.8, 0.9, 1.0, 0.9, 0.8]})
    stats = size_statistics(table)
    assert stats["d50_um"] == 3.0
    assert stats["n_particles"] == 5
    assert stats["d50_volume_um"] > stats["d50_um"]  # volume weighting favours the big particle
    assert stats["d50_volume_um"] == pytest.approx(weighted_quantile(d, 0.5, d**3))
    assert stats["sphericity_std"] == pytest.approx(np.std([0.8, 0.9, 1.0, 0.9, 0.8]))
    assert size_statistics(table.iloc[:0])["d50_um"] is None


def _random_blobs(rng: np.random.Generator, shape=(40, 50)) -> np.ndarray:
    from skimage.draw import ellipse

    mask = np.zeros(shape, bool)
    for _ in range(int(rng.integers(1, 4))):
        rr, cc = ellipse(rng.integers(3, shape[0] - 3), rng.integers(3, shape[1] - 3), rng.integers(1, 12),
                         rng.integers(1, 12), rotation=rng.uniform(0, np.pi), shape=shape)
        mask[rr, cc] = True
    return np.pad(mask, 1)


def test_crofton_perimeter_equals_skimage():
    from skimage.measure import perimeter_crofton

    from models.particles import crofton_perimeter

    rng = np.random.default_rng(3)
    for _ in range(200):
        mask = _random_blobs(rng)
        assert crofton_perimeter(mask) == pytest.approx(perimeter_crofton(mask, directions=4), abs=1e-9)


def test_convex_solidity_equals_qhull_of_pixel_corners():
    from scipy.spatial import ConvexHull

    from models.segmentation import convex_solidity

    rng = np.random.default_rng(4)
    for _ in range(200):
        mask = _random_blobs(rng)
        yy, xx = np.nonzero(mask)
        corners = np.concatenate([np.c_[xx + dx, yy + dy] for dx in (0, 1) for dy in (0, 1)])
        expected = min(1.0, mask.sum() / ConvexHull(corners).volume)
        assert convex_solidity(mask) == pytest.approx(expected, abs=1e-9)
    line = np.zeros((5, 9), bool)
    line[2, 1:8] = True  # degenerate hull of the centres: the corner hull is the 1 x 7 box
    assert convex_solidity(line) == pytest.approx(1.0)
    assert convex_solidity(np.eye(5, dtype=bool)) == pytest.approx(5 / 9)
