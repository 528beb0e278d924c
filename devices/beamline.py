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

import time
from dataclasses import dataclass
from typing import Any, Mapping

from ophyd import EpicsSignalRO
from ophyd.signal import InternalSignal, SignalRO
from ophyd.status import DeviceStatus, SubscriptionStatus
from ophyd.utils.errors import LimitError

from devices.beamline_sim import NOMINAL_BEAM_CURRENT_MA, SimulatedBeamline
from devices.lab import ModeComponent
from devices.area_detector import AreaDetector, FrameReference, HDF5FrameHandler, QualitySetting  # noqa: F401
# Constants and the detector are re-exported here: callers import the whole station from devices.beamline.
from devices.station import (  # noqa: F401
    DATA_PATH, FRAME_DATASETS, MODES, POTENTIOSTAT_MODES, RESOURCE_SPEC, SHUTTER_COMMANDS, SHUTTER_TIME_S,
    AcquisitionAborted, StationDevice, _check_backend, _command, _readback, _setpoint,
)


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
