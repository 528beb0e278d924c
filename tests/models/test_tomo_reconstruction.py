"""Parallel-beam reconstruction (models.tomo_reconstruction): synthetic checks, then the real tooth scan.

The real data (tomopy's tooth.h5: 181 angles 0-179°, 2 rows x 640 columns, flats and darks) lives in
../shared/data/real_tomo_tooth; those tests skip when it is absent.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, radon, resize

from models.tomo_metrics import cnr, segment_particles
from models.tomo_reconstruction import (
    _entropy, centre_of_mass_axis, fbp, find_rotation_center, flat_dark_correct, read_data_exchange, reconstruct,
    remove_rings, sparse_angle_pair,
)

TOOTH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real_tomo_tooth" / "tooth.h5"
#: Axis of the tooth scan found by find_rotation_center (middle row, ring-corrected); rows 0 and 1 agree to 0.02 px.
TOOTH_CENTRE = 295.9


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    """Shepp-Logan, 96 px, padded to 144 px so it stays inside the field of view when the axis is shifted."""
    return np.pad(resize(shepp_logan_phantom(), (96, 96), anti_aliasing=True), 24)


def _sinogram(image: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """``n_angles x cols`` line integrals of ``image`` with the axis at ``cols // 2``."""
    return radon(image, angles, circle=True).T.astype(np.float32)


def test_flat_dark_correction_recovers_line_integrals():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 3, (7, 4, 32))
    dark = 100 + rng.uniform(0, 20, (4, 32))
    flat = dark + rng.uniform(500, 3000, (4, 32))          # uneven beam and pixel gains
    counts = dark + (flat - dark) * np.exp(-truth)
    darks = dark + rng.normal(0, 1, (4, 32)) * np.array([1, -1, 2, -2, 0])[:, None, None]  # averages to `dark`
    flats = np.stack([flat * 0.99, flat * 1.01])                                            # averages to `flat`
    out = flat_dark_correct(counts, flats, darks)
    assert out.dtype == np.float32 and out.shape == truth.shape
    np.testing.assert_allclose(out, truth, atol=1e-4)
    counts[0, 0, 0] = dark[0, 0] - 5                        # below the dark level: clipped, finite
    assert flat_dark_correct(counts, flats, darks, min_transmission=1e-3)[0, 0, 0] == pytest.approx(-np.log(1e-3))
    with pytest.raises(ValueError, match="flats must be"):
        flat_dark_correct(counts, flats[:, :2], darks)


@pytest.mark.parametrize("method", ["auto", "entropy"])
@pytest.mark.parametrize("shift_px", [-7.3, 4.6, 11.2])
def test_centre_finding_recovers_a_known_axis_shift(phantom, shift_px, method):
    angles = np.linspace(0, 180, 180, endpoint=False)
    sino = _sinogram(phantom, angles)
    shifted = ndi.shift(sino, (0, shift_px), order=3, mode="nearest")
    shifted += np.random.default_rng(1).normal(0, 0.02 * sino.max(), sino.shape).astype(np.float32)
    found = find_rotation_center(shifted, angles, method=method)
    assert found == pytest.approx(sino.shape[1] // 2 + shift_px, abs=0.5)


@pytest.mark.parametrize("method", ["auto", "entropy"])
def test_centre_finding_on_a_scan_one_step_short_of_180_degrees(phantom, method):
    """Like the tooth scan: 181 angles from 0 to 179°, so no projection is exactly opposite the first."""
    angles = np.arange(181) * 180 / 181
    shifted = ndi.shift(_sinogram(phantom, angles), (0, -3.4), order=3, mode="nearest")
    found = find_rotation_center(shifted, angles, method=method)
    assert found == pytest.approx(phantom.shape[1] // 2 - 3.4, abs=0.5)


def test_centre_of_mass_axis_holds_on_a_low_dose_scan():
    """A low-dose LQ scan of the simulated cell (axis 3 px right of the detector centre): photon noise moved the
    entropy search's minimum by up to 3 px; the centre-of-mass sinusoid, fitted on every pixel, stays within 0.3 px."""
    import dataclasses

    from simulators.tomography import LQ, ElectrodeCell, simulate_scan

    scan = simulate_scan(ElectrodeCell(7), 1.0, dataclasses.replace(LQ, dose=150.0), seed=7, axis_offset_px=3.0)
    sinograms = flat_dark_correct(scan.projections, scan.flats, scan.darks).transpose(1, 0, 2)
    centre, spread = centre_of_mass_axis(sinograms, scan.angles_deg)
    assert spread < 0.02                                      # the sample stays in the field of view
    assert centre == pytest.approx(LQ.fov_px // 2 + 3.0, abs=0.3)
    _, used = reconstruct(scan.projections, scan.flats, scan.darks, scan.angles_deg)
    assert used == pytest.approx(LQ.fov_px // 2 + 3.0, abs=0.3)


def test_centre_finding_falls_back_to_the_entropy_search_for_local_tomography(phantom):
    """A sample wider than the field of view (columns cropped) breaks mass conservation: auto must not trust the
    centre of mass there, and forcing it says why it cannot be used on too few angles."""
    angles = np.linspace(0, 180, 180, endpoint=False)
    sino = _sinogram(phantom, angles)[:, 40:-40]              # the phantom now leaves the field at some angles
    _, spread = centre_of_mass_axis(sino, angles)
    assert spread > 0.02
    assert find_rotation_center(sino, angles) == pytest.approx(find_rotation_center(sino, angles, method="entropy"))
    with pytest.raises(ValueError, match="60 degrees"):
        centre_of_mass_axis(sino[:10], angles[:10])
    with pytest.raises(ValueError, match="method must be"):
        find_rotation_center(sino, angles, method="median")


def test_ring_removal_cuts_column_stripes_threefold(phantom):
    angles = np.linspace(0, 180, 180, endpoint=False)
    off_axis = ndi.shift(phantom, (12, 20), order=1)           # an axis-centred ring would look like a stripe
    truth = _sinogram(off_axis, angles)
    truth *= 2 / truth.max()                                   # line integrals up to 2, as in the tooth scan
    gains = np.random.default_rng(2).normal(1, 0.03, truth.shape[1])       # detector pixel gains
    striped = (truth - np.log(gains)[None, :]).astype(np.float32)          # -log(gain * exp(-L))

    def stripe_energy(sino: np.ndarray) -> float:
        error = (sino - truth).mean(axis=0)
        return float(np.sum((error - error.mean()) ** 2))

    cleaned = remove_rings(striped)
    assert stripe_energy(striped) / stripe_energy(cleaned) >= 3
    reference = fbp(truth, angles)
    rms = [np.sqrt(np.mean((fbp(s, angles) - reference) ** 2)) for s in (striped, cleaned)]
    assert rms[0] / rms[1] >= 2                                            # fewer rings in the slice too
    assert np.abs(remove_rings(truth) - truth).mean() < 0.01 * np.abs(truth).mean()   # no stripes: little change
    np.testing.assert_array_equal(remove_rings(striped, strength=0.0), striped)


def test_fbp_reproduces_shepp_logan_and_agrees_with_iradon():
    image = resize(shepp_logan_phantom(), (128, 128), anti_aliasing=True)
    angles = np.linspace(0, 180, 180, endpoint=False)
    sino = radon(image, angles, circle=True)
    slice_ = fbp(sino.T, angles)
    assert slice_.shape == (128, 128) and slice_.dtype == np.float32
    inside = np.hypot(*np.ogrid[-64:64, -64:64]) < 60
    assert np.corrcoef(slice_[inside], image[inside])[0, 1] > 0.95
    assert np.corrcoef(slice_[inside], iradon(sino, angles)[inside])[0, 1] > 0.999
    # an off-centre axis passed as `center` gives the same slice
    shifted = ndi.shift(sino.T, (0, 3.5), order=3, mode="nearest")
    assert np.corrcoef(fbp(shifted, angles, 64 + 3.5)[inside], image[inside])[0, 1] > 0.95
    # 360° scans keep the scale
    full = np.linspace(0, 360, 360, endpoint=False)
    np.testing.assert_allclose(fbp(radon(image, full).T, full)[inside], slice_[inside], atol=0.02)


def test_fbp_names_the_layout_when_the_sinogram_is_transposed():
    angles = np.linspace(0, 180, 30, endpoint=False)
    with pytest.raises(ValueError, match="n_angles, cols"):
        fbp(np.zeros((64, 30)), angles)
    with pytest.raises(ValueError, match="filter_name"):
        fbp(np.zeros((30, 64)), angles, filter_name="gauss")


def test_read_data_exchange_converts_radians_and_names_missing_datasets(tmp_path):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["/exchange/data"] = np.ones((3, 2, 8))
        f["/exchange/data_white"] = np.ones((2, 2, 8))
        f["/exchange/data_dark"] = np.zeros((2, 2, 8))
        f["/exchange/theta"] = np.array([0.0, np.pi / 2, np.pi])
        f["/exchange/theta"].attrs["units"] = "rad"
    data = read_data_exchange(path)
    np.testing.assert_allclose(data["angles_deg"], [0, 90, 180])
    assert data["projections"].shape == (3, 2, 8) and data["flats"].dtype == np.float32
    with h5py.File(path, "a") as f:
        del f["/exchange/data_dark"]
    with pytest.raises(KeyError, match="/exchange/data_dark"):
        read_data_exchange(path)


needs_tooth = pytest.mark.skipif(not TOOTH.is_file(), reason=f"real tooth scan not found at {TOOTH} "
                                 "(../shared/data absent)")


@pytest.fixture(scope="module")
def tooth() -> dict:
    data = read_data_exchange(TOOTH)
    one = (slice(None), slice(1, 2))
    data["sinogram"] = remove_rings(flat_dark_correct(data["projections"][one], data["flats"][one],
                                                      data["darks"][one])[:, 0])
    return data


@needs_tooth
def test_tooth_file_layout(tooth):
    assert tooth["projections"].shape == (181, 2, 640)
    assert tooth["flats"].shape == tooth["darks"].shape == (10, 2, 640)
    assert tooth["angles_deg"][0] == 0 and tooth["angles_deg"][-1] == pytest.approx(179.0, abs=0.01)


@needs_tooth
def test_tooth_centre_is_found_and_gives_the_sharpest_slice(tooth):
    angles = tooth["angles_deg"]
    centre = find_rotation_center(tooth["sinogram"], angles)
    assert centre == pytest.approx(TOOTH_CENTRE, abs=1.0)
    slices = {dc: fbp(tooth["sinogram"], angles, centre + dc) for dc in (-5, 0, 5)}
    yy, xx = np.ogrid[:640, :640]
    region = (yy - 320) ** 2 + (xx - 320) ** 2 <= 270 ** 2
    value_range = tuple(np.percentile(slices[0][region], [0.1, 99.9]))
    entropy = {dc: _entropy(s, region, value_range) for dc, s in slices.items()}
    assert entropy[0] < min(entropy[-5], entropy[5]) - 0.05                 # sharper histogram
    mask = segment_particles(slices[0])
    contrast = {dc: cnr(s, mask, ~mask & region) for dc, s in slices.items()}
    assert contrast[0] > max(contrast[-5], contrast[5])                    # and more tooth/air contrast


@needs_tooth
def test_tooth_volume_and_sparse_angle_pair(tooth):
    volume, centre = reconstruct(tooth["projections"], tooth["flats"], tooth["darks"], tooth["angles_deg"],
                                 center=TOOTH_CENTRE)
    assert volume.shape == (2, 640, 640) and centre == TOOTH_CENTRE
    lq, hq = sparse_angle_pair(tooth["projections"], tooth["flats"], tooth["darks"], tooth["angles_deg"], step=4,
                               row=1, center=TOOTH_CENTRE)
    np.testing.assert_allclose(hq, volume[1], atol=1e-5)
    mask = segment_particles(hq)
    fov = np.hypot(*np.ogrid[-320:320, -320:320]) < 290
    assert cnr(lq, mask, ~mask & fov) < 0.8 * cnr(hq, mask, ~mask & fov)    # streaks: a real low-quality scan


@needs_tooth
def test_binned_sparse_angle_pair_is_half_the_grid_in_the_hq_units(tooth):
    lq, hq = sparse_angle_pair(tooth["projections"], tooth["flats"], tooth["darks"], tooth["angles_deg"], step=4,
                               row=1, center=TOOTH_CENTRE, bin_factor=2)
    assert lq.shape == (320, 320) and hq.shape == (640, 640)
    binned_hq = hq.reshape(320, 2, 320, 2).mean(axis=(1, 3))
    # same place (the axis maps onto the binned detector) and same units (attenuation per HQ pixel)
    assert np.corrcoef(lq.ravel(), binned_hq.ravel())[0, 1] > 0.8
    inside = segment_particles(binned_hq)
    assert np.median(lq[inside]) == pytest.approx(np.median(binned_hq[inside]), rel=0.1)
    with pytest.raises(ValueError, match="bin_factor"):
        sparse_angle_pair(tooth["projections"], tooth["flats"], tooth["darks"], tooth["angles_deg"], bin_factor=0)
