"""``flows.tomo``: the LQ / enhanced / HQ comparison on the HQ field of view."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from flows.tomo import compare_qualities, load_model, quantify
from models.indi import upsample_lq
from models.tomo_metrics import segment_particles, sift_matches


def _disks(rng: np.random.Generator, size: int = 128, n: int = 10) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size), 0.02, np.float32)
    for _ in range(n):
        cy, cx, r = *rng.uniform(16, size - 16, 2), rng.uniform(7, 14)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] = 0.1
    return image


def test_compare_qualities_measures_the_noise_free_truth_with_the_hq_mask():
    rng = np.random.default_rng(4)
    truth = np.stack([_disks(rng) for _ in range(2)])
    hq = np.stack([ndi.gaussian_filter(s, 1.0) for s in truth]) + rng.normal(0, 0.01, truth.shape).astype(np.float32)
    lq = truth.reshape(2, 64, 2, 64, 2).mean(axis=(2, 4)) + rng.normal(0, 0.02, (2, 64, 64)).astype(np.float32)
    model = load_model(None)
    with_truth = compare_qualities(lq, hq, model, steps=2, steps_sweep=(1, 2), voxel_nm=50.0, truth=truth)
    mask = np.stack([segment_particles(s) for s in hq])
    assert with_truth["truth"] == quantify(truth, mask, 50.0)
    # the noise-free, unblurred phantom is sharper and cleaner than its noisy, blurred HQ scan
    assert with_truth["truth"]["resolution_nm"] < with_truth["hq"]["resolution_nm"]
    assert with_truth["truth"]["cnr"] > with_truth["hq"]["cnr"]
    without = compare_qualities(lq, hq, model, steps=2, steps_sweep=(1, 2), voxel_nm=50.0)
    assert "truth" not in without and without["hq"] == with_truth["hq"]
    # paper 001's congruent points: SIFT matches of each slice with its HQ slice, summed
    assert with_truth["lq"]["sift_matches"] == sum(sift_matches(a, b) for a, b in zip(upsample_lq(lq), hq))
    assert all(isinstance(with_truth[k]["sift_matches"], int) for k in ("enhanced", "one_step"))


def test_compare_qualities_measures_lq_where_hq_sees_it_despite_an_offset_between_the_scans():
    rng = np.random.default_rng(7)
    truth = np.stack([_disks(rng) for _ in range(2)])
    hq = np.stack([ndi.gaussian_filter(s, 1.0) for s in truth])

    def lq_of(phantom: np.ndarray) -> np.ndarray:
        return phantom.reshape(2, 64, 2, 64, 2).mean(axis=(2, 4))

    offset = np.stack([ndi.shift(s, (1.5, -1.0), order=1, mode="nearest") for s in truth])  # HQ pixels
    model = load_model(None)
    aligned = compare_qualities(lq_of(truth), hq, model, steps=1, steps_sweep=(1,), voxel_nm=50.0)
    shifted = compare_qualities(lq_of(offset), hq, model, steps=1, steps_sweep=(1,), voxel_nm=50.0)
    assert abs(shifted["lq"]["resolution_nm"] / aligned["lq"]["resolution_nm"] - 1) < 0.1
    # measured where it lies, the offset LQ would look blurrier than it is
    from models.indi import upsample_lq

    mask = np.stack([segment_particles(s) for s in hq])
    unregistered = quantify(upsample_lq(lq_of(offset)), mask, 50.0)["resolution_nm"]
    assert unregistered > 1.2 * aligned["lq"]["resolution_nm"]
