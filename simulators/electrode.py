"""Hidden truth of the in-situ tomography experiment (paper 001): an electrode that evolves while it cycles.

An :class:`ElectrodeCell` is a slab of electrode defined in physical units (µm): active particles (ellipsoids,
equivalent radius 0.4-1.2 µm, 35-45 % of the slab volume at ``soc = 0``) in a matrix of carbon-binder domain
(blobby, low attenuation, about a third of the pore space) and electrolyte-filled pores. It can be rasterised at
any voxel size and around any centre, so the same cell can be imaged at the HQ (50 nm) and the LQ (100 nm) voxel
sizes of the paper.

State of charge ``soc`` in [0, 1] changes the microstructure deterministically:

* **swelling**: every particle's semi-axes scale by ``1 + SWELLING * soc`` (7 % at full charge);
* **dense phase**: a shell of a denser, more attenuating phase grows inwards from each particle surface, thickness
  ``soc * DENSE_SHELL_MAX_UM * f`` (``f`` per particle in 0.7-1.3);
* **cracks**: about half of the particles larger than 0.6 µm crack once ``soc`` passes their onset (0.5-0.7): a
  planar gap, electrolyte-filled, that widens linearly to 0.12-0.2 µm at ``soc = 1``.

Coordinates: ``x`` and ``y`` span ``[0, size_um]`` (lateral), ``z`` spans ``[0, depth_um]`` (the detector-row
direction, parallel to the rotation axis). Particles fill a box ``MARGIN_UM`` larger on every side, so a raster
around any centre within that margin shows a complete electrode. Voxel ``(r, i, j)`` of a raster of shape
``(n_rows, ny, nx)`` has its centre at ``z = depth_um / 2 + (r - (n_rows - 1) / 2) * v``,
``y = cy + (i - (ny - 1) / 2) * v``, ``x = cx + (j - (nx - 1) / 2) * v``: rasters at voxel sizes ``v`` and
``2 v`` with the same centre nest exactly (each coarse voxel is the union of 2 x 2 x 2 fine ones).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

#: Phase labels of :meth:`ElectrodeCell.rasterize`.
PORE, BINDER, ACTIVE, CRACK, DENSE = 0, 1, 2, 3, 4
LABEL_NAMES = {PORE: "pore", BINDER: "binder", ACTIVE: "active particle", CRACK: "crack", DENSE: "dense phase"}
#: Linear attenuation per phase (1/µm), indexed by label. Chosen so that 6-12 µm of electrode transmit 30-80 %
#: (electrolyte-filled pores and cracks, carbon-binder, active particle, denser lithiated phase).
ATTENUATION_PER_UM = np.array([0.018, 0.036, 0.09, 0.018, 0.144], dtype=np.float32)
#: Attenuation of air (outside the sample).
AIR_ATTENUATION_PER_UM = 0.0
#: Relative growth of the particles' semi-axes at ``soc = 1``.
SWELLING = 0.07
#: Dense-shell thickness (µm) at ``soc = 1`` for a particle with shell factor 1.
DENSE_SHELL_MAX_UM = 0.15
#: Extra extent (µm) on every side of the cell that is filled with particles as well.
MARGIN_UM = 1.5
#: Fraction of the pore space (non-particle volume) that the carbon-binder domain fills.
BINDER_PORE_FRACTION = 0.33
#: Equivalent-radius range of the active particles (µm) and the range of their target volume fraction.
RADIUS_RANGE_UM = (0.4, 1.2)
ACTIVE_FRACTION_RANGE = (0.37, 0.43)

_N_BINDER_MODES = 32
_BINDER_WAVELENGTH_UM = (0.9, 2.2)


@dataclass(frozen=True)
class _Particles:
    """Particle geometry at ``soc = 0``; arrays over particles, vectors in (z, y, x) order."""

    centers: np.ndarray      # (n, 3) µm
    rotations: np.ndarray    # (n, 3, 3): columns are the ellipsoid's principal axes
    semi_axes: np.ndarray    # (n, 3) µm
    shell_factor: np.ndarray  # (n,)
    cracked: np.ndarray      # (n,) bool
    crack_normal: np.ndarray  # (n, 3) unit vectors
    crack_offset: np.ndarray  # (n,) µm, signed distance of the crack plane from the centre
    crack_onset: np.ndarray  # (n,) soc at which the crack opens
    crack_width_max: np.ndarray  # (n,) µm at soc = 1


def _box_fraction(signed_distance: np.ndarray, voxel: float) -> np.ndarray:
    """Fraction of a voxel behind a planar interface at ``signed_distance`` (negative inside)."""
    return np.clip(0.5 - signed_distance / voxel, 0.0, 1.0)


def _slab_fraction(distance: np.ndarray, width: float, voxel: float) -> np.ndarray:
    """Fraction of a voxel (box filter of width ``voxel``) inside a slab of ``width`` at ``distance`` from its
    mid-plane."""
    lo = np.maximum(distance - voxel / 2, -width / 2)
    hi = np.minimum(distance + voxel / 2, width / 2)
    return np.clip((hi - lo) / voxel, 0.0, 1.0)


class ElectrodeCell:
    """An electrode (active particles in a binder/pore matrix) defined in physical units (µm), so it can be
    rasterised at any voxel size; evolves with state of charge (``soc`` in [0, 1]).

    Parameters
    ----------
    seed : int
        Fixes the microstructure: the same seed gives the same cell at every ``soc``.
    size_um : float
        Lateral extent in x and y (default 12.8 µm: the LQ field of view, 128 px x 100 nm).
    depth_um : float
        Extent along z, the detector-row direction (default 1.6 µm: 16 LQ rows x 100 nm).
    """

    def __init__(self, seed: int = 0, size_um: float = 12.8, depth_um: float = 1.6) -> None:
        if size_um <= 0 or depth_um <= 0:
            raise ValueError(f"size_um and depth_um must be positive, got {size_um}, {depth_um}")
        self.seed = int(seed)
        self.size_um = float(size_um)
        self.depth_um = float(depth_um)
        rng = np.random.default_rng([self.seed, 1001])
        self.target_active_fraction = float(rng.uniform(*ACTIVE_FRACTION_RANGE))
        self.particles = self._place_particles(rng)
        self._binder_k, self._binder_phase = self._binder_modes(rng)

    def __repr__(self) -> str:
        return (f"ElectrodeCell(seed={self.seed}, size_um={self.size_um}, depth_um={self.depth_um}, "
                f"n_particles={len(self.particles.centers)})")

    # -- construction ---------------------------------------------------------------------------------------------
    def _place_particles(self, rng: np.random.Generator) -> _Particles:
        """Random sequential addition (radii uniform in :data:`RADIUS_RANGE_UM`, overlaps up to 10 % of the radii)
        until the particles fill :attr:`target_active_fraction` of the cell, measured on a 0.1 µm grid."""
        lo = np.array([-MARGIN_UM, -MARGIN_UM, -MARGIN_UM])
        hi = np.array([self.depth_um, self.size_um, self.size_um]) + MARGIN_UM
        grid_v = 0.1
        shape = tuple(max(1, int(round(e / grid_v))) for e in (self.depth_um, self.size_um, self.size_um))
        axes = [(np.arange(n) + 0.5) * (e / n) for n, e in zip(shape, (self.depth_um, self.size_um, self.size_um))]
        occupied = np.zeros(shape, dtype=bool)
        n_needed = self.target_active_fraction * occupied.size
        n_occupied = 0
        centers, rots, semis = np.zeros((4096, 3)), np.zeros((4096, 3, 3)), np.zeros((4096, 3))
        radii = np.zeros(4096)
        n = 0
        for _ in range(50000):
            if n_occupied >= n_needed or n == len(radii):
                break
            r = float(rng.uniform(*RADIUS_RANGE_UM))
            c = rng.uniform(lo, hi)
            if n and np.any(np.sum((centers[:n] - c) ** 2, axis=1) < (0.9 * (radii[:n] + r)) ** 2):
                continue
            aspect = rng.uniform(0.85, 1.15, 3)
            semi = r * aspect / np.prod(aspect) ** (1 / 3)
            q, rr = np.linalg.qr(rng.normal(size=(3, 3)))
            rot = q * np.sign(np.diag(rr))
            centers[n], rots[n], semis[n], radii[n] = c, rot, semi, r
            n += 1
            box = self._local_box(axes, c, semi.max())
            if box is not None:
                inside = self._signed_distance(box[1], c, rot, semi) < 0
                n_occupied += int(np.count_nonzero(inside & ~occupied[box[0]]))
                occupied[box[0]] |= inside
        centers, rots, semis, radii = centers[:n], rots[:n], semis[:n], radii[:n]
        radii_a = radii
        cracked = (radii_a >= 0.6) & (rng.random(n) < 0.55)
        normals = rng.normal(size=(n, 3))
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        return _Particles(
            centers=centers, rotations=rots, semi_axes=semis,
            shell_factor=rng.uniform(0.7, 1.3, n), cracked=cracked, crack_normal=normals,
            crack_offset=rng.uniform(-0.3, 0.3, n) * radii_a, crack_onset=rng.uniform(0.5, 0.7, n),
            crack_width_max=rng.uniform(0.12, 0.2, n))

    @staticmethod
    def _binder_modes(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Wave vectors (n_modes x 3, rad/µm, z y x) and phases of the random Fourier field of the binder."""
        direction = rng.normal(size=(_N_BINDER_MODES, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        wavelength = rng.uniform(*_BINDER_WAVELENGTH_UM, _N_BINDER_MODES)
        return direction * (2 * np.pi / wavelength)[:, None], rng.uniform(0, 2 * np.pi, _N_BINDER_MODES)

    # -- geometry helpers ------------------------------------------------------------------------------------------
    @staticmethod
    def _local_box(axes: list[np.ndarray], center: np.ndarray, extent: float):
        """Index slices of the grid points within ``extent`` of ``center`` and their broadcastable coordinates."""
        slices, coords = [], []
        for dim, ax in enumerate(axes):
            i0 = int(np.searchsorted(ax, center[dim] - extent))
            i1 = int(np.searchsorted(ax, center[dim] + extent, side="right"))
            if i1 <= i0:
                return None
            slices.append(slice(i0, i1))
            coords.append(ax[i0:i1])
        z, y, x = np.meshgrid(*coords, indexing="ij", sparse=True)
        return tuple(slices), (z, y, x)

    @staticmethod
    def _signed_distance(zyx, center: np.ndarray, rot: np.ndarray, semi: np.ndarray) -> np.ndarray:
        """First-order signed distance (µm, negative inside) to an ellipsoid surface: ``(q - 1) / |grad q|``."""
        d = [zyx[k] - center[k] for k in range(3)]
        u = [d[0] * rot[0, a] + d[1] * rot[1, a] + d[2] * rot[2, a] for a in range(3)]
        q = np.sqrt(sum((u[a] / semi[a]) ** 2 for a in range(3)))
        g = np.sqrt(sum((u[a] / semi[a] ** 2) ** 2 for a in range(3)))
        with np.errstate(divide="ignore", invalid="ignore"):
            sd = (q - 1.0) * q / g
        return np.where(g > 1e-12, sd, -semi.min())

    def _grid_axes(self, voxel_um: float, center_um, shape) -> list[np.ndarray]:
        cx, cy = (self.size_um / 2, self.size_um / 2) if center_um is None else (float(center_um[0]),
                                                                                 float(center_um[1]))
        mids = (self.depth_um / 2, cy, cx)
        return [m + (np.arange(n) - (n - 1) / 2) * voxel_um for m, n in zip(mids, shape)]

    def binder_field(self, zyx) -> np.ndarray:
        """Unit-variance random Fourier field (broadcast over the (z, y, x) coordinate arrays, µm) whose upper
        :data:`BINDER_PORE_FRACTION` tail is the carbon-binder domain."""
        ez = np.exp(1j * (np.asarray(zyx[0])[..., None] * self._binder_k[:, 0] + self._binder_phase))
        ey = np.exp(1j * np.asarray(zyx[1])[..., None] * self._binder_k[:, 1])
        ex = np.exp(1j * np.asarray(zyx[2])[..., None] * self._binder_k[:, 2])
        return np.sqrt(2.0 / _N_BINDER_MODES) * np.real(ez * ey * ex).sum(axis=-1)

    # -- rasterisation --------------------------------------------------------------------------------------------
    def phase_fractions(self, soc: float, voxel_nm: float, *, center_um=None,
                        shape: tuple[int, int, int] = (16, 128, 128)) -> np.ndarray:
        """Volume fraction of each phase in each voxel (anti-aliased partial volumes).

        Parameters
        ----------
        soc : float
            State of charge in [0, 1].
        voxel_nm : float
            Voxel edge (nm).
        center_um : (float, float), optional
            ``(x, y)`` of the raster centre (µm); default the cell centre. Rows are always centred on the cell's
            mid-depth.
        shape : (int, int, int)
            ``(n_rows, ny, nx)``.

        Returns
        -------
        ndarray, float32, ``5 x rows x y x x``
            Fractions of pore, binder, active, crack, dense (label order); they sum to 1 in every voxel.
        """
        soc = float(soc)
        if not 0.0 <= soc <= 1.0:
            raise ValueError(f"soc must be in [0, 1], got {soc}")
        if voxel_nm <= 0 or len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"need voxel_nm > 0 and a 3-d shape, got {voxel_nm}, {shape}")
        v = voxel_nm / 1000.0
        axes = self._grid_axes(v, center_um, shape)
        dist = np.full(shape, np.inf)
        thick = np.zeros(shape)
        crack = np.zeros(shape)
        p = self.particles
        swell = 1.0 + SWELLING * soc
        for k in range(len(p.centers)):
            semi = p.semi_axes[k] * swell
            box = self._local_box(axes, p.centers[k], semi.max() + v)
            if box is None:
                continue
            sl, zyx = box
            sd = self._signed_distance(zyx, p.centers[k], p.rotations[k], semi)
            t = min(soc * DENSE_SHELL_MAX_UM * p.shell_factor[k], 0.8 * semi.min())
            closer = sd < dist[sl]
            dist[sl] = np.where(closer, sd, dist[sl])
            thick[sl] = np.where(closer, t, thick[sl])
            if p.cracked[k] and soc > p.crack_onset[k]:
                width = p.crack_width_max[k] * (soc - p.crack_onset[k]) / (1.0 - p.crack_onset[k])
                n = p.crack_normal[k]
                plane = np.abs(sum((zyx[a] - p.centers[k][a]) * n[a] for a in range(3)) - p.crack_offset[k])
                crack[sl] = np.maximum(crack[sl], _slab_fraction(plane, width, v) * _box_fraction(sd, v))
        particle = _box_fraction(dist, v)
        core = _box_fraction(dist + thick, v)
        crack = np.minimum(crack, particle)
        with np.errstate(divide="ignore", invalid="ignore"):
            keep = np.where(particle > 0, (particle - crack) / particle, 0.0)
        zyx = np.meshgrid(*axes, indexing="ij", sparse=True)
        threshold = special.ndtri(1.0 - BINDER_PORE_FRACTION)
        slope = np.sqrt(np.mean(np.sum(self._binder_k ** 2, axis=1))) * v  # field change across one voxel
        binder_share = np.clip(0.5 + (self.binder_field(zyx) - threshold) / slope, 0.0, 1.0)
        matrix = 1.0 - particle
        fractions = np.stack([matrix * (1 - binder_share), matrix * binder_share, core * keep, crack,
                              (particle - core) * keep])
        return fractions.astype(np.float32)

    def rasterize(self, soc: float, voxel_nm: float, *, center_um=None,
                  shape: tuple[int, int, int] = (16, 128, 128)) -> tuple[np.ndarray, np.ndarray]:
        """Attenuation and phase labels of the cell at ``soc`` on a voxel grid.

        Parameters
        ----------
        soc : float
            State of charge in [0, 1].
        voxel_nm : float
            Voxel edge (nm): 50 for HQ, 100 for LQ.
        center_um : (float, float), optional
            ``(x, y)`` of the raster centre (µm); default the cell centre ``(size_um / 2, size_um / 2)``.
        shape : (int, int, int)
            ``(n_rows, ny, nx)``; rows centred on the cell's mid-depth.

        Returns
        -------
        attenuation : ndarray, float32, ``rows x y x x``
            Linear attenuation (1/µm), partial-volume mixed at phase boundaries (anti-aliased).
        labels : ndarray, uint8, ``rows x y x x``
            Majority phase per voxel: 0 pore, 1 binder, 2 active particle, 3 crack, 4 dense phase.
        """
        fractions = self.phase_fractions(soc, voxel_nm, center_um=center_um, shape=shape)
        attenuation = np.tensordot(ATTENUATION_PER_UM, fractions, axes=1).astype(np.float32)
        return attenuation, np.argmax(fractions, axis=0).astype(np.uint8)
