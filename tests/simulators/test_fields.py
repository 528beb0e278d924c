"""Synthetic SEM fields: determinism, exact truth, contacts, info bar, platelet coverage, TIFF metadata."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
from scipy.spatial import cKDTree
from skimage.measure import points_in_poly

from simulators.fields import (
    make_particle_field,
    make_platelet_network,
    polygon_area_perimeter,
    random_particle_polygon,
    weighted_median,
    write_sem_tiff,
)

SMALL = dict(shape=(384, 384), n_particles=20, d50_px=40.0)


def test_same_seed_same_field_other_seed_other_field():
    a = make_particle_field(7, **SMALL)
    b = make_particle_field(7, **SMALL)
    c = make_particle_field(8, **SMALL)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.truth.equals(b.truth)
    assert not np.array_equal(a.image, c.image)
    assert a.image.dtype == np.float32 and a.labels.dtype == np.int32
    assert 0.0 <= a.image.min() and a.image.max() <= 1.0


def test_polygon_area_perimeter_exact_for_a_square():
    area, perimeter = polygon_area_perimeter(np.array([[0, 0], [3, 0], [3, 3], [0, 3]], float))
    assert area == pytest.approx(9.0) and perimeter == pytest.approx(12.0)


def test_irregularity_zero_is_a_circle_and_more_irregular_is_less_spherical():
    rng = np.random.default_rng(0)
    area, perimeter = polygon_area_perimeter(random_particle_polygon(rng, 25.0, 0.0))
    assert 4 * math.pi * area / perimeter**2 == pytest.approx(1.0, abs=1e-3)
    assert area == pytest.approx(math.pi * 25.0**2, rel=1e-3)  # radius_px is the equivalent radius

    def mean_psi(irregularity: float) -> float:
        rng = np.random.default_rng(1)
        psis = []
        for _ in range(40):
            a, p = polygon_area_perimeter(random_particle_polygon(rng, 30.0, irregularity))
            psis.append(4 * math.pi * a / p**2)
        return float(np.mean(psis))

    psi = [mean_psi(x) for x in (0.0, 0.05, 0.1, 0.15)]
    assert all(x > y for x, y in zip(psi, psi[1:]))
    assert 0.72 < psi[-1] < 0.88  # irregularity 0.15 -> sphericity about 0.8


def test_truth_matches_the_label_map():
    field = make_particle_field(3, shape=(512, 512), n_particles=30, d50_px=50.0, touching=0.5)
    truth = field.truth
    assert list(truth["particle_id"]) == list(range(1, len(truth) + 1))
    counts = np.bincount(field.labels.ravel(), minlength=len(truth) + 1)[1:]
    inner = ~truth["touches_border"].to_numpy()
    assert inner.sum() >= 10
    label_diam = 2 * np.sqrt(counts[inner] / np.pi)
    np.testing.assert_allclose(label_diam, truth["eq_diam_px"].to_numpy()[inner], rtol=0.02)
    # the centroid of each inner particle's pixels is its true centroid
    for row in truth[inner].itertuples():
        ys, xs = np.nonzero(field.labels == row.particle_id)
        assert abs(xs.mean() + 0.5 - row.cx) < 0.5 and abs(ys.mean() + 0.5 - row.cy) < 0.5

    s = field.summary()
    d = truth["eq_diam_px"].to_numpy()[inner]
    assert s["n_particles"] == inner.sum()
    assert s["d50_px"] == pytest.approx(np.median(d))
    assert s["d50_um"] == pytest.approx(np.median(d) * field.pixel_size_um)
    assert s["d10_um"] < s["d50_um"] < s["d90_um"]
    assert s["d50_volume_um"] > s["d50_um"]  # weighting by d^3 moves the median up
    assert s["sphericity_std"] == pytest.approx(truth["sphericity"].to_numpy()[inner].std(ddof=0))


def test_border_particles_are_flagged():
    field = make_particle_field(4, **SMALL, info_bar=False)
    h, w = field.labels.shape
    for row, poly in zip(field.truth.itertuples(), field.polygons):
        (xmin, ymin), (xmax, ymax) = poly.min(0), poly.max(0)
        crosses = xmin < 0 or ymin < 0 or xmax > w or ymax > h
        if crosses:
            assert row.touches_border
        if not row.touches_border:  # no pixel of an inner particle on the frame's edge
            ring = np.concatenate([field.labels[0], field.labels[-1], field.labels[:, 0], field.labels[:, -1]])
            assert row.particle_id not in ring


def test_weighted_median_interpolates():
    assert weighted_median(np.array([1.0, 2.0, 3.0]), np.ones(3)) == pytest.approx(2.0)
    assert weighted_median(np.array([1.0, 3.0]), np.array([1.0, 1.0])) == pytest.approx(2.0)
    assert weighted_median(np.array([1.0, 2.0]), np.array([1.0, 8.0])) > 1.8


def test_touching_makes_contacts_without_deep_overlaps():
    field = make_particle_field(5, shape=(512, 512), n_particles=40, d50_px=40.0, touching=1.0)
    polys = field.polygons
    trees = [cKDTree(p) for p in polys]
    contacts = 0
    for i in range(len(polys)):
        for j in range(i + 1, len(polys)):
            if np.hypot(*(polys[i].mean(0) - polys[j].mean(0))) > 150:
                continue
            d, _ = trees[j].query(polys[i])
            contacts += d.min() <= 1.5
            # a vertex of i inside j may lie at most 1 px from j's outline
            inside = points_in_poly(polys[i], polys[j])
            if inside.any():
                assert d[inside].max() <= 1.0
    assert contacts >= 10
    assert field.truth["in_contact"].mean() > 0.8


def test_no_touching_keeps_particles_apart():
    field = make_particle_field(6, shape=(512, 512), n_particles=30, d50_px=40.0, touching=0.0)
    assert not field.truth["in_contact"].any()
    polys = field.polygons
    gaps = [cKDTree(polys[j]).query(polys[i])[0].min() for i in range(len(polys)) for j in range(i + 1, len(polys))]
    assert min(gaps) > 1.5


def test_info_bar_is_flat_and_hides_particles():
    field = make_particle_field(9, shape=(512, 512), n_particles=60, d50_px=40.0, noise=0.05)
    rows = field.info_bar_rows
    h = field.image.shape[0]
    assert rows == round(0.07 * h)
    bar = field.image[h - rows:]
    flat = (np.abs(np.diff(bar, axis=1)) < 1e-6).mean(axis=1)
    assert flat.min() > 0.8 and np.median(flat) == 1.0  # bar rows are (mostly) exactly constant
    above = (np.abs(np.diff(field.image[: h - rows], axis=1)) < 1e-6).mean()
    assert above < 0.2  # the micrograph itself is noisy
    assert (field.labels[h - rows:] == 0).all()
    hidden = field.truth[field.truth["in_info_bar"]]
    assert len(hidden) > 0 and hidden["touches_border"].all()
    for row in hidden.itertuples():
        assert field.polygons[row.particle_id - 1][:, 1].max() > h - rows
    # the scale bar's length in pixels matches its length in micrometres
    assert field.scale_bar_px == pytest.approx(field.scale_bar_um / field.pixel_size_um, abs=1.0)
    white = (bar > 0.9).sum(axis=1).max()
    assert white >= field.scale_bar_px - 1
    assert make_particle_field(9, **SMALL, info_bar=False).info_bar_rows == 0


@pytest.mark.parametrize("width", [2.0, 12.0])
def test_platelet_coverage_is_the_requested_one(width):
    image = make_platelet_network(0, width_px=width, shape=(384, 384), coverage=0.5)
    assert image.dtype == np.float32 and image.shape == (384, 384)
    bright = (image > 0.5 * (0.1 + 0.75)).mean()
    assert abs(bright - 0.5) < 0.05


def test_thin_platelets_have_more_fine_texture():
    def fine_energy(width):
        im = make_platelet_network(1, width_px=width, shape=(256, 256), noise=0.0)
        return float(np.mean(np.diff(im, axis=1) ** 2))

    assert fine_energy(2.0) > 2 * fine_energy(12.0)


@pytest.mark.parametrize("bits", [8, 16])
def test_write_sem_tiff_round_trips_pixel_size(tmp_path, bits):
    image = make_platelet_network(2, width_px=4.0, shape=(64, 80))
    path = write_sem_tiff(tmp_path / "frame.tif", image, 0.0123, magnification=15000, bits=bits,
                          extra={"sample": "A1"})
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        data = page.asarray()
        meta = json.loads(page.description)
        xres, yres = page.tags["XResolution"].value, page.tags["YResolution"].value
        unit = page.tags["ResolutionUnit"].value
    assert data.dtype == (np.uint8 if bits == 8 else np.uint16) and data.shape == (64, 80)
    assert meta == {"pixel_size_um": 0.0123, "magnification": 15000, "sample": "A1"}
    assert int(unit) == 3  # centimetre
    for num, den in (xres, yres):
        assert 1e4 * den / num == pytest.approx(0.0123, rel=1e-6)
    np.testing.assert_allclose(data / np.iinfo(data.dtype).max, image, atol=1.0 / np.iinfo(data.dtype).max)
