"""Faults of the virtual lab, so simulated devices fail the way real ones do.

A :class:`FaultInjector` is armed with how many of the next occurrences of each fault kind fail; devices call
:meth:`FaultInjector.maybe_raise` at the point where the real hardware would fail. Thread-safe, because device
Status callbacks may run in threads.
"""
from __future__ import annotations

import threading
from typing import Mapping

import numpy as np


class LabFault(RuntimeError):
    """Base class of every simulated hardware fault."""


class PumpFault(LabFault):
    """The reactor's dosing pump stopped."""


class PhProbeDrift(LabFault):
    """The pH readback drifted away from the setpoint beyond tolerance."""


class AcquisitionTimeout(LabFault):
    """An SEM image acquisition timed out."""


FAULT_KINDS: dict[str, type[LabFault]] = {
    "pump_fault": PumpFault,
    "ph_drift": PhProbeDrift,
    "sem_timeout": AcquisitionTimeout,
}

#: What failed and what an operator would check, per fault kind.
FAULT_MESSAGES: dict[str, str] = {
    "pump_fault": ("reactor dosing pump stopped; check the feed lines for blockage or air, the pump head and "
                   "tubing, and the pump's power and interlock"),
    "ph_drift": ("pH readback drifted from the setpoint beyond tolerance; recalibrate the pH probe with fresh "
                 "buffers, check its junction and electrolyte, and check the base pump is dosing"),
    "sem_timeout": ("SEM image acquisition timed out; check the column vacuum and beam current, the detector, "
                    "and that the stage finished moving"),
}

#: How far (pH units) the simulated pH readback drifts while a ``ph_drift`` fault is armed.
PH_DRIFT_UNITS = 0.6


def _check_times(kind: str, times: int) -> int:
    if isinstance(times, bool) or not isinstance(times, int) or times < 0:
        raise ValueError(f"times for fault {kind!r} must be a non-negative integer, got {times!r}")
    return times


class FaultInjector:
    """Makes the next occurrences of chosen fault kinds fail.

    Parameters
    ----------
    faults : mapping of str to int, optional
        Fault kind (a key of :data:`FAULT_KINDS`) -> how many of its next occurrences fail.
    rate : float
        Besides the armed ones, every occurrence of every kind fails with this probability (0: never).
    seed : int
        Seed of the random faults.

    Raises
    ------
    ValueError
        An unknown fault kind (the message names the known ones) or a negative/non-integer count.
    """

    def __init__(self, faults: Mapping[str, int] | None = None, *, rate: float = 0.0, seed: int = 0) -> None:
        if not (isinstance(rate, (int, float)) and 0.0 <= rate < 1.0):
            raise ValueError(f"fault rate must be a probability in [0, 1), got {rate!r}")
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {kind: 0 for kind in FAULT_KINDS}
        self.rate = float(rate)
        self._rng = np.random.default_rng(seed)
        for kind, times in (faults or {}).items():
            self.arm(kind, times)

    def __repr__(self) -> str:
        with self._lock:
            armed = {kind: n for kind, n in self._pending.items() if n}
        return f"FaultInjector({armed})"

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known kinds: {sorted(FAULT_KINDS)}")

    def arm(self, kind: str, times: int = 1) -> None:
        """Make the next ``times`` occurrences of ``kind`` fail (added to any already pending)."""
        self._check_kind(kind)
        _check_times(kind, times)
        with self._lock:
            self._pending[kind] += times

    def pending(self, kind: str) -> int:
        """How many of the next occurrences of ``kind`` will still fail."""
        self._check_kind(kind)
        with self._lock:
            return self._pending[kind]

    def maybe_raise(self, kind: str, detail: str = "") -> None:
        """Raise the exception of ``kind`` if it is armed, consuming one pending failure; else do nothing.

        Parameters
        ----------
        kind : str
            A key of :data:`FAULT_KINDS`.
        detail : str
            Context from the device (e.g. ``"reactor R1, batch 3"``), added to the message.

        Raises
        ------
        PumpFault, PhProbeDrift, AcquisitionTimeout
            When ``kind`` is armed.
        """
        self._check_kind(kind)
        with self._lock:
            if self._pending[kind] == 0:
                # unarmed: a random fault with probability ``rate`` (seeded: a run's faults are reproducible)
                if not (self.rate and self._rng.random() < self.rate):
                    return
            else:
                self._pending[kind] -= 1
        context = f" ({detail})" if detail else ""
        raise FAULT_KINDS[kind](f"{kind}{context}: {FAULT_MESSAGES[kind]}")

    def ph_drift_offset(self) -> float:
        """How far the simulated pH readback sits from the setpoint: :data:`PH_DRIFT_UNITS` while a
        ``ph_drift`` fault is armed, else 0."""
        return PH_DRIFT_UNITS if self.pending("ph_drift") > 0 else 0.0
