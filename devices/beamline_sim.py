"""The simulated backend of the tomography station: :class:`SimulatedBeamline`, shared by its devices.

The station's devices (``devices/beamline.py``) in ``mode="sim"`` are bound to one :class:`SimulatedBeamline`, the
hidden world of :mod:`simulators.tomography` seen as hardware, the way the reactor and the SEM share a
:class:`~devices.lab.SimulatedLab`. It holds:

* the **cell**: an :class:`~simulators.tomography.ElectrodeCell` whose state of charge follows the potentiostat
  (coulomb counting: ``dSOC/dt = C-rate / 3600`` per lab second while charging, clipped at 1), with a simple
  voltage model (:func:`open_circuit_voltage` plus the ``I R`` drop while charging, relaxing exponentially after
  the switch to open circuit);
* the **station state** the devices write: rotation angle, sample position (in or out of the beam), shutter;
* the **beam**: nominal, or lost for ``beam_outage_s`` lab seconds after a ``beam_loss`` fault, then restored by
  itself;
* the **lab clock**: lab seconds run ``time_compression`` times faster than wall seconds (600: a 10-min charging
  interval takes 1 s), or, with ``time_compression=None``, only advance when a device spends lab time (instant dry
  runs);
* the **frames**: :meth:`SimulatedBeamline.acquire_frame` returns a dark (shutter closed), a flat (sample out) or a
  projection of the cell at the current angle and state of charge; the rasterised volume is cached per
  (state of charge to 3 decimals, quality) so frames cost one forward projection each;
* the **faults** (:class:`BeamlineFaults`): ``beam_loss`` (the beam drops during a chosen projection) and
  ``detector_fault`` (the camera fails a chosen frame), raising the simulator's ``BeamLoss`` / ``DetectorFault``.
"""
from __future__ import annotations

import math
import tempfile
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from simulators.faults import LabFault
from simulators.tomography import (GAIN_DRIFT, TOMO_FAULT_KINDS, TOMO_FAULT_MESSAGES, AcquisitionQuality,
                                   ElectrodeCell, column_gains, dark_frame, flat_frame, pillar_mask, projection_at)

#: NXtomo ``image_key`` of each frame kind (0 projection, 1 flat field, 2 dark field).
IMAGE_KEYS = {"projection": 0, "flat": 1, "dark": 2}
#: Storage-ring current (mA) with the beam on.
NOMINAL_BEAM_CURRENT_MA = 200.0
#: A beam outage lasts at least this many wall seconds, however compressed the lab time (so a suspender sees it).
MIN_OUTAGE_WALL_S = 0.25
#: A frame spoilt by a beam loss fails no sooner than this many wall seconds after the loss, leaving a RunEngine
#: suspender time to take the frame over (see :meth:`SimulatedBeamline.acquire_frame`).
BEAM_LOSS_GRACE_S = 0.5
#: Cell model: ohmic + charge-transfer resistance (ohm) and relaxation time of the overpotential at open circuit (s).
CELL_RESISTANCE_OHM = 200.0
RELAXATION_TAU_S = 15.0
#: Beam half-width (mm) about the sample stage's "in" position: farther than this, the sample is out of the beam.
BEAM_HALF_WIDTH_MM = 0.05
#: Volumes kept in the rasterisation cache.
VOLUME_CACHE_SIZE = 4


def open_circuit_voltage(soc: float) -> float:
    """Open-circuit voltage (V) of the cell at state of charge ``soc`` in [0, 1]: 3.27 V empty, 4.38 V full,
    monotonic, steep at both ends (a layered-oxide-like curve)."""
    s = min(max(float(soc), 0.0), 1.0)
    return 3.45 + 0.75 * s + 0.04 * math.log((s + 0.01) / (1.01 - s))


class BeamlineFaults:
    """Faults of the beamline, armed ahead like :class:`simulators.faults.FaultInjector` (whose fault kinds are the
    lab's): each armed occurrence fails one chosen frame.

    Parameters
    ----------
    faults : mapping of str to int, optional
        Kind -> how many occurrences to arm (each at the next qualifying frame, ``skip=0``).

    Notes
    -----
    Kinds (:data:`simulators.tomography.TOMO_FAULT_KINDS`): ``"beam_loss"`` counts projection frames (shutter
    open, sample in): ``arm("beam_loss", skip=k)`` drops the beam during the projection that follows ``k`` good
    ones. ``"detector_fault"`` counts every frame: ``arm("detector_fault", skip=k)`` fails the frame after ``k``
    good ones.
    """

    def __init__(self, faults: Mapping[str, int] | None = None) -> None:
        self._lock = threading.Lock()
        self._countdowns: dict[str, deque[int]] = {kind: deque() for kind in TOMO_FAULT_KINDS}
        for kind, times in (faults or {}).items():
            self.arm(kind, times)

    def __repr__(self) -> str:
        with self._lock:
            armed = {kind: list(c) for kind, c in self._countdowns.items() if c}
        return f"BeamlineFaults({armed})"

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in TOMO_FAULT_KINDS:
            raise ValueError(f"unknown beamline fault kind {kind!r}; known kinds: {sorted(TOMO_FAULT_KINDS)}")

    def arm(self, kind: str, times: int = 1, *, skip: int = 0) -> None:
        """Fail ``times`` more occurrences of ``kind``, the first after ``skip`` good qualifying frames, the
        others each at the next qualifying frame after the previous one."""
        self._check_kind(kind)
        for label, n in (("times", times), ("skip", skip)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"{label} for fault {kind!r} must be a non-negative integer, got {n!r}")
        with self._lock:
            self._countdowns[kind].extend([skip] + [0] * (times - 1) if times else [])

    def pending(self, kind: str) -> int:
        """How many occurrences of ``kind`` are still armed."""
        self._check_kind(kind)
        with self._lock:
            return len(self._countdowns[kind])

    def due(self, kind: str) -> bool:
        """Count one qualifying frame of ``kind``; True (consuming one armed occurrence) if this frame fails."""
        self._check_kind(kind)
        with self._lock:
            countdown = self._countdowns[kind]
            if not countdown:
                return False
            if countdown[0] == 0:
                countdown.popleft()
                return True
            countdown[0] -= 1
            return False

    @staticmethod
    def error(kind: str, detail: str = "") -> LabFault:
        """The exception of ``kind`` (``BeamLoss`` or ``DetectorFault``) with its operator message."""
        context = f" ({detail})" if detail else ""
        return TOMO_FAULT_KINDS[kind](f"{kind}{context}: {TOMO_FAULT_MESSAGES[kind]}")

    def maybe_raise(self, kind: str, detail: str = "") -> None:
        """Raise the exception of ``kind`` if this qualifying frame is the armed one (see :meth:`due`)."""
        if self.due(kind):
            raise self.error(kind, detail)


@dataclass(frozen=True)
class Frame:
    """One acquired frame: ``data`` (``n_rows x n_cols`` float32 counts), its NXtomo ``image_key``, the rotation
    angle, the cell's state of charge and the lab time (s) at acquisition."""

    data: np.ndarray
    image_key: int
    angle_deg: float
    soc: float
    lab_time_s: float


class SimulatedBeamline:
    """The simulated backend shared by the station's devices (see the module notes).

    Parameters
    ----------
    output_dir : str or Path, optional
        Where the detector writes its HDF5 files (a fresh temporary folder if omitted).
    seed : int
        Seeds the cell (unless ``cell`` is given), the detector's column gains and the frame noise (frame ``k`` of
        the beamline uses ``SeedSequence([seed, k])``): a beamline replays identically.
    cell : ElectrodeCell, optional
        The sample (building one takes about a second; tests share one).
    soc : float
        Initial state of charge in [0, 1].
    capacity_mah : float
        Nominal cell capacity: the current at C-rate ``c`` is ``c * capacity_mah`` mA.
    time_compression : float or None
        Lab seconds per wall second (600: 1 lab minute per 0.1 s). ``None`` or ``inf``: instant; the lab clock
        then only advances when a device spends lab time (exposures, moves, potentiostat steps, outages).
    beam_outage_s : float
        Lab seconds the beam stays off after a ``beam_loss`` (never less than :data:`MIN_OUTAGE_WALL_S` wall).
    axis_offset_px, ring_strength : float
        Rotation-axis offset (detector columns) and column-gain spread, as in
        :func:`simulators.tomography.simulate_scan`.
    faults : mapping or BeamlineFaults, optional
        Faults to arm now (``{"detector_fault": 1}``); ``beamline.faults.arm(...)`` arms more later.
    """

    def __init__(self, output_dir: str | Path | None = None, *, seed: int = 0, cell: ElectrodeCell | None = None,
                 soc: float = 0.0, capacity_mah: float = 0.5, time_compression: float | None = 600.0,
                 beam_outage_s: float = 120.0, axis_offset_px: float = 3.0, ring_strength: float = 0.01,
                 faults: Mapping[str, int] | BeamlineFaults | None = None) -> None:
        if time_compression is not None and not time_compression > 0:
            raise ValueError(f"time_compression must be > 0 (lab seconds per wall second) or None for instant, "
                             f"got {time_compression!r}")
        if not 0.0 <= soc <= 1.0:
            raise ValueError(f"soc must be in [0, 1], got {soc!r}")
        if not capacity_mah > 0 or not beam_outage_s >= 0:
            raise ValueError(f"need capacity_mah > 0 and beam_outage_s >= 0, got {capacity_mah!r}, {beam_outage_s!r}")
        self.seed = int(seed)
        self.cell = cell if cell is not None else ElectrodeCell(seed=self.seed)
        self.faults = faults if isinstance(faults, BeamlineFaults) else BeamlineFaults(faults)
        # absolute: Resource documents name the frame files by it, and are read from any working directory
        self.output_dir = Path(output_dir if output_dir is not None
                               else tempfile.mkdtemp(prefix="morphloop-tomo-")).absolute()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.time_compression = time_compression
        self.capacity_mah = float(capacity_mah)
        self.beam_outage_s = float(beam_outage_s)
        self.axis_offset_px = float(axis_offset_px)
        self.ring_strength = float(ring_strength)
        self.setpoints: dict[str, dict[str, Any]] = {}
        # station state, written by the devices
        self.rotation_deg = 0.0
        self.sample_x_mm = 0.0
        self.beam_axis_x_mm = 0.0
        self.shutter_open = False
        self.beam_lost = False
        self.frames_acquired = 0
        self._lock = threading.RLock()
        self._t0 = time.monotonic()
        self._offset_s = 0.0
        self._listeners: list[Callable[[bool], None]] = []
        self._volumes: OrderedDict[tuple[float, str], np.ndarray] = OrderedDict()
        self._gains: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        # electrochemistry: soc at the start of the current mode, and the mode
        self.initial_soc = float(soc)
        self._soc0, self._mode, self._c_rate, self._since = float(soc), "ocv", 0.0, 0.0
        self._eta0 = 0.0
        #: ``(lab_s, wall_time, mode, c_rate)`` of every mode change (the first entry: the initial state).
        self.mode_log: list[tuple[float, float, str, float]] = [(0.0, time.time(), "ocv", 0.0)]

    def __repr__(self) -> str:
        return (f"SimulatedBeamline(output_dir={str(self.output_dir)!r}, seed={self.seed}, soc={self.soc():.3f}, "
                f"time_compression={self.time_compression})")

    # ------------------------------------------------------------------ lab clock
    @property
    def instant(self) -> bool:
        return self.time_compression is None or math.isinf(self.time_compression)

    def now(self) -> float:
        """Lab seconds since the beamline was made."""
        with self._lock:
            if self.instant:
                return self._offset_s
            return self._offset_s + (time.monotonic() - self._t0) * float(self.time_compression)

    def wall_seconds(self, lab_seconds: float) -> float:
        """Wall-clock seconds that ``lab_seconds`` take under the time compression (0 when instant)."""
        return 0.0 if self.instant else max(float(lab_seconds), 0.0) / float(self.time_compression)

    def elapse(self, lab_seconds: float, interrupt: threading.Event | None = None) -> bool:
        """Spend ``lab_seconds`` of lab time (sleeping the compressed wall time, or advancing the instant clock).

        Returns True if ``interrupt`` was set before the time was up (then only part of it was spent)."""
        if lab_seconds <= 0:
            return bool(interrupt is not None and interrupt.is_set())
        if self.instant:
            with self._lock:
                self._offset_s += float(lab_seconds)
            return bool(interrupt is not None and interrupt.is_set())
        wall = self.wall_seconds(lab_seconds)
        if interrupt is None:
            time.sleep(wall)
            return False
        return interrupt.wait(wall)

    def write_setpoint(self, device: str, name: str, value: Any) -> None:
        """The simulated hardware receiving one setpoint (the equivalent of a PV write)."""
        with self._lock:
            self.setpoints.setdefault(device, {})[name] = value

    # ------------------------------------------------------------------ electrochemistry
    def soc(self) -> float:
        """The cell's state of charge now."""
        with self._lock:
            return self._soc_at(self.now())

    def _soc_at(self, t: float) -> float:
        if self._mode != "cc_charge":
            return self._soc0
        return min(1.0, self._soc0 + self._c_rate * (t - self._since) / 3600.0)

    def set_cell_mode(self, mode: str, c_rate: float = 0.0) -> bool:
        """Switch the potentiostat's technique; returns False (and keeps the mode's clock) when ``(mode, c_rate)``
        is already running, so re-asserting a mode never restarts it."""
        if mode not in ("ocv", "cc_charge"):
            raise ValueError(f"unknown potentiostat mode {mode!r}; use 'ocv' or 'cc_charge'")
        c_rate = float(c_rate) if mode == "cc_charge" else 0.0
        with self._lock:
            if (mode, c_rate) == (self._mode, self._c_rate):
                return False
            t = self.now()
            state = self.cell_state()
            self._soc0 = self._soc_at(t)
            self._eta0 = state["voltage"] - open_circuit_voltage(self._soc0)  # relaxes at open circuit
            self._mode, self._c_rate, self._since = mode, c_rate, t
            self.mode_log.append((t, time.time(), mode, c_rate))
            return True

    def cell_state(self) -> dict[str, Any]:
        """Readbacks of the cell now: ``soc``, ``voltage`` (V), ``current_ma``, ``capacity_mah`` (charge passed
        since the beamline was made), ``mode``, ``c_rate`` and ``mode_elapsed_s`` (lab s in the current mode)."""
        with self._lock:
            t = self.now()
            soc = self._soc_at(t)
            elapsed = t - self._since
            charging = self._mode == "cc_charge" and soc < 1.0
            current = self._c_rate * self.capacity_mah if charging else 0.0
            if charging:
                voltage = open_circuit_voltage(soc) + current * 1e-3 * CELL_RESISTANCE_OHM
            else:
                voltage = open_circuit_voltage(soc) + self._eta0 * math.exp(-elapsed / RELAXATION_TAU_S)
            return {"soc": soc, "voltage": voltage, "current_ma": current,
                    "capacity_mah": (soc - self.initial_soc) * self.capacity_mah, "mode": self._mode,
                    "c_rate": self._c_rate, "mode_elapsed_s": elapsed}

    # ------------------------------------------------------------------ beam
    def add_beam_listener(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(lost)`` now and whenever the beam is lost or restored."""
        with self._lock:
            self._listeners.append(callback)
            lost = self.beam_lost
        callback(lost)

    def _set_beam(self, lost: bool) -> None:
        with self._lock:
            self.beam_lost = lost
            listeners = list(self._listeners)
        for callback in listeners:
            callback(lost)

    def lose_beam(self) -> threading.Event:
        """Drop the beam now; it comes back by itself after ``beam_outage_s`` lab seconds (at least
        :data:`MIN_OUTAGE_WALL_S` wall). Returns an Event set once it is back."""
        restored = threading.Event()

        def restore() -> None:
            if self.instant:
                with self._lock:
                    self._offset_s += self.beam_outage_s
            self._set_beam(False)
            restored.set()

        self._set_beam(True)
        timer = threading.Timer(max(self.wall_seconds(self.beam_outage_s), MIN_OUTAGE_WALL_S), restore)
        timer.daemon = True
        timer.start()
        return restored

    # ------------------------------------------------------------------ imaging
    @property
    def sample_in_beam(self) -> bool:
        return abs(self.sample_x_mm - self.beam_axis_x_mm) <= BEAM_HALF_WIDTH_MM

    def volume(self, soc: float, quality: AcquisitionQuality) -> np.ndarray:
        """Attenuation (1/µm, ``n_rows x fov_px x fov_px`` float32) of the cell at ``soc`` (rounded to 3 decimals)
        on the quality's grid, zero outside the sample pillar; cached."""
        key = (round(float(soc), 3), quality.name)
        with self._lock:
            if key in self._volumes:
                self._volumes.move_to_end(key)
                return self._volumes[key]
            attenuation, _ = self.cell.rasterize(key[0], quality.voxel_nm, shape=quality.shape)
            volume = np.where(pillar_mask(quality), attenuation, 0.0).astype(np.float32)
            self._volumes[key] = volume
            while len(self._volumes) > VOLUME_CACHE_SIZE:
                self._volumes.popitem(last=False)
            return volume

    def gains(self, quality: AcquisitionQuality) -> tuple[np.ndarray, np.ndarray]:
        """``(flat_gain, projection_gain)`` per detector column: the gains drift between flats and projections by
        ``GAIN_DRIFT * ring_strength``, as in :func:`simulators.tomography.simulate_scan` (ring artefacts)."""
        with self._lock:
            if quality.name not in self._gains:
                flat = column_gains(quality, self.seed, quality.fov_px, self.ring_strength)
                rng = np.random.default_rng([self.seed, quality.fov_px, 29])
                drift = 1.0 + GAIN_DRIFT * self.ring_strength * rng.standard_normal(quality.fov_px)
                self._gains[quality.name] = (flat, flat * drift)
            return self._gains[quality.name]

    def acquire_frame(self, quality: AcquisitionQuality, exposure_s: float,
                      abandon: threading.Event) -> Frame | None:
        """Expose one frame in the current state: dark (shutter closed), flat (sample out) or projection.

        Parameters
        ----------
        quality : AcquisitionQuality
            Dose, voxel size and frame shape (``n_rows x fov_px``).
        exposure_s : float
            Lab seconds of exposure.
        abandon : threading.Event
            Set by the detector when the RunEngine pauses or suspends: the frame is given up.

        Returns
        -------
        Frame, or None when ``abandon`` was set during the exposure or while the beam was down.

        Raises
        ------
        simulators.tomography.DetectorFault
            An armed ``detector_fault`` for this frame.
        simulators.tomography.BeamLoss
            The beam is down at an open-shutter frame, or an armed ``beam_loss`` dropped it during this
            projection and nobody abandoned the frame within :data:`BEAM_LOSS_GRACE_S` after the loss and before the
            beam came back (a suspender normally does: the RunEngine pauses the detector when it suspends).
        """
        with self._lock:
            number = self.frames_acquired
            self.frames_acquired += 1
            shutter_open, sample_in, angle = self.shutter_open, self.sample_in_beam, self.rotation_deg
        kind = "dark" if not shutter_open else ("projection" if sample_in else "flat")
        what = f"{quality.name} {kind} frame {number}" + (f" at {angle:.2f} deg" if kind == "projection" else "")
        self.faults.maybe_raise("detector_fault", what)
        if kind != "dark" and self.beam_lost:
            raise BeamlineFaults.error("beam_loss", f"{what}: the beam is down")
        if kind == "projection" and self.faults.due("beam_loss"):
            restored, lost_at = self.lose_beam(), time.monotonic()
            while not abandon.wait(0.01):
                if restored.is_set() and time.monotonic() - lost_at >= BEAM_LOSS_GRACE_S:
                    raise BeamlineFaults.error("beam_loss", what)
            return None
        if self.elapse(exposure_s, abandon):
            return None
        t, soc = self.now(), self.soc()
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, number]))
        rows, cols = quality.n_rows, quality.fov_px
        flat_gain, projection_gain = self.gains(quality)
        if kind == "dark":
            data = dark_frame(quality, rng, rows, cols)
        elif kind == "flat":
            data = flat_frame(quality, rng, rows, cols, flat_gain)
        else:
            data = projection_at(self.volume(soc, quality), angle, quality, rng, axis_offset_px=self.axis_offset_px,
                                 column_gain=projection_gain)
        return Frame(data=np.asarray(data, dtype=np.float32), image_key=IMAGE_KEYS[kind], angle_deg=float(angle),
                     soc=float(soc), lab_time_s=float(t))
