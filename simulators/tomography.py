"""Virtual beamline: in-situ parallel-beam X-ray nano-tomography of a cycling electrode (paper 001).

Acquisition model (simple and fast, on purpose):

* **Sample**: an :class:`~simulators.electrode.ElectrodeCell` rasterised at the quality's voxel size around
  ``center_um``, inside a cylinder (a "pillar") of radius ``fov_px / 2 - PILLAR_MARGIN_PX`` pixels about the
  rotation axis; outside it is air. So the sample stays in the field of view at every angle and the projections
  are never truncated (no interior-tomography artefacts); compare reconstructions inside :func:`pillar_mask`.
* **Geometry**: parallel beam, one detector row per reconstructed slice (row height = voxel size), detector width
  ``n_cols = fov_px``. The rotation axis passes through voxel ``(fov_px // 2, fov_px // 2)`` of each slice
  (``skimage.transform.radon``'s convention) and projects onto detector column ``n_cols // 2 + axis_offset_px``:
  every projection is shifted by ``axis_offset_px`` columns (linear interpolation, air shifted in). To
  reconstruct, shift back by ``-axis_offset_px`` and run ``skimage.transform.iradon(sinogram, angles_deg,
  circle=True)`` on each row's sinogram ``-log(I) [:, row, :].T``; the result is in the grid of :attr:`Scan.truth`
  with attenuation in 1/voxel units (divide by ``voxel_nm / 1000`` for 1/µm).
* **Counts**: ``Poisson(dose * beam * gain[col] * exp(-line_integral)) + dark`` with ``line_integral`` the sum of
  attenuation (1/µm) times voxel size (µm) along the ray, ``dark = DARK_LEVEL + N(0, READ_NOISE)``; flats the same
  with no sample, darks the dark level alone. Transmission along the longest chords is about 55-60 % (HQ,
  6 µm of electrode) and 30-40 % (LQ, 12 µm), lower at high ``soc`` (denser phase, swelling); median about 70 %
  (HQ) and 50 % (LQ).
* **Rings**: per-column gains ``1 + ring_strength * N(0, 1)`` (:func:`column_gains`). Flats record them; between
  the flats and the projections the gains drift by a further ``GAIN_DRIFT * ring_strength`` (relative), so the
  flat-field correction leaves ring artefacts, as at the beamline.

HQ / LQ geometry (paper 001: 50 nm and 100 nm voxels, LQ field of view 8x the HQ one): both scan the same cell
about the same centre. LQ: 128 px x 100 nm = 12.8 µm wide, 16 rows x 100 nm = 1.6 µm high. HQ: 128 px x 50 nm =
6.4 µm, 16 rows x 50 nm = 0.8 µm, i.e. the central half in x, y and rows. :func:`hq_region_in_lq` gives the LQ
voxels the HQ volume covers (rows 4:12, y 32:96, x 32:96); voxel grids nest exactly, each LQ voxel being the
union of 2 x 2 x 2 HQ voxels, so ``skimage.transform.resize(lq[hq_region_in_lq()], (16, 128, 128))``
(half-pixel aligned) puts the LQ volume on the HQ grid.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from simulators.electrode import (  # re-exported: the cell is part of this module's API
    ACTIVE,
    ATTENUATION_PER_UM,
    BINDER,
    CRACK,
    DENSE,
    LABEL_NAMES,
    PORE,
    ElectrodeCell,
)
from simulators.faults import LabFault
from simulators.projector import line_integrals, shift_columns

__all__ = [
    "ACTIVE", "ATTENUATION_PER_UM", "BINDER", "CRACK", "DENSE", "LABEL_NAMES", "PORE",
    "AcquisitionQuality", "BeamLoss", "DetectorFault", "ElectrodeCell", "HQ", "LQ", "QUALITIES", "Scan",
    "TOMO_FAULT_KINDS", "TOMO_FAULT_MESSAGES", "column_gains", "dark_frame", "flat_frame", "hq_region_in_lq",
    "line_integrals", "pillar_fraction", "pillar_mask", "projection_at", "raise_tomography_fault", "shift_columns",
    "simulate_scan",
]

#: Mean dark counts per pixel and the Gaussian read noise (counts).
DARK_LEVEL = 50.0
READ_NOISE = 5.0
#: Relative drift of the column gains between flats and projections, in units of ``ring_strength``.
GAIN_DRIFT = 0.5
#: Air gap (px) between the sample cylinder and the edge of the field of view (room for the axis offset).
PILLAR_MARGIN_PX = 4
#: Relative beam intensity below which the beam counts as lost.
BEAM_LOSS_THRESHOLD = 0.05


@dataclass(frozen=True)
class AcquisitionQuality:
    """One acquisition setting of the nano-tomography beamline.

    Attributes
    ----------
    name : str
        ``"hq"`` or ``"lq"``.
    voxel_nm : float
        Voxel edge (nm): HQ 50, LQ 100.
    fov_px : int
        Width of the reconstructed slice (px): 128 for both, so LQ covers 2x the width of HQ.
    n_rows : int
        Detector rows = reconstructed slices: 16 for both (LQ rows are 2x taller).
    dose : float
        Photons per pixel in the flat field: HQ 20000, LQ 300 (the fast in-situ scan). LQ's dose is calibrated on
        paper 001's CNR: its LQ slices have 0.9 against HQ's 2.4 (×2.7); at 300 photons the simulated cell's
        bicubic LQ has CNR 2.0-2.2 against HQ's 5.1-6.8 (×2.3-3.5). At 1500 it had 3.3-4.0, far cleaner than
        the paper's.
    detector_blur_px : float
        Gaussian sigma (detector pixels) of the scintillator/optics point-spread function: the large-field
        LQ optics blur more (1.0 px = 100 nm), HQ's fine optics barely (0.3 px).
    """

    name: str
    voxel_nm: float
    fov_px: int
    n_rows: int
    dose: float
    detector_blur_px: float = 0.0

    @property
    def voxel_um(self) -> float:
        return self.voxel_nm / 1000.0

    @property
    def shape(self) -> tuple[int, int, int]:
        """Reconstructed volume shape ``(n_rows, fov_px, fov_px)``."""
        return (self.n_rows, self.fov_px, self.fov_px)


HQ = AcquisitionQuality("hq", 50.0, 128, 16, 20000.0, detector_blur_px=0.3)
LQ = AcquisitionQuality("lq", 100.0, 128, 16, 300.0, detector_blur_px=1.0)
QUALITIES = {"hq": HQ, "lq": LQ}


class BeamLoss(LabFault):
    """The synchrotron beam was lost (dump or front-end shutter closed) during an acquisition."""


class DetectorFault(LabFault):
    """The tomography camera stopped delivering frames."""


TOMO_FAULT_KINDS: dict[str, type[LabFault]] = {"beam_loss": BeamLoss, "detector_fault": DetectorFault}
TOMO_FAULT_MESSAGES: dict[str, str] = {
    "beam_loss": ("X-ray beam lost; wait for the beam to be restored (check the machine status and the "
                  "front-end shutter), then retake the flats and restart the scan"),
    "detector_fault": ("tomography detector stopped delivering frames; check the camera's link, cooling and "
                       "trigger cabling, then restart the scan"),
}


def raise_tomography_fault(kind: str, detail: str = "") -> None:
    """Raise the fault of ``kind`` (a key of :data:`TOMO_FAULT_KINDS`) with its operator message.

    Raises
    ------
    BeamLoss, DetectorFault
        Always, for a known kind.
    ValueError
        For an unknown kind.
    """
    if kind not in TOMO_FAULT_KINDS:
        raise ValueError(f"unknown tomography fault {kind!r}; known kinds: {sorted(TOMO_FAULT_KINDS)}")
    context = f" ({detail})" if detail else ""
    raise TOMO_FAULT_KINDS[kind](f"{kind}{context}: {TOMO_FAULT_MESSAGES[kind]}")


def _check_beam(fault: str | None, beam: float, what: str) -> None:
    if fault is not None:
        raise_tomography_fault(fault, what)
    if beam < BEAM_LOSS_THRESHOLD:
        raise_tomography_fault("beam_loss", f"{what}: beam at {beam:.3f} of nominal")


def hq_region_in_lq(hq: AcquisitionQuality = HQ, lq: AcquisitionQuality = LQ) -> tuple[slice, slice, slice]:
    """The ``(rows, y, x)`` slices of the LQ volume that the HQ volume covers (same centre).

    For the defaults: HQ 128 px x 50 nm = 6.4 µm -> LQ px 32:96 in y and x; 16 rows x 50 nm = 0.8 µm -> LQ rows
    4:12.

    Raises
    ------
    ValueError
        If the HQ extent is not a whole number of LQ voxels centred in the LQ volume.
    """
    ratio = lq.voxel_nm / hq.voxel_nm
    out = []
    for n_hq, n_lq in ((hq.n_rows, lq.n_rows), (hq.fov_px, lq.fov_px), (hq.fov_px, lq.fov_px)):
        width = n_hq / ratio
        start = (n_lq - width) / 2
        if abs(width - round(width)) > 1e-9 or abs(start - round(start)) > 1e-9 or start < 0:
            raise ValueError(f"HQ extent of {n_hq} px does not nest in {n_lq} LQ px at ratio {ratio}")
        out.append(slice(int(round(start)), int(round(start + width))))
    return tuple(out)


def pillar_fraction(quality: AcquisitionQuality) -> np.ndarray:
    """``fov_px x fov_px`` float: fraction of each voxel inside the sample cylinder (radius
    ``fov_px / 2 - PILLAR_MARGIN_PX`` px about voxel ``(fov_px // 2, fov_px // 2)``, anti-aliased edge)."""
    n = quality.fov_px
    yy, xx = np.mgrid[:n, :n] - n // 2
    return np.clip(n / 2 - PILLAR_MARGIN_PX + 0.5 - np.hypot(yy, xx), 0.0, 1.0)


def pillar_mask(quality: AcquisitionQuality) -> np.ndarray:
    """``fov_px x fov_px`` bool: the voxels at least half inside the sample cylinder; outside it the scan sees
    air. Compare reconstructions with the truth inside this mask."""
    return pillar_fraction(quality) >= 0.5


def column_gains(quality: AcquisitionQuality, seed: int, n_cols: int, ring_strength: float = 0.01) -> np.ndarray:
    """Fixed per-column detector gains ``1 + ring_strength * N(0, 1)`` (clipped to +-4 sigma): the source of
    ring artefacts. Returns ``n_cols`` float64, deterministic for ``(quality.name, seed, n_cols)``."""
    if ring_strength < 0:
        raise ValueError(f"ring_strength must be >= 0, got {ring_strength}")
    rng = np.random.default_rng([int(seed), zlib.crc32(quality.name.encode()), int(n_cols), 17])
    return 1.0 + ring_strength * np.clip(rng.standard_normal(n_cols), -4.0, 4.0)


def _detector_readout(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    counts = rng.poisson(np.maximum(expected, 0.0)).astype(np.float64)
    counts += DARK_LEVEL + READ_NOISE * rng.standard_normal(counts.shape)
    return np.maximum(counts, 0.0).astype(np.float32)


def projection_at(volume: np.ndarray, angle_deg: float, quality: AcquisitionQuality, rng: np.random.Generator,
                  *, axis_offset_px: float = 3.0, column_gain: np.ndarray | None = None, beam: float = 1.0,
                  fault: str | None = None) -> np.ndarray:
    """One detector frame of ``volume`` at ``angle_deg``, so a detector device can acquire frame by frame.

    Parameters
    ----------
    volume : ndarray, ``rows x n x n``
        Attenuation (1/µm) on the quality's voxel grid (e.g. :attr:`Scan.truth`).
    angle_deg : float
        Rotation-stage angle.
    quality : AcquisitionQuality
        Sets the dose and the voxel size.
    rng : numpy.random.Generator
        Photon and read noise.
    axis_offset_px : float
        Where the rotation axis projects, in columns right of ``n // 2``.
    column_gain : ndarray, ``n``, optional
        Per-column gains (default 1).
    beam : float
        Beam intensity relative to nominal; below :data:`BEAM_LOSS_THRESHOLD` the beam is lost.
    fault : str, optional
        A key of :data:`TOMO_FAULT_KINDS` to raise instead of acquiring.

    Returns
    -------
    ndarray, float32, ``rows x n``: counts, including the dark level.

    Raises
    ------
    BeamLoss, DetectorFault
    """
    _check_beam(fault, beam, f"projection at {angle_deg:.2f} deg")
    optical_depth = shift_columns(line_integrals(volume, angle_deg, quality.voxel_um)[0], axis_offset_px)
    gain = np.ones(optical_depth.shape[-1]) if column_gain is None else np.asarray(column_gain)
    return _detector_readout(quality.dose * beam * gain * _blurred_transmission(optical_depth, quality), rng)


def _blurred_transmission(optical_depth: np.ndarray, quality: AcquisitionQuality) -> np.ndarray:
    """Transmission ``exp(-optical_depth)`` seen through the detector's point-spread function (last two axes)."""
    transmission = np.exp(-optical_depth)
    if quality.detector_blur_px <= 0:
        return transmission
    sigma = (0.0,) * (transmission.ndim - 2) + (quality.detector_blur_px,) * 2
    return ndimage.gaussian_filter(transmission, sigma, mode="nearest")


def flat_frame(quality: AcquisitionQuality, rng: np.random.Generator, n_rows: int, n_cols: int,
               column_gain: np.ndarray | None = None, *, beam: float = 1.0,
               fault: str | None = None) -> np.ndarray:
    """A flat field (sample out of the beam): ``n_rows x n_cols`` float32 counts. Raises like
    :func:`projection_at`."""
    _check_beam(fault, beam, "flat field")
    gain = np.ones(n_cols) if column_gain is None else np.asarray(column_gain)
    return _detector_readout(np.broadcast_to(quality.dose * beam * gain, (n_rows, n_cols)), rng)


def dark_frame(quality: AcquisitionQuality, rng: np.random.Generator, n_rows: int, n_cols: int, *,
               fault: str | None = None) -> np.ndarray:
    """A dark frame (shutter closed): ``n_rows x n_cols`` float32 counts, :data:`DARK_LEVEL` plus read noise.
    ``quality`` is accepted for symmetry (the dark does not depend on it)."""
    if fault is not None:
        raise_tomography_fault(fault, "dark field")
    return _detector_readout(np.zeros((n_rows, n_cols)), rng)


@dataclass
class Scan:
    """One simulated tomographic scan and its hidden truth.

    Attributes
    ----------
    projections : ndarray, float32, ``n_angles x n_rows x n_cols``
        Detector counts (Poisson at the quality's dose, dark level included), with ring artefacts and the
        rotation axis at column ``n_cols // 2 + axis_offset_px``.
    flats, darks : ndarray, float32, ``n_flats x n_rows x n_cols`` and ``n_darks x n_rows x n_cols``
    angles_deg : ndarray, ``n_angles``
    quality : AcquisitionQuality
    axis_offset_px : float
    truth : ndarray, float32, ``n_rows x fov_px x fov_px``
        Attenuation (1/µm) the scan images, noise-free, times :func:`pillar_fraction` (zero outside the sample
        cylinder); for evaluation only.
    labels : ndarray, uint8, same shape
        Phase labels (0 pore, 1 binder, 2 active, 3 crack, 4 dense); 0 outside the pillar too.
    soc : float
    center_um : (float, float)
        ``(x, y)`` of the scan centre in the cell.
    flat_gain, projection_gain : ndarray, ``n_cols``
        Column gains while the flats and while the projections were taken (their ratio makes the rings).
    """

    projections: np.ndarray
    flats: np.ndarray
    darks: np.ndarray
    angles_deg: np.ndarray
    quality: AcquisitionQuality
    axis_offset_px: float
    truth: np.ndarray
    labels: np.ndarray
    soc: float
    center_um: tuple[float, float] = (6.4, 6.4)
    flat_gain: np.ndarray = field(default_factory=lambda: np.ones(0))
    projection_gain: np.ndarray = field(default_factory=lambda: np.ones(0))


def simulate_scan(cell: ElectrodeCell, soc: float, quality: AcquisitionQuality, *, n_angles: int = 180,
                  arc_deg: float = 180.0, seed: int = 0, n_flats: int = 10, n_darks: int = 10,
                  axis_offset_px: float = 3.0, ring_strength: float = 0.01, center_um=None,
                  fault: str | None = None, fault_at: int = 0) -> Scan:
    """Scan ``cell`` at ``soc``: darks, flats, then ``n_angles`` projections over ``arc_deg``.

    Parameters
    ----------
    cell : ElectrodeCell
    soc : float
        State of charge in [0, 1] (the cell rests at open circuit during the scan).
    quality : AcquisitionQuality
        :data:`HQ` or :data:`LQ` (or any other).
    n_angles, arc_deg : int, float
        Angles ``arc_deg * k / n_angles``, ``k = 0 .. n_angles - 1``.
    seed : int
        Noise and detector gains; the microstructure is fixed by the cell.
    n_flats, n_darks : int
    axis_offset_px : float
        Rotation-axis offset (columns) from the detector centre ``n_cols // 2``.
    ring_strength : float
        Relative spread of the column gains (see :func:`column_gains`).
    center_um : (float, float), optional
        ``(x, y)`` of the scan centre in the cell (µm); default the cell centre.
    fault : str, optional
        A key of :data:`TOMO_FAULT_KINDS`: the scan fails at projection ``fault_at``.

    Returns
    -------
    Scan

    Raises
    ------
    BeamLoss, DetectorFault
        When ``fault`` is given.
    ValueError
        For a bad ``soc``, ``n_angles``, frame counts or fault kind.
    """
    if n_angles < 1 or n_flats < 1 or n_darks < 1:
        raise ValueError(f"need n_angles, n_flats, n_darks >= 1, got {n_angles}, {n_flats}, {n_darks}")
    if fault is not None and fault not in TOMO_FAULT_KINDS:
        raise ValueError(f"unknown tomography fault {fault!r}; known kinds: {sorted(TOMO_FAULT_KINDS)}")
    if center_um is None:
        center_um = (cell.size_um / 2, cell.size_um / 2)
    center_um = (float(center_um[0]), float(center_um[1]))
    attenuation, labels = cell.rasterize(soc, quality.voxel_nm, center_um=center_um, shape=quality.shape)
    truth = (attenuation * pillar_fraction(quality)).astype(np.float32)
    labels = np.where(pillar_mask(quality), labels, 0).astype(np.uint8)
    rows, n = quality.n_rows, quality.fov_px
    rng = np.random.default_rng([int(seed), zlib.crc32(quality.name.encode()), 3])
    flat_gain = column_gains(quality, seed, n, ring_strength)
    projection_gain = flat_gain * (1.0 + GAIN_DRIFT * ring_strength * rng.standard_normal(n))
    darks = np.stack([dark_frame(quality, rng, rows, n) for _ in range(n_darks)])
    flats = np.stack([flat_frame(quality, rng, rows, n, flat_gain) for _ in range(n_flats)])
    angles = arc_deg * np.arange(n_angles) / n_angles
    n_good = n_angles if fault is None else int(np.clip(fault_at, 0, n_angles))
    optical_depth = shift_columns(line_integrals(truth, angles[:n_good], quality.voxel_um), axis_offset_px)
    projections = _detector_readout(quality.dose * projection_gain * _blurred_transmission(optical_depth, quality),
                                    rng)
    if fault is not None:
        raise_tomography_fault(fault, f"{quality.name} scan at soc {soc:.2f}, after {n_good} of {n_angles} "
                                      f"projections")
    return Scan(projections=projections, flats=flats, darks=darks, angles_deg=angles, quality=quality,
                axis_offset_px=float(axis_offset_px), truth=truth, labels=labels, soc=float(soc),
                center_um=center_um, flat_gain=flat_gain, projection_gain=projection_gain)
