"""The in-situ tomography station as ophyd devices: rotation, sample stage, shutter, camera, potentiostat, beam.

Every device has the two equal modes of ``devices/lab.py``, picked with ``mode=``: ``"sim"``, bound to a
:class:`~devices.beamline_sim.SimulatedBeamline` (share one beamline between the station's devices: the camera
sees what the stages, the shutter and the potentiostat did to it), or ``"epics"``, bound to PVs ``prefix + suffix``
(created lazily, never connected at construction; see each class's ``pv_names``). Setpoints are
:class:`~devices.lab.LimitedSignal` / :class:`~devices.lab.LimitedEpicsSignal`: the device enforces its limits
before any value reaches the backend, in both modes.

=================  ====================================================================================
device             what it does
=================  ====================================================================================
RotationStage      motor: ``set(angle)`` within -360..360 deg at ``velocity`` deg/s; ``readback``
SampleStage        motor in x (mm) with named positions: ``set("in")`` (in the beam), ``set("out")`` (flats)
Shutter            ``set("open")`` / ``set("close")``; ``state`` reads ``"open"`` / ``"closed"``
AreaDetector       one frame per ``trigger()``: dark / flat / projection by the station's state; frames go to
                   one HDF5 file per ``stage()``, referenced by Resource + Datum documents
Potentiostat       ``set({"mode": "cc_charge", "c_rate": 1.0, "duration_s": 600})`` or ``{"mode": "ocv"}``
BeamMonitor        ``current_ma`` and ``lost`` (0/1), for a RunEngine suspender
=================  ====================================================================================

Lab time: moves, exposures and potentiostat steps take lab seconds, compressed by the beamline's
``time_compression`` (instant when None).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Mapping
from uuid import uuid4

import h5py
import numpy as np
from ophyd import Device, EpicsSignal, EpicsSignalRO, Signal
from ophyd.device import Staged
from ophyd.signal import InternalSignal, SignalRO
from ophyd.status import DeviceStatus, SubscriptionStatus
from ophyd.utils.errors import LimitError

from devices.beamline_sim import NOMINAL_BEAM_CURRENT_MA, SimulatedBeamline
from devices.lab import LimitedEpicsSignal, LimitedSignal, ModeComponent, device_pv_names
from simulators.tomography import QUALITIES

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
MODES = ("sim", "epics")


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
        with self._status_lock:
            if status.done:
                return
            if exc is None:
                status.set_finished()
            else:
                status.set_exception(exc)

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


class _Axis(StationDevice):
    """A motor: ``set(position)`` moves ``readback`` to it at ``velocity`` (units per lab second)."""

    _state_attr = ""  # attribute of the beamline the axis moves

    def __init__(self, prefix: str = "", **kwargs: Any) -> None:
        super().__init__(prefix, **kwargs)
        if self.mode == "sim":  # the axis is where the beamline says
            self._put("readback", float(getattr(self.beamline, self._state_attr)))

    def _target(self, value: Any) -> float:
        self.user_setpoint.check_value(value)
        return float(value)

    @property
    def position(self) -> float:
        return float(self.readback.get())

    @property
    def limits(self) -> tuple[float, float]:
        return self.user_setpoint.limits

    def set(self, value: Any, *, timeout: float | None = None) -> DeviceStatus:
        """Move to ``value``; returns a Status finished when the axis is there.

        Raises
        ------
        ophyd.utils.errors.LimitError
            Outside the limits (synchronously; nothing moves, the backend never sees the value).
        """
        target = self._target(value)
        self.user_setpoint.put(target)
        if self.mode == "epics":
            return SubscriptionStatus(self.done, lambda *, value, **_: bool(value), run=False, timeout=timeout)
        start = self.position
        duration = abs(target - start) / float(self.velocity.get())
        t_start = self.beamline.now()
        self._put("done", 0)

        def arrived(stopped: bool) -> None:
            where = target
            if stopped and duration > 0:  # stopped on the way: where the axis got to
                where = start + (target - start) * min(1.0, (self.beamline.now() - t_start) / duration)
            setattr(self.beamline, self._state_attr, where)
            self._put("readback", where)
            self._put("done", 1)

        return self._run_sim(duration, arrived, timeout)

    def stop(self, *, success: bool = False) -> None:
        if self.mode == "epics":
            self.stop_cmd.put(1, use_complete=False)
        super().stop(success=success)


class RotationStage(_Axis):
    """Sample rotation (deg) about the vertical axis, -360..360 deg, ``velocity`` 0.1-720 deg/s.

    EPICS: a motor record (``.VAL``, ``.RBV``, ``.VELO``, ``.DMOV``).
    """

    user_setpoint = _setpoint(".VAL", 0.0, kind="normal", low=-360.0, high=360.0, unit="deg")
    readback = _readback(".RBV", 0.0, kind="hinted")
    velocity = _setpoint(".VELO", 90.0, low=0.1, high=720.0, unit="deg/s")
    done = _readback(".DMOV", 1, kind="omitted")
    stop_cmd = _command(".STOP")
    _state_attr = "rotation_deg"

    def __init__(self, prefix: str = "", *, name: str = "rotation", **kwargs: Any) -> None:
        super().__init__(prefix, name=name, **kwargs)


class SampleStage(_Axis):
    """Sample translation x (mm), -25..25 mm, with named positions (``"in"``: in the beam, ``"out"``: clear of it
    for flat fields); ``set`` takes a name or a number. ``position_name`` reads the name of the current position
    (``""`` between them).

    Parameters
    ----------
    positions : mapping of str to float
        Named positions in mm; must include ``"in"`` and ``"out"`` and lie within the limits. In ``mode="sim"``
        the beam is at ``"in"``.
    """

    user_setpoint = _setpoint(".VAL", 0.0, kind="normal", low=-25.0, high=25.0, unit="mm")
    readback = _readback(".RBV", 0.0, kind="hinted")
    velocity = _setpoint(".VELO", 2.0, low=0.01, high=10.0, unit="mm/s")
    done = _readback(".DMOV", 1, kind="omitted")
    stop_cmd = _command(".STOP")
    position_name = ModeComponent(InternalSignal, None, "", sim_kwargs={"value": "in"}, doc="'in', 'out' or ''")
    _state_attr = "sample_x_mm"

    def __init__(self, prefix: str = "", *, name: str = "sample_stage",
                 positions: Mapping[str, float] | None = None, **kwargs: Any) -> None:
        super().__init__(prefix, name=name, **kwargs)
        self.positions = {"in": 0.0, "out": 5.0, **dict(positions or {})}
        low, high = (type(self).user_setpoint.limits[k] for k in ("low", "high"))  # no PV access in EPICS mode
        bad = {n: x for n, x in self.positions.items() if not low <= x <= high}
        if bad or not {"in", "out"} <= set(self.positions):
            raise LimitError(f"{name}: named positions {bad or self.positions} must include 'in' and 'out' and lie "
                             f"within [{low}, {high}] mm")
        if self.mode == "sim":
            self.beamline.beam_axis_x_mm = self.positions["in"]
            self.readback.subscribe(self._name_position, run=True)

    def _name_position(self, value: float, **_: Any) -> None:
        names = [n for n, x in self.positions.items() if abs(x - value) < 1e-6]
        self._put("position_name", names[0] if names else "")

    def _target(self, value: Any) -> float:
        if isinstance(value, str):
            if value not in self.positions:
                raise LimitError(f"{self.name}: unknown position {value!r}; named positions: {self.positions}")
            value = self.positions[value]
        return super()._target(value)


class Shutter(StationDevice):
    """Beam shutter: ``set("open")`` / ``set("close")`` (Status done once moved); ``state`` is ``"open"`` or
    ``"closed"``. EPICS: ``Cmd`` (string) and ``Pos-Sts``."""

    command = _setpoint("Cmd", "close", kind="omitted", choices=SHUTTER_COMMANDS)
    state = _readback("Pos-Sts", "closed", kind="normal", string=True)

    def __init__(self, prefix: str = "", *, name: str = "shutter", **kwargs: Any) -> None:
        super().__init__(prefix, name=name, **kwargs)

    def set(self, value: str, *, timeout: float | None = None) -> DeviceStatus:
        """Open or close. Raises ``LimitError`` for anything but ``"open"`` / ``"close"``."""
        self.command.put(value)
        wanted = "open" if value == "open" else "closed"
        if self.mode == "epics":
            return SubscriptionStatus(self.state, lambda *, value, **_: value == wanted, run=True, timeout=timeout)

        def moved(stopped: bool) -> None:
            self.beamline.shutter_open = wanted == "open"
            self._put("state", wanted)

        return self._run_sim(SHUTTER_TIME_S if self.state.get() != wanted else 0.0, moved, timeout)


class BeamMonitor(StationDevice):
    """Storage-ring beam: ``current_ma`` and ``lost`` (1 while the beam is down), for
    :func:`devices.tomo_plans.beam_suspender`. EPICS: ``Current-I`` and ``Lost-Sts``."""

    current_ma = _readback("Current-I", 0.0, kind="hinted")
    lost = _readback("Lost-Sts", 0, kind="normal")

    def __init__(self, prefix: str = "", *, name: str = "beam", **kwargs: Any) -> None:
        super().__init__(prefix, name=name, **kwargs)
        if self.mode == "sim":
            def follow(lost: bool) -> None:
                self._put("current_ma", 0.0 if lost else NOMINAL_BEAM_CURRENT_MA)
                self._put("lost", int(lost))  # a suspender on this signal fires here

            self.beamline.add_beam_listener(follow)


class CellReadback(SignalRO):
    """Simulated potentiostat readback, computed from the beamline's cell at every read."""

    def get(self, **kwargs: Any) -> Any:
        beamline = getattr(self.parent, "beamline", None)
        if beamline is not None:
            self._readback = beamline.cell_state()[self.attr_name]
            self._metadata["timestamp"] = time.time()
        return self._readback


def _cell_readback(pv: str, kind: str = "normal") -> ModeComponent:
    return ModeComponent(CellReadback, EpicsSignalRO, pv, sim_kwargs={"value": 0.0}, kind=kind)


class Potentiostat(StationDevice):
    """Potentiostat driving the in-situ cell: constant-current charge or open circuit.

    ``set(step)`` takes a dict: ``mode`` (``"ocv"`` or ``"cc_charge"``), ``c_rate`` (0.01-10 C, cc_charge only;
    default: the current setpoint) and ``duration_s`` (0-1e6 lab s, default 0). Every value is checked against the
    device limits before any is written. The Status finishes once the mode has been held for ``duration_s`` lab
    seconds, counted from when that mode began: re-asserting the running mode (same mode and C-rate) does not
    restart its clock, so a RunEngine that replays a step after a suspension waits only for the rest of it. The
    mode persists after the step until the next ``set``. ``stop()`` (what a RunEngine calls when it suspends)
    ends the wait but never changes the electrochemistry.

    The step's ``mode`` is the component ``control_mode`` (``mode`` is the device's sim/epics backend).
    Readbacks: ``voltage`` (V), ``current_ma``, ``capacity_mah`` (charge passed), ``soc`` (coulomb-counted state of
    charge) and ``mode_elapsed_s`` (lab s in the current mode). EPICS: ``Mode:SP``/``Mode:RBV``, ``CRate:SP``,
    ``Duration:SP``, ``Voltage-I``, ... and ``StepDone-Sts``.
    """

    control_mode = _setpoint("Mode:RBV", "ocv", kind="normal", write_pv="Mode:SP", choices=POTENTIOSTAT_MODES)
    c_rate = _setpoint("CRate:SP", 1.0, low=0.01, high=10.0, unit="C")
    duration_s = _setpoint("Duration:SP", 0.0, low=0.0, high=1e6, unit="s")
    voltage = _cell_readback("Voltage-I", kind="hinted")
    current_ma = _cell_readback("Current-I")
    capacity_mah = _cell_readback("Capacity-I")
    soc = _cell_readback("SOC-I")
    mode_elapsed_s = _cell_readback("StepElapsed-I")
    step_done = _readback("StepDone-Sts", 1, kind="omitted")
    start_cmd = _command("Start:CMD")

    _STEP_SIGNALS = {"mode": "control_mode", "c_rate": "c_rate", "duration_s": "duration_s"}

    def __init__(self, prefix: str = "", *, name: str = "potentiostat", **kwargs: Any) -> None:
        super().__init__(prefix, name=name, **kwargs)

    def check_step(self, step: Mapping[str, Any]) -> dict[str, Any]:
        """The step with defaults filled in, every value checked against the device limits.

        Raises
        ------
        ValueError
            Not a mapping, unknown keys or no ``mode``.
        ophyd.utils.errors.LimitError
            A value outside its limits.
        """
        if not isinstance(step, Mapping) or "mode" not in step:
            raise ValueError(f"a potentiostat step is a dict with 'mode' ({list(POTENTIOSTAT_MODES)}) and optional "
                             f"'c_rate', 'duration_s'; got {step!r}")
        unknown = sorted(set(step) - {"mode", "c_rate", "duration_s"})
        if unknown:
            raise ValueError(f"unknown potentiostat step key(s) {unknown}; known: ['c_rate', 'duration_s', 'mode']")
        full = {"mode": step["mode"], "c_rate": step.get("c_rate", self.c_rate.get()),
                "duration_s": step.get("duration_s", 0.0)}
        for key, value in full.items():
            getattr(self, self._STEP_SIGNALS[key]).check_value(value)
        return full

    def set(self, step: Mapping[str, Any], *, timeout: float | None = None) -> DeviceStatus:
        """Apply one step (all or nothing); see the class notes."""
        full = self.check_step(step)
        self.c_rate.put(full["c_rate"])
        self.duration_s.put(full["duration_s"])
        if self.mode == "epics":
            self.control_mode.put(full["mode"])
            self.start_cmd.put(1)
            return SubscriptionStatus(self.step_done, lambda *, value, **_: bool(value), run=False, timeout=timeout)
        self.beamline.set_cell_mode(full["mode"], full["c_rate"])
        self.control_mode.put(full["mode"])  # after the switch: its timestamp is when the cell changed mode
        remaining = float(full["duration_s"]) - self.beamline.cell_state()["mode_elapsed_s"]
        self._put("step_done", 0)
        return self._run_sim(max(remaining, 0.0), lambda stopped: self._put("step_done", 1), timeout)


class FrameReference(Signal):
    """Datum id of the last frame; described as an external ``n_rows x n_cols`` float32 array."""

    def describe(self) -> dict[str, dict[str, Any]]:
        desc = super().describe()
        rows, cols = self.parent.frame_shape
        desc[self.name].update(dtype="array", dtype_numpy="<f4", shape=[rows, cols], external="FILESTORE:")
        return desc


class QualitySetting(LimitedSignal):
    """The acquisition quality (``"hq"`` / ``"lq"``); fixed while the detector is staged (one file = one shape)."""

    def check_value(self, value: Any) -> None:
        super().check_value(value)
        parent = self.parent
        if parent is not None and parent._staged == Staged.yes and value != self.get():
            raise RuntimeError(f"{parent.name}: quality cannot change during a scan (staged); unstage first")


class AreaDetector(StationDevice):
    """The tomography camera with an HDF5 file writer.

    ``stage()`` opens one HDF5 file (``{output_dir}/tomo_{n:04d}_{uid8}.h5``); each ``trigger()`` exposes one frame,
    appends it to ``/entry/data/data`` (with its ``image_key``, rotation angle, lab time and attempt number, see
    :data:`FRAME_DATASETS`) and references it: ``image`` reads a datum id (``external: "FILESTORE:"``) and
    :meth:`collect_asset_docs` yields one Resource per file (spec :data:`RESOURCE_SPEC`, ``root`` +
    ``resource_path`` = the file) and one Datum per frame (``{"point_number": i}``); ``unstage()`` closes the file.

    In ``mode="sim"`` the frame is a dark (shutter closed, ``image_key`` 2), a flat (sample out, 1) or a
    projection (0) of the beamline's cell at the stage's angle. When a RunEngine pauses or suspends, it calls
    :meth:`pause`: a frame in progress is given up (its Status finishes without a reading) and later frames count
    as the next ``attempt``, so the frames of the last attempt in a file are the complete, repeated scan.

    Parameters
    ----------
    quality : {"hq", "lq"}
        Initial acquisition quality (:data:`simulators.tomography.QUALITIES`): dose, voxel size, frame shape.
    """

    quality = ModeComponent(QualitySetting, LimitedEpicsSignal, "cam1:Quality", limits={"choices": tuple(QUALITIES)},
                            sim_kwargs={"value": "hq"}, epics_kwargs={"string": True}, kind="config")
    exposure_s = _setpoint("cam1:AcquireTime", 1.0, low=0.001, high=60.0, unit="s")
    voxel_nm = _readback("cam1:VoxelSize_RBV", QUALITIES["hq"].voxel_nm, kind="config")
    image = ModeComponent(FrameReference, None, "", sim_kwargs={"value": ""}, doc="datum id of the last frame")
    image_key = _readback("cam1:ImageKey_RBV", -1, doc="NXtomo image_key: 0 projection, 1 flat, 2 dark")
    frame_number = _readback("HDF1:NumCaptured_RBV", -1, doc="point number of the last frame in the file")
    file_path = _readback("HDF1:FullFileName_RBV", "", string=True, doc="the scan's HDF5 file")
    acquire = _command("cam1:Acquire")
    capture = _command("HDF1:Capture")

    def __init__(self, prefix: str = "", *, name: str = "detector", quality: str = "hq", **kwargs: Any) -> None:
        super().__init__(prefix, name=name, **kwargs)
        self._file: h5py.File | None = None
        self._resource: dict[str, Any] | None = None
        self._pending: list[tuple[str, dict[str, Any]]] = []  # asset documents, in emission order
        self._abandon = threading.Event()
        self._attempt = 0
        self._files = 0
        if self.mode == "sim":
            self.quality.put(quality)
            self._put("voxel_nm", QUALITIES[quality].voxel_nm)

    @property
    def frame_shape(self) -> tuple[int, int]:
        q = QUALITIES[self.quality.get()] if self.mode == "sim" else QUALITIES["hq"]
        return q.n_rows, q.fov_px

    # ------------------------------------------------------------------ staging: one file per scan
    def stage(self) -> list[object]:
        staged = super().stage()
        if self.mode == "epics":
            self.capture.put(1, use_complete=False)
            return staged
        q = QUALITIES[self.quality.get()]
        self._files += 1
        uid = str(uuid4())
        rel = f"tomo_{self._files:04d}_{uid[:8]}.h5"
        path = Path(self.beamline.output_dir) / rel
        f = h5py.File(path, "w")
        f.create_dataset(DATA_PATH, shape=(0, q.n_rows, q.fov_px), maxshape=(None, q.n_rows, q.fov_px),
                         dtype="<f4", chunks=(1, q.n_rows, q.fov_px))
        for key, dataset in FRAME_DATASETS.items():
            dtype = "<f8" if key in ("rotation_angle", "lab_time_s") else "<i2"
            f.create_dataset(dataset, shape=(0,), maxshape=(None,), dtype=dtype)
        f["/entry"].attrs.update(quality=q.name, voxel_nm=q.voxel_nm, dose=q.dose, spec=RESOURCE_SPEC)
        self._file, self._attempt = f, 0
        self._resource = {"spec": RESOURCE_SPEC, "root": Path(self.beamline.output_dir).as_posix(),
                          "resource_path": rel, "resource_kwargs": {"frame_per_point": 1},
                          "path_semantics": "posix", "uid": uid}
        self._pending = [("resource", self._resource)]
        self._put("voxel_nm", q.voxel_nm)
        self._put("file_path", path.as_posix())
        self._put("frame_number", -1)
        return staged

    def unstage(self) -> list[object]:
        if self.mode == "epics":
            self.capture.put(0, use_complete=False)
        elif self._file is not None:
            with self._status_lock:
                self._file.close()
                self._file = None
        self._pending, self._resource = [], None
        return super().unstage()

    # ------------------------------------------------------------------ detector interface
    def trigger(self) -> DeviceStatus:
        """Expose one frame and append it to the scan's file.

        Returns
        -------
        DeviceStatus
            Finishes when the frame is written and referenced; fails with ``DetectorFault`` or ``BeamLoss``
            (see :meth:`devices.beamline_sim.SimulatedBeamline.acquire_frame`).

        Raises
        ------
        RuntimeError
            The detector is not staged (no file to write to).
        """
        if self._staged != Staged.yes:
            raise RuntimeError(f"{self.name}: stage the detector first (it opens the scan's HDF5 file); in a plan "
                               f"use bpp.stage_wrapper or bps.stage({self.name})")
        self._pending = [doc for doc in self._pending if doc[0] == "resource"]  # an unread frame's datum is stale
        status = DeviceStatus(self, call_stop_on_failure=False)
        with self._status_lock:
            self._status = status
        if self.mode == "epics":
            return self._trigger_epics(status)
        self._abandon = abandon = threading.Event()  # one per frame: a late old frame never sees a new one's
        threading.Thread(target=self._acquire_sim, args=(status, QUALITIES[self.quality.get()],
                                                         float(self.exposure_s.get()), abandon),
                         daemon=True, name=f"{self.name}-frame").start()
        return status

    def collect_asset_docs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield the file's Resource (once per file) and the last frame's Datum (once)."""
        while self._pending:
            yield self._pending.pop(0)

    def pause(self) -> None:
        """RunEngine pause or suspension: give up the frame in progress (its Status finishes without a reading);
        frames after the resume belong to the next attempt."""
        self._abandon.set()
        self._attempt += 1
        with self._status_lock:
            status = self._status
        if status is not None and not status.done:
            self._finish(status, None)

    def stop(self, *, success: bool = False) -> None:
        """Abort a frame in progress (its Status fails with :class:`AcquisitionAborted` unless ``success``)."""
        self._abandon.set()
        with self._status_lock:
            status = self._status
        if status is not None and not status.done:
            self._finish(status, None if success else AcquisitionAborted(f"{self.name}: frame stopped"))
        if self.mode == "epics":
            self.acquire.put(0, use_complete=False)

    # ------------------------------------------------------------------ backends
    def _reference(self, point_number: int) -> None:
        datum = {"resource": self._resource["uid"], "datum_id": f"{self._resource['uid']}/{point_number}",
                 "datum_kwargs": {"point_number": int(point_number)}}
        self._pending.append(("datum", datum))
        if self.mode == "sim":
            self._put("frame_number", int(point_number))
        self.image.put(datum["datum_id"])

    def _acquire_sim(self, status: DeviceStatus, quality: Any, exposure_s: float, abandon: threading.Event) -> None:
        try:
            frame = self.beamline.acquire_frame(quality, exposure_s, abandon)
            if frame is None or abandon.is_set():
                self._finish(status, None)  # given up (pause / suspension): no reading
                return
            with self._status_lock:
                f = self._file
                if f is None:
                    raise RuntimeError(f"{self.name}: unstaged during the exposure; frame discarded")
                i = f[DATA_PATH].shape[0]
                values = {"image_key": frame.image_key, "rotation_angle": frame.angle_deg,
                          "lab_time_s": frame.lab_time_s, "attempt": self._attempt}
                f[DATA_PATH].resize(i + 1, axis=0)
                f[DATA_PATH][i] = frame.data
                for key, dataset in FRAME_DATASETS.items():
                    f[dataset].resize(i + 1, axis=0)
                    f[dataset][i] = values[key]
                f.flush()
            self._put("image_key", frame.image_key)
            self._reference(i)
        except Exception as exc:  # noqa: BLE001 - every failure must reach the Status, not die in the thread
            self._finish(status, exc)
            return
        self._finish(status, None)

    def _trigger_epics(self, status: DeviceStatus) -> DeviceStatus:
        """Real backend: ``cam1:Acquire`` put-completes once the HDF5 plugin captured the frame; the frame is then
        point ``NumCaptured_RBV - 1`` of ``FullFileName_RBV``."""
        def written(acquired: Any) -> None:
            if not acquired.success:
                self._finish(status, acquired.exception() or RuntimeError(f"{self.name}: acquisition failed"))
                return
            if self._resource is None:
                path = PurePosixPath(self.file_path.get())
                self._resource = {"spec": RESOURCE_SPEC, "root": str(path.parent), "resource_path": path.name,
                                  "resource_kwargs": {"frame_per_point": 1}, "path_semantics": "posix",
                                  "uid": str(uuid4())}
                self._pending.insert(0, ("resource", self._resource))
            self._reference(int(self.frame_number.get()) - 1)
            self._finish(status, None)

        self.acquire.set(1).add_callback(written)
        return status



class HDF5FrameHandler:
    """Reads the frames :data:`RESOURCE_SPEC` documents point at (a databroker/tiled-style handler).

    ``HDF5FrameHandler(root / resource_path, **resource_kwargs)(**datum_kwargs)`` returns one ``n_rows x n_cols``
    frame (or ``frame_per_point`` of them stacked).
    """

    specs = {RESOURCE_SPEC}

    def __init__(self, filename: str | Path, frame_per_point: int = 1) -> None:
        self._file = h5py.File(filename, "r")
        self._frame_per_point = int(frame_per_point)

    def __call__(self, point_number: int) -> np.ndarray:
        start = int(point_number) * self._frame_per_point
        frames = self._file[DATA_PATH][start:start + self._frame_per_point]
        return frames[0] if self._frame_per_point == 1 else frames

    def close(self) -> None:
        self._file.close()


@dataclass
class TomoStation:
    """The devices of one tomography station, as the plans take them."""

    detector: AreaDetector
    rotation: RotationStage
    sample_stage: SampleStage
    shutter: Shutter
    potentiostat: Potentiostat
    beam: BeamMonitor

    @classmethod
    def simulated(cls, beamline: SimulatedBeamline, *, quality: str = "hq") -> "TomoStation":
        """Every device in ``mode="sim"`` on one beamline."""
        return cls(detector=AreaDetector(beamline=beamline, quality=quality), rotation=RotationStage(beamline=beamline),
                   sample_stage=SampleStage(beamline=beamline), shutter=Shutter(beamline=beamline),
                   potentiostat=Potentiostat(beamline=beamline), beam=BeamMonitor(beamline=beamline))
