"""Shared parts of the tomography station's ophyd devices: constants, the base device and component helpers."""
from __future__ import annotations

import threading
from typing import Any, Callable

from ophyd import Device, EpicsSignal, EpicsSignalRO, Signal
from ophyd.signal import InternalSignal
from ophyd.status import DeviceStatus

from devices.beamline_sim import SimulatedBeamline
from devices.lab import MODES, LimitedEpicsSignal, LimitedSignal, ModeComponent, device_pv_names, finish_status

#: ``spec`` of the detector's Resource documents: one HDF5 file per scan, frames stacked in ``/entry/data/data``;
#: ``resource_kwargs = {"frame_per_point": 1}``, ``datum_kwargs = {"point_number": i}`` (read with
#: :class:`HDF5FrameHandler`).
RESOURCE_SPEC = "MORPHLOOP_HDF5_FRAME"
#: HDF5 datasets of a scan file (NXtomo-like): frames, then one value per frame.
DATA_PATH = "/entry/data/data"
FRAME_DATASETS = {"image_key": "/entry/instrument/detector/image_key",
                  "rotation_angle": "/entry/sample/rotation_angle",
                  "lab_time_s": "/entry/instrument/detector/lab_time_s",
                  "attempt": "/entry/instrument/detector/attempt"}
SHUTTER_COMMANDS = ("open", "close")
POTENTIOSTAT_MODES = ("ocv", "cc_charge")
#: Lab seconds the shutter takes to open or close.
SHUTTER_TIME_S = 0.5


class AcquisitionAborted(RuntimeError):
    """A frame or a move stopped by ``stop()``."""


def _check_backend(mode: str, prefix: str, beamline: Any) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "sim" and not isinstance(beamline, SimulatedBeamline):
        raise ValueError("mode='sim' needs beamline=SimulatedBeamline(...); pass the same beamline to every device "
                         "of the station")
    if mode == "epics" and (beamline is not None or not prefix):
        raise ValueError("mode='epics' needs a non-empty PV prefix (e.g. 'XF:32ID-TOMO{Rot:1}') and no beamline")


def _setpoint(pv: str, value: Any, kind: str = "config", write_pv: str | None = None, **limits: Any) -> ModeComponent:
    epics_kwargs = {"string": True} if "choices" in limits else {}
    return ModeComponent(LimitedSignal, LimitedEpicsSignal, pv, write_pv=write_pv, limits=limits,
                         sim_kwargs={"value": value}, epics_kwargs=epics_kwargs, kind=kind)


def _readback(pv: str, value: Any, kind: str = "normal", string: bool = False, doc: str = "") -> ModeComponent:
    return ModeComponent(InternalSignal, EpicsSignalRO, pv, sim_kwargs={"value": value},
                         epics_kwargs={"string": True} if string else {}, kind=kind, doc=doc)


def _command(pv: str) -> ModeComponent:
    return ModeComponent(Signal, EpicsSignal, pv, kind="omitted", sim_kwargs={"value": 0},
                         epics_kwargs={"put_complete": True})


class StationDevice(Device):
    """Base of the station's devices: ``mode``, the ``beamline`` backend (also as ``lab``, where
    :class:`~devices.lab.LimitedSignal` writes setpoints) and thread-safe Status completion."""

    def __init__(self, prefix: str = "", *, name: str, mode: str = "sim", beamline: SimulatedBeamline | None = None,
                 **kwargs: Any) -> None:
        _check_backend(mode, prefix, beamline)
        self.mode, self.beamline = mode, beamline
        self._status_lock = threading.Lock()
        self._stop_event = threading.Event()
        self._stop_success = False
        self._status: DeviceStatus | None = None
        super().__init__(prefix, name=name, **kwargs)

    @property
    def lab(self) -> SimulatedBeamline | None:
        return self.beamline

    @classmethod
    def pv_names(cls, prefix: str) -> dict[str, tuple[str, str | None]]:
        """``component -> (read_pv, write_pv)`` of the EPICS backend under ``prefix`` (write_pv None: same PV)."""
        return device_pv_names(cls, prefix)

    def _put(self, attr: str, value: Any) -> None:
        getattr(self, attr).put(value, internal=True)

    def _finish(self, status: DeviceStatus, exc: BaseException | None) -> None:
        finish_status(self._status_lock, status, exc)

    def _run_sim(self, lab_seconds: float, done: Callable[[bool], None], timeout: float | None) -> DeviceStatus:
        """A Status that finishes after ``lab_seconds`` of lab time, calling ``done(stopped)`` first; at once
        (synchronously) when the beamline is instant. ``stop()`` ends it early: ``done(True)``."""
        status = DeviceStatus(self, timeout=timeout, call_stop_on_failure=False)
        self._stop_event, self._stop_success = (event := threading.Event()), False
        with self._status_lock:
            self._status = status

        def work() -> None:
            try:
                stopped = self.beamline.elapse(lab_seconds, event)
                done(stopped)
            except Exception as exc:  # noqa: BLE001 - a failure must reach the Status, not die in a thread
                self._finish(status, exc)
                return
            aborted = stopped and not self._stop_success
            self._finish(status, AcquisitionAborted(f"{self.name}: stopped") if aborted else None)

        if self.beamline.instant or lab_seconds <= 0:
            work()
        else:
            threading.Thread(target=work, daemon=True, name=f"{self.name}-move").start()
        return status

    def stop(self, *, success: bool = False) -> None:
        """End the operation in progress where it got to; its Status fails with :class:`AcquisitionAborted`
        unless ``success`` (what the RunEngine passes when it pauses or suspends)."""
        self._stop_success = success
        self._stop_event.set()


