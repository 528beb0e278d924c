"""The coprecipitation reactor as an ophyd device: one limited setpoint per synthesis condition.

``reactor.set(conditions)`` checks every condition against the device limits (from
:data:`simulators.conditions.CONDITIONS`) before anything is written, writes the setpoints, starts one batch
and returns a Status that finishes when the batch is done and its sample exists. In ``mode="sim"`` the batch
runs in a thread against a :class:`~devices.lab.SimulatedLab` (time-compressed); in ``mode="epics"`` the same
signals are PVs (see :meth:`Reactor.pv_names`) and the controller runs the batch.

Faults (pump stop, pH probe drift) latch the interlock: ``state="fault"``, ``fault=1`` and ``fault_reason``
until an operator calls :meth:`Reactor.clear_fault`. The batch is discarded (no sample is made). By default the
Status fails with the fault (:class:`~simulators.faults.PumpFault` or
:class:`~simulators.faults.PhProbeDrift`); with ``fault_hold_s > 0`` the reactor holds the Status for that long
so that a RunEngine suspender on ``reactor.fault`` can take over (see :mod:`devices.plans`).
"""
from __future__ import annotations

import threading
from typing import Any, Mapping

from ophyd import Device, EpicsSignal, EpicsSignalRO, Signal
from ophyd.signal import InternalSignal
from ophyd.status import DeviceStatus, SubscriptionStatus

from devices.lab import (LimitedEpicsSignal, LimitedSignal, ModeComponent, SampleError, SimulatedLab, check_mode,
                         device_pv_names, finish_status)
from simulators.conditions import CONDITIONS, CategoricalCondition, ConditionError, validate_conditions
from simulators.faults import LabFault

#: PV stem of each condition on the reactor IOC: setpoints are ``{prefix}{stem}:SP``; the measured readbacks
#: ``ph_readback`` and ``temperature_readback`` are ``pH:RBV`` and ``Temp:RBV``.
CONDITION_PVS = {
    "ph": "pH", "naoh_wt_pct": "NaOH:Load", "nh4oh_wt_pct": "NH4OH:Load", "time_min": "Time",
    "temperature_c": "Temp", "stir_rpm": "Stir", "atmosphere": "Atm", "additive_ppm": "Additive",
}
#: Largest |pH readback - setpoint| the controller tolerates before it declares a probe drift.
PH_TOLERANCE = 0.2
#: Readback updates per batch in the simulation (the fault checks run at these ticks).
SIM_TICKS = 20
STATES = ("idle", "running", "done", "fault")


class SynthesisAborted(RuntimeError):
    """A batch stopped by :meth:`Reactor.stop` before it finished; no sample was made."""


class SampleIdSignal(Signal):
    """Simulated ``next_sample_id``: a new id is checked against the lab before it is accepted."""

    def check_value(self, value: Any) -> None:
        lab = getattr(self.parent, "lab", None)
        if lab is not None:
            lab.check_new_sample_id(value)

    def set(self, value: Any, **kwargs: Any):
        self.check_value(value)  # synchronously: a taken id fails the plan before its run opens
        return super().set(value, **kwargs)


def _setpoint(name: str) -> ModeComponent:
    spec = CONDITIONS[name]
    if isinstance(spec, CategoricalCondition):
        limits: dict[str, Any] = {"choices": spec.choices}
        sim_kwargs, epics_kwargs = {"value": spec.default}, {"string": True}
    else:
        limits = {"low": spec.low, "high": spec.high, "unit": spec.unit}
        sim_kwargs, epics_kwargs = {"value": spec.default}, {}
    pv = CONDITION_PVS[name]
    return ModeComponent(LimitedSignal, LimitedEpicsSignal, f"{pv}:SP", limits=limits,
                         sim_kwargs=sim_kwargs, epics_kwargs=epics_kwargs, kind="config",
                         doc=f"setpoint: {spec.description}")


def _status_signal(pv: str, value: Any, kind: str = "normal", string: bool = False, doc: str = "") -> ModeComponent:
    return ModeComponent(InternalSignal, EpicsSignalRO, pv, sim_kwargs={"value": value},
                         epics_kwargs={"string": True} if string else {}, kind=kind, doc=doc)


class Reactor(Device):
    """Coprecipitation reactor: setpoints for every synthesis condition, readbacks, sample id and state.

    Parameters
    ----------
    prefix : str
        PV prefix in ``mode="epics"`` (e.g. ``"XF:31ID-RX{Rx:1}"``); unused in ``mode="sim"``.
    name : str
        Device name; data keys are ``{name}_{component}`` (``reactor_ph_readback``).
    mode : {"sim", "epics"}
        Backend: the simulated ``lab`` or the IOC's PVs.
    lab : SimulatedLab, optional
        Required in ``mode="sim"``: the lab the samples are made in (share it with the SEM).
    fault_hold_s : float
        Wall seconds a faulted batch holds its Status before failing it, so that a RunEngine suspender on
        :attr:`fault` can suspend the plan and redo the batch once the fault is cleared. 0: fail at once.

    Notes
    -----
    Components: one setpoint per condition, named exactly as the conditions (``ph``, ``naoh_wt_pct``,
    ``nh4oh_wt_pct``, ``time_min``, ``temperature_c``, ``stir_rpm``, ``atmosphere``, ``additive_ppm``; kind
    config); ``ph_readback`` and ``temperature_readback`` (hinted); ``sample_id`` (id of the last sample made)
    and ``state`` (normal); ``next_sample_id`` (config: the id the next batch is registered under, a one-shot
    request that every batch consumes, whatever its outcome, and that then shows the lab's next free id);
    ``fault`` (0/1 interlock) and ``fault_reason``.
    """

    ph = _setpoint("ph")
    naoh_wt_pct = _setpoint("naoh_wt_pct")
    nh4oh_wt_pct = _setpoint("nh4oh_wt_pct")
    time_min = _setpoint("time_min")
    temperature_c = _setpoint("temperature_c")
    stir_rpm = _setpoint("stir_rpm")
    atmosphere = _setpoint("atmosphere")
    additive_ppm = _setpoint("additive_ppm")

    ph_readback = _status_signal("pH:RBV", float(CONDITIONS["ph"].default), kind="hinted")
    temperature_readback = _status_signal("Temp:RBV", 25.0, kind="hinted")
    sample_id = _status_signal("SampleID:RBV", "", string=True, doc="id of the last sample made")
    state = _status_signal("State:RBV", "idle", string=True, doc=f"one of {STATES}")
    fault = _status_signal("Fault:RBV", 0, kind="omitted", doc="interlock: 1 while a fault is latched")
    fault_reason = _status_signal("FaultMsg:RBV", "", kind="omitted", string=True)
    next_sample_id = ModeComponent(SampleIdSignal, EpicsSignal, "SampleID:SP", kind="config",
                                   epics_kwargs={"string": True}, sim_kwargs={"value": ""},
                                   doc="id the next batch is registered under")
    start_cmd = ModeComponent(Signal, EpicsSignal, "Start:CMD", kind="omitted", sim_kwargs={"value": 0})
    stop_cmd = ModeComponent(Signal, EpicsSignal, "Stop:CMD", kind="omitted", sim_kwargs={"value": 0})
    fault_reset_cmd = ModeComponent(Signal, EpicsSignal, "FaultReset:CMD", kind="omitted", sim_kwargs={"value": 0})

    def __init__(self, prefix: str = "", *, name: str = "reactor", mode: str = "sim",
                 lab: SimulatedLab | None = None, fault_hold_s: float = 0.0, **kwargs: Any) -> None:
        check_mode(mode, prefix, lab)
        if not fault_hold_s >= 0:
            raise ValueError(f"fault_hold_s must be >= 0 seconds, got {fault_hold_s!r}")
        self.mode, self.lab, self.fault_hold_s = mode, lab, float(fault_hold_s)
        self._batch_lock = threading.Lock()
        self._stop_event: threading.Event | None = None
        self._status: DeviceStatus | None = None
        super().__init__(prefix, name=name, **kwargs)
        if mode == "sim":
            self.next_sample_id.put(lab.next_sample_id())

    @classmethod
    def pv_names(cls, prefix: str) -> dict[str, tuple[str, str | None]]:
        """``component -> (read_pv, write_pv)`` of the EPICS backend under ``prefix`` (write_pv None: same PV)."""
        return device_pv_names(cls, prefix)

    # ------------------------------------------------------------------ validation
    def check_conditions(self, conditions: Mapping[str, Any]) -> dict[str, Any]:
        """All eight conditions (missing ones take their defaults), each checked against the device limits.

        Raises
        ------
        ConditionError
            Unknown names or a non-mapping.
        ophyd.utils.errors.LimitError
            A value outside its limits (the message names the condition and the range).
        """
        if not isinstance(conditions, Mapping):
            raise ConditionError(f"conditions must be a mapping of name: value, got {type(conditions).__name__}")
        unknown = sorted(set(conditions) - set(CONDITIONS))
        if unknown:
            raise ConditionError(f"unknown condition(s) {unknown}; known: {sorted(CONDITIONS)}")
        for name, value in conditions.items():
            getattr(self, name).check_value(value)
        return validate_conditions(conditions)

    # ------------------------------------------------------------------ movable interface
    def set(self, conditions: Mapping[str, Any], *, timeout: float | None = None) -> DeviceStatus:
        """Validate all conditions, write the setpoints and start one batch (all or nothing).

        Parameters
        ----------
        conditions : mapping
            Synthesis conditions by name; missing ones take their defaults (a recipe, not a patch).
        timeout : float, optional
            Wall seconds after which the Status fails.

        Returns
        -------
        DeviceStatus
            Finishes when the batch is done (``sample_id`` then names the new sample); fails with the
            :class:`~simulators.faults.LabFault` of a fault, or :class:`SynthesisAborted` after ``stop()``.

        Raises
        ------
        ConditionError, LimitError
            Before any setpoint is written.
        RuntimeError
            The reactor is running a batch or has a latched fault.
        """
        conds = self.check_conditions(conditions)
        state = self.state.get()
        if state == "running":
            raise RuntimeError(f"{self.name} is running a batch; wait for it or call stop() first")
        if state == "fault":
            raise RuntimeError(f"{self.name} has a latched fault ({self.fault_reason.get()}); fix it and call "
                               f"clear_fault() first")
        if self.mode == "sim":
            sample_id = self.lab.check_new_sample_id(self.next_sample_id.get() or self.lab.next_sample_id())
        for name, value in conds.items():
            getattr(self, name).put(value)
        if self.mode == "epics":
            return self._start_epics(timeout)
        return self._start_sim(sample_id, timeout)

    def stop(self, *, success: bool = False) -> None:
        """Abort the running (or fault-held) batch; its sample is discarded.

        ``success=True`` (what a RunEngine passes when it suspends or pauses) finishes the batch's Status
        without error, since the plan will redo the batch from its checkpoint; otherwise the Status fails with
        :class:`SynthesisAborted`. A latched fault stays latched.
        """
        if self.mode == "epics":
            if self.state.get() == "running":
                self.stop_cmd.put(1)
            return
        with self._batch_lock:
            event, status = self._stop_event, self._status
        if event is None or status is None or status.done:
            return
        event.set()
        self._abandon_batch()
        self._finish(status, None if success else SynthesisAborted(f"{self.name}: batch stopped; no sample made"))

    def clear_fault(self) -> None:
        """Acknowledge a fixed fault: release the interlock (``fault=0``) and return to ``state="idle"``."""
        if self.mode == "epics":
            self.fault_reset_cmd.put(1)
            return
        if self.state.get() == "fault":
            self._put("state", "idle")
        self._put("fault_reason", "")
        self._put("fault", 0)

    # ------------------------------------------------------------------ backends
    def _put(self, attr: str, value: Any) -> None:
        getattr(self, attr).put(value, internal=True)

    def _finish(self, status: DeviceStatus, exc: BaseException | None) -> None:
        finish_status(self._batch_lock, status, exc)

    def _start_sim(self, sample_id: str, timeout: float | None) -> DeviceStatus:
        status = DeviceStatus(self, timeout=timeout, call_stop_on_failure=False)
        event = threading.Event()
        status.add_callback(lambda st: st.success or event.set())  # a timed-out batch stops, makes no sample
        with self._batch_lock:
            self._stop_event, self._status = event, status
        self._put("state", "running")
        threading.Thread(target=self._run_batch, args=(status, event, sample_id), daemon=True,
                         name=f"{self.name}-batch-{sample_id}").start()
        return status

    def _run_batch(self, status: DeviceStatus, stopped: threading.Event, sample_id: str) -> None:
        lab = self.lab
        received = dict(lab.setpoints[self.name])  # what the hardware was told, not what the caller meant
        tick = lab.wall_seconds(60.0 * float(received["time_min"])) / SIM_TICKS
        self._put("temperature_readback", float(received["temperature_c"]))
        try:
            for i in range(1, SIM_TICKS + 1):
                if stopped.wait(tick):
                    self._abandon_batch()  # stop() or a Status timeout
                    return
                ph = float(received["ph"]) + lab.faults.ph_drift_offset() * i / SIM_TICKS
                self._put("ph_readback", ph)
                if i == SIM_TICKS // 2:
                    lab.faults.maybe_raise("pump_fault", detail=f"{self.name}, batch {sample_id}")
                if abs(ph - float(received["ph"])) > PH_TOLERANCE:
                    lab.faults.maybe_raise("ph_drift", detail=f"{self.name}, batch {sample_id}: pH readback "
                                                              f"{ph:.2f} vs setpoint {received['ph']:.2f}")
            if stopped.is_set():
                self._abandon_batch()
                return
            lab.make_sample(sample_id, received)
        except (LabFault, SampleError) as exc:
            self._latch_fault(status, stopped, exc)
            return
        self._put("sample_id", sample_id)
        self._consume_sample_request()
        self._put("state", "done")
        self._finish(status, None)

    def _abandon_batch(self) -> None:
        """A batch stopped before its end: no sample, request consumed, back to idle (a fault stays latched)."""
        self._consume_sample_request()
        if self.state.get() == "running":
            self._put("state", "idle")

    def _consume_sample_request(self) -> None:
        self.next_sample_id.put(self.lab.next_sample_id())

    def _latch_fault(self, status: DeviceStatus, stopped: threading.Event, exc: BaseException) -> None:
        self._consume_sample_request()
        self._put("state", "fault")
        self._put("fault_reason", str(exc))
        self._put("fault", 1)  # a suspender watching this signal fires here
        if self.fault_hold_s > 0 and stopped.wait(self.fault_hold_s):
            return  # stop() took over the Status (RunEngine suspension or operator)
        self._finish(status, exc)

    def _start_epics(self, timeout: float | None) -> SubscriptionStatus:
        """Real backend: the controller runs the batch after ``Start:CMD``; done when ``State:RBV`` leaves
        ``running`` (``done``: success; ``fault``: fails with a LabFault carrying ``FaultMsg:RBV``)."""
        started = threading.Event()

        def finished(*, value: Any, **_: Any) -> bool:
            if value == "running":
                started.set()
                return False
            if started.is_set() and value == "fault":
                raise LabFault(f"{self.name}: {self.fault_reason.get()}")
            return started.is_set() and value == "done"

        status = SubscriptionStatus(self.state, finished, run=True, timeout=timeout)
        self.start_cmd.put(1)
        return status
