"""The virtual nano-tomography beamline: the evolving electrode, HQ/LQ geometry, projections, faults."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.transform import iradon, radon

from simulators.faults import LabFault
from simulators.tomography import (
    ACTIVE,
    BINDER,
    CRACK,
    DARK_LEVEL,
    DENSE,
    HQ,
    LQ,
    PORE,
    QUALITIES,
    AcquisitionQuality,
    BeamLoss,
    DetectorFault,
    ElectrodeCell,
    column_gains,
    dark_frame,
    flat_frame,
    hq_region_in_lq,
    line_integrals,
    pillar_fraction,
    pillar_mask,
    projection_at,
    shift_columns,
    simulate_scan,
)


@pytest.fixture(scope="module")
def cell() -> ElectrodeCell:
    return ElectrodeCell(seed=0)


@pytest.fixture(scope="module")
def lq_by_soc(cell):
    return {soc: cell.rasterize(soc, LQ.voxel_nm, shape=LQ.shape) for soc in (0.0, 0.5, 1.0)}


@pytest.fixture(scope="module")
def scans(cell):
    return {q.name: simulate_scan(cell, 0.5, q, seed=1) for q in (HQ, LQ)}


def _corrected_optical_depth(scan) -> np.ndarray:
    """``n_angles x rows x cols`` -log transmission after flat/dark correction and shifting the axis back."""
    dark = scan.darks.mean(0)
    transmission = (scan.projections - dark) / (scan.flats.mean(0) - dark)
    return shift_columns(-np.log(np.clip(transmission, 1e-3, None)), -scan.axis_offset_px)


def test_qualities_follow_paper_001():
    assert QUALITIES == {"hq": HQ, "lq": LQ}
    assert (HQ.voxel_nm, LQ.voxel_nm) == (50.0, 100.0) and HQ.fov_px == LQ.fov_px == 128
    assert HQ.shape == LQ.shape == (16, 128, 128) and LQ.dose < HQ.dose
    lq_volume = np.prod(LQ.shape) * LQ.voxel_um ** 3
    assert lq_volume / (np.prod(HQ.shape) * HQ.voxel_um ** 3) == pytest.approx(8.0)


def test_hq_region_in_lq_nests():
    assert hq_region_in_lq() == (slice(4, 12), slice(32, 96), slice(32, 96))
    with pytest.raises(ValueError, match="nest"):
        hq_region_in_lq(AcquisitionQuality("odd", 30.0, 128, 16, 1.0), LQ)


def test_cell_is_deterministic_for_a_seed():
    a = ElectrodeCell(seed=0, size_um=4.0).rasterize(0.7, LQ.voxel_nm, shape=(4, 40, 40))
    b = ElectrodeCell(seed=0, size_um=4.0).rasterize(0.7, LQ.voxel_nm, shape=(4, 40, 40))
    c = ElectrodeCell(seed=1, size_um=4.0).rasterize(0.7, LQ.voxel_nm, shape=(4, 40, 40))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_phase_fractions_in_documented_ranges(cell):
    fractions = cell.phase_fractions(0.0, LQ.voxel_nm, shape=LQ.shape)
    assert np.allclose(fractions.sum(0), 1.0, atol=1e-5) and fractions.min() >= 0
    active = fractions[ACTIVE].mean()
    assert 0.35 <= active <= 0.45
    assert fractions[CRACK].max() == 0 and fractions[DENSE].max() == 0
    assert 0.2 <= fractions[BINDER].mean() / (1 - active) <= 0.45
    partial = (fractions.max(0) < 0.99).mean()  # anti-aliased boundaries, not pixel-aligned
    assert 0.05 < partial < 0.6


def test_particles_swell_crack_and_grow_a_dense_phase(lq_by_soc):
    counts = {soc: np.bincount(labels.ravel(), minlength=5) for soc, (_, labels) in lq_by_soc.items()}
    particle = {soc: c[[ACTIVE, CRACK, DENSE]].sum() for soc, c in counts.items()}
    assert particle[0.0] < particle[0.5] < particle[1.0]
    assert particle[1.0] / particle[0.0] > 1.1  # 7 % per axis -> ~22 % by volume, less where particles merge
    assert counts[0.0][CRACK] == 0 and counts[0.5][CRACK] == 0 and counts[1.0][CRACK] > 0
    assert counts[0.0][DENSE] == 0 < counts[0.5][DENSE] < counts[1.0][DENSE]
    attenuation = {soc: att.mean() for soc, (att, _) in lq_by_soc.items()}
    assert attenuation[0.0] < attenuation[0.5] < attenuation[1.0]


def test_hq_and_lq_rasters_agree_over_the_hq_region(cell):
    region = hq_region_in_lq()
    for soc in (0.0, 1.0):
        lq = cell.phase_fractions(soc, LQ.voxel_nm, shape=LQ.shape)[:, region[0], region[1], region[2]]
        hq = cell.phase_fractions(soc, HQ.voxel_nm, shape=HQ.shape)
        for phases in ([ACTIVE, CRACK, DENSE], [BINDER], [PORE]):
            assert lq[phases].sum(0).mean() == pytest.approx(hq[phases].sum(0).mean(), abs=0.02)
        # each LQ voxel is the union of 2 x 2 x 2 HQ voxels
        pooled = hq[[ACTIVE, CRACK, DENSE]].sum(0).reshape(8, 2, 64, 2, 64, 2).mean(axis=(1, 3, 5))
        assert np.corrcoef(pooled.ravel(), lq[[ACTIVE, CRACK, DENSE]].sum(0).ravel())[0, 1] > 0.95


def test_projector_matches_skimage_radon(scans):
    truth = scans["hq"].truth
    angles = np.arange(0.0, 180.0, 7.5)
    ours = line_integrals(truth, angles, 1.0)[:, 3, :].T
    assert np.allclose(ours, radon(truth[3], angles, circle=True), atol=1e-3)


def test_scan_shapes_counts_and_transmission(scans):
    for q in (HQ, LQ):
        scan = scans[q.name]
        assert scan.projections.shape == (180, q.n_rows, q.fov_px) and scan.projections.dtype == np.float32
        assert scan.flats.shape == (10, q.n_rows, q.fov_px) and scan.darks.shape == (10, q.n_rows, q.fov_px)
        assert scan.truth.shape == scan.labels.shape == q.shape and scan.labels.dtype == np.uint8
        assert np.allclose(scan.angles_deg, np.arange(180.0))
        for frames in (scan.projections, scan.flats, scan.darks):
            # dark level + flat dose, with column gains and 6 sigma of photon noise
            assert frames.min() > 0 and frames.max() < DARK_LEVEL + 1.1 * q.dose + 6 * np.sqrt(q.dose)
        cylinder = pillar_fraction(q)
        assert np.all(scan.truth[:, cylinder == 0] == 0) and scan.truth[:, cylinder == 1].min() >= 0.018
        transmission = np.exp(-line_integrals(scan.truth, scan.angles_deg, q.voxel_um))
        assert 0.25 < transmission.min() < 0.8
    # the low-dose LQ scan is noisier: photon noise ~ 1 / sqrt(dose)
    rel_std = {name: (s.flats.std(0) / (s.flats.mean(0) - s.darks.mean(0))).mean() for name, s in scans.items()}
    assert rel_std["lq"] > 3 * rel_std["hq"]
    assert rel_std["hq"] == pytest.approx(1 / np.sqrt(HQ.dose), rel=0.2)


def test_scan_is_deterministic(cell):
    a = simulate_scan(cell, 0.2, LQ, n_angles=8, seed=4)
    b = simulate_scan(cell, 0.2, LQ, n_angles=8, seed=4)
    c = simulate_scan(cell, 0.2, LQ, n_angles=8, seed=5)
    assert np.array_equal(a.projections, b.projections) and np.array_equal(a.flats, b.flats)
    assert not np.array_equal(a.projections, c.projections) and np.array_equal(a.truth, c.truth)


def test_filtered_backprojection_recovers_the_truth(scans):
    # LQ: 2x voxel, low dose, blurrier optics; its photon noise is smoothed away (sigma 1 px) before comparing
    for name, min_r, smooth_px in (("hq", 0.9, 0.0), ("lq", 0.7, 1.0)):
        scan = scans[name]
        optical_depth = _corrected_optical_depth(scan)
        inside = pillar_mask(scan.quality)
        for row in (2, 9):
            recon = iradon(optical_depth[:, row, :].T, scan.angles_deg, circle=True, filter_name="ramp")
            recon = ndi.gaussian_filter(recon, smooth_px) / scan.quality.voxel_um if smooth_px else \
                recon / scan.quality.voxel_um
            assert np.corrcoef(recon[inside], scan.truth[row][inside])[0, 1] > min_r
            assert recon[inside].mean() == pytest.approx(scan.truth[row][inside].mean(), rel=0.1)


def test_axis_offset_shows_in_a_360_degree_scan(cell):
    scan = simulate_scan(cell, 0.0, HQ, n_angles=72, arc_deg=360.0, axis_offset_px=3.0, ring_strength=0.0)
    optical_depth = -np.log((scan.projections - scan.darks.mean(0)) / (scan.flats.mean(0) - scan.darks.mean(0)))
    profile = optical_depth.sum(axis=1)  # angles x cols
    cols = np.arange(profile.shape[1])
    centre_of_mass = (profile * cols).sum(1) / profile.sum(1)
    assert centre_of_mass.mean() == pytest.approx(HQ.fov_px // 2 + 3.0, abs=0.3)
    # the projection at a + 180 deg is the mirror of the one at a about the axis column, not the detector centre
    first, opposite = profile[:36], profile[36:, ::-1]
    errors = {shift: np.abs(np.roll(opposite, shift, axis=1) - first)[:, 10:-10].mean() for shift in range(-9, 10)}
    # mirrored about the detector centre the two are 2 * offset + 1 columns apart (n even, axis at n // 2)
    assert min(errors, key=errors.get) == 2 * 3 + 1


def test_column_gains_make_rings(scans):
    gains = column_gains(HQ, 0, 4096, ring_strength=0.01)
    assert gains.mean() == pytest.approx(1.0, abs=0.001) and gains.std() == pytest.approx(0.01, rel=0.1)
    assert np.array_equal(gains, column_gains(HQ, 0, 4096, 0.01))
    assert np.array_equal(column_gains(LQ, 0, 64, 0.0), np.ones(64))
    scan = scans["hq"]
    assert np.allclose(scan.flats.mean((0, 1)) - 50.0, HQ.dose * scan.flat_gain, rtol=0.01)
    drift = scan.projection_gain / scan.flat_gain - 1.0  # what flat-field correction cannot remove
    assert 0.002 < drift.std() < 0.01


def test_frame_by_frame_acquisition_matches_the_scan(scans):
    scan = scans["hq"]
    rng = np.random.default_rng(0)
    frame = projection_at(scan.truth, 0.0, HQ, rng, axis_offset_px=scan.axis_offset_px,
                          column_gain=scan.projection_gain)
    assert frame.shape == (HQ.n_rows, HQ.fov_px) and frame.dtype == np.float32
    assert frame.mean() == pytest.approx(scan.projections[0].mean(), rel=0.01)
    flat = flat_frame(HQ, rng, 16, 128, scan.flat_gain)
    dark = dark_frame(HQ, rng, 16, 128)
    assert flat.mean() == pytest.approx(scan.flats.mean(), rel=0.01)
    assert dark.mean() == pytest.approx(scan.darks.mean(), rel=0.05) and dark.std() < 10


def test_faults_raise(cell, scans):
    assert issubclass(BeamLoss, LabFault) and issubclass(DetectorFault, LabFault)
    with pytest.raises(BeamLoss, match="after 5 of 20 projections"):
        simulate_scan(cell, 0.1, LQ, n_angles=20, fault="beam_loss", fault_at=5)
    with pytest.raises(DetectorFault, match="camera"):
        simulate_scan(cell, 0.1, LQ, n_angles=4, fault="detector_fault")
    rng = np.random.default_rng(0)
    with pytest.raises(BeamLoss, match="beam at 0.000"):
        projection_at(scans["lq"].truth, 10.0, LQ, rng, beam=0.0)
    with pytest.raises(BeamLoss):
        flat_frame(LQ, rng, 16, 128, fault="beam_loss")
    with pytest.raises(DetectorFault):
        dark_frame(LQ, rng, 16, 128, fault="detector_fault")
    with pytest.raises(ValueError, match="unknown tomography fault"):
        simulate_scan(cell, 0.1, LQ, n_angles=4, fault="meteor")
    with pytest.raises(ValueError, match="soc"):
        cell.rasterize(1.5, 100.0)
