"""Segmenter details that the field-level acceptance tests would not pin down."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from models.segmentation import WatershedConfig, fill_holes, segment_watershed


def _ring_of_discs(n: int = 12, ring_radius: float = 120, disc_radius: float = 34, size: int = 400):
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size), 0.06, np.float32)
    for k in range(n):
        a = 2 * np.pi * k / n
        cy, cx = size / 2 + ring_radius * np.sin(a), size / 2 + ring_radius * np.cos(a)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= disc_radius**2] = 0.7
    rng = np.random.default_rng(0)
    return ndi.gaussian_filter(image, 1.2) + rng.normal(0, 0.01, image.shape).astype(np.float32)


def test_background_enclosed_by_touching_particles_is_not_a_particle():
    image = _ring_of_discs()
    labels = segment_watershed(image)
    centre = labels[190:210, 190:210]
    assert (centre == 0).all(), "the gap inside a ring of touching particles was filled into an object"
    assert labels.max() >= 10  # the ring is still split into its discs


def test_fill_holes_keeps_dark_enclosed_background_but_fills_particle_cores():
    mask = np.zeros((60, 120), bool)
    mask[5:55, 5:55] = True
    mask[20:40, 20:40] = False  # a large hole as dark as the background
    mask[5:55, 65:115] = True
    mask[28:32, 88:92] = False  # a small dark core
    image = np.where(mask, 1.0, 0.0).astype(np.float32)
    filled = fill_holes(mask, image, background_below=0.5)
    assert not filled[30, 30]
    assert filled[30, 90]
    assert fill_holes(mask)[30, 30]  # without an image every hole is filled


def _disc_scene(size: int = 200, *, behind_level: float | None = 0.3, front_level: float = 0.8,
                shading: bool = False) -> np.ndarray:
    """A bright disc (r 50) with, optionally, a dimmer disc (r 22) half hidden behind its right side."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    image = np.full((size, size), 0.05, np.float32)
    if behind_level is not None:
        image[(yy - 100) ** 2 + (xx - 160) ** 2 <= 22**2] = behind_level
    front = (yy - 100) ** 2 + (xx - 95) ** 2 <= 50**2
    # optional smooth shading: the left side of the front disc darkens gradually (no edge)
    level = front_level * (np.clip((xx - 45) / 100, 0, 1) * 0.7 + 0.3 if shading else 1.0)
    image[front] = np.broadcast_to(level, image.shape)[front]
    rng = np.random.default_rng(1)
    return ndi.gaussian_filter(image, 1.0) + rng.normal(0, 0.01, image.shape).astype(np.float32)


def test_dim_particle_behind_a_bright_one_gets_its_own_label():
    labels = segment_watershed(_disc_scene())
    front, behind = labels[100, 95], labels[100, 172]
    assert front > 0 and behind > 0 and front != behind
    # the particle behind keeps its visible part: about the area of the disc outside the front one
    assert 700 < (labels == behind).sum() < 1500
    merged = segment_watershed(_disc_scene(), WatershedConfig(split_dim=False))
    assert merged[100, 95] == merged[100, 172], "the scene should defeat the shape-only watershed"


def test_a_gradually_shaded_particle_is_not_split():
    labels = segment_watershed(_disc_scene(behind_level=None, shading=True))
    assert len(np.unique(labels[labels > 0])) == 1


def test_h_maxima_by_levels_matches_skimage_on_distance_reliefs():
    from skimage.morphology import h_maxima

    from models.segmentation import h_maxima_by_levels

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:120, :160]
    for _ in range(5):
        blobs = np.zeros((120, 160), bool)
        for cy, cx, r in zip(rng.uniform(30, 90, 3), rng.uniform(30, 130, 3), rng.uniform(12, 30, 3)):
            blobs |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        relief = np.log1p(ndi.gaussian_filter(ndi.distance_transform_edt(blobs), 1.0))
        local_maxima = (relief >= ndi.maximum_filter(relief, size=3)) & blobs
        for h in (0.1, 0.36, 0.8):
            assert (h_maxima_by_levels(relief, local_maxima, h) == h_maxima(relief, h).astype(bool)).all()


def test_otsu_threshold_equals_skimage_on_a_256_bin_histogram():
    from skimage.filters import threshold_otsu

    from models.segmentation import otsu_threshold

    rng = np.random.default_rng(5)
    for i in range(300):
        n = int(rng.integers(20, 3000))
        values = rng.random(n) * rng.random() + (rng.random(n) > 0.5) * rng.random()
        values = values.astype(np.float32 if i % 2 else np.float64)
        counts, edges = np.histogram(values, bins=256)
        assert otsu_threshold(values) == float(threshold_otsu(hist=(counts, 0.5 * (edges[:-1] + edges[1:]))))


def test_gaussian_filter_2d_is_scipys_bit_for_bit():
    from scipy import ndimage as ndi

    from models.segmentation import gaussian_filter_2d

    image = np.random.default_rng(6).random((61, 47)).astype(np.float32)
    for sigma in (1.0, 1.5):
        assert np.array_equal(gaussian_filter_2d(image, sigma), ndi.gaussian_filter(image, sigma))
