"""Reactor: device-side limits, all-or-nothing set(), time compression, faults, EPICS definition."""
from __future__ import annotations

import math
import threading
import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from ophyd.utils.errors import LimitError, StatusTimeoutError

from devices.lab import SampleError, SimulatedLab
from devices.plans import synthesize
from devices.reactor import PH_TOLERANCE, Reactor, SynthesisAborted
from simulators.conditions import CONDITIONS, DEFAULT_CONDITIONS, CategoricalCondition, ConditionError
from simulators.faults import PhProbeDrift, PumpFault


def make_reactor(tmp_path=None, **lab_kwargs) -> tuple[SimulatedLab, Reactor, list]:
    """A reactor on a fresh lab whose backend records every setpoint it receives."""
    lab = SimulatedLab(tmp_path, **{"time_compression": None, **lab_kwargs})
    received: list[tuple[str, object]] = []
    write = lab.write_setpoint

    def spy(device, name, value):
        received.append((name, value))
        write(device, name, value)

    lab.write_setpoint = spy
    return lab, Reactor(lab=lab), received


def within_limits(name: str, value) -> bool:
    spec = CONDITIONS[name]
    if isinstance(spec, CategoricalCondition):
        return value in spec.choices
    return isinstance(value, float) and math.isfinite(value) and spec.low <= value <= spec.high


def test_components_are_named_after_the_conditions_with_their_limits():
    _, reactor, _ = make_reactor()
    for name, spec in CONDITIONS.items():
        signal = getattr(reactor, name)
        if isinstance(spec, CategoricalCondition):
            assert signal.choices == spec.choices
        else:
            assert signal.limits == (spec.low, spec.high)
    assert set(reactor.read()) >= {"reactor_ph_readback", "reactor_temperature_readback", "reactor_sample_id",
                                   "reactor_state"}


@pytest.mark.parametrize("bad", [{"ph": 12.0}, {"temperature_c": 19.9}, {"atmosphere": "argon"},
                                 {"time_min": float("nan")}, {"stir_rpm": True}])
def test_out_of_range_set_raises_names_the_condition_and_stays_idle(bad):
    lab, reactor, received = make_reactor()
    with pytest.raises(LimitError) as info:
        reactor.set({**DEFAULT_CONDITIONS, **bad})
    assert next(iter(bad)) in str(info.value)
    assert received == [] and reactor.state.get() == "idle" and lab.samples == {}


def test_unknown_condition_is_refused_before_anything_is_written():
    lab, reactor, received = make_reactor()
    with pytest.raises(ConditionError, match="unknown condition"):
        reactor.set({"ph": 10.0, "ph_target": 10.0})
    assert received == []


def test_direct_put_outside_limits_never_reaches_the_backend():
    _, reactor, received = make_reactor()
    with pytest.raises(LimitError, match=r"\[9.5, 11.5\]"):
        reactor.ph.put(8.0)
    with pytest.raises(LimitError):
        reactor.ph.set(12.0)  # synchronous, not a failed Status
    assert received == [] and reactor.ph.get() == CONDITIONS["ph"].default


_value = {
    name: (st.sampled_from(spec.choices + ("argon", "", "N2")) if isinstance(spec, CategoricalCondition)
           else st.one_of(st.floats(spec.low, spec.high),
                          st.floats(spec.low - (spec.high - spec.low), spec.high + (spec.high - spec.low)),
                          st.sampled_from([float("nan"), float("inf"), -1.0])))
    for name, spec in CONDITIONS.items()
}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({}, optional=_value))
def test_property_out_of_range_never_reaches_the_backend(conditions):
    lab, reactor, received = make_reactor()
    in_range = all(within_limits(n, float(v) if not isinstance(v, str) else v) for n, v in conditions.items())
    event("in range" if in_range else "out of range")
    plan = synthesize(reactor, conditions)
    if in_range:
        assert next(plan).command in ("read", "set")  # validation passed, the plan starts
        reactor.set(conditions).wait(5)
        assert list(lab.samples) == ["S0001"]
        assert lab.sample_conditions["S0001"] == {**DEFAULT_CONDITIONS, **conditions}
    else:
        with pytest.raises(ConditionError):
            next(plan)  # the plan refuses before yielding a single message
        with pytest.raises((LimitError, ConditionError)):
            reactor.set(conditions)
        assert received == [] and reactor.state.get() == "idle" and lab.samples == {}
    assert all(within_limits(name, value) for name, value in received), received


def test_time_compression_runs_a_360_min_batch_in_a_fraction_of_a_second(tmp_path):
    lab, reactor, _ = make_reactor(tmp_path, time_compression=1e5)
    # the batch cannot end before the test lets it make its sample: "still running after set() returned" does
    # not depend on how fast this thread gets back here on a loaded machine
    gate, make_sample = threading.Event(), lab.make_sample

    def gated_make_sample(*args, **kwargs):
        assert gate.wait(30), "the test never let the batch finish"
        return make_sample(*args, **kwargs)

    lab.make_sample = gated_make_sample
    t0 = time.perf_counter()
    status = reactor.set({"time_min": 360.0})
    assert reactor.state.get() == "running" and not status.done  # set() returns while the batch runs
    gate.set()
    status.wait(30)
    elapsed = time.perf_counter() - t0
    # compressed, not skipped: at least the 0.216 s of compressed lab time; the upper bound only separates it from
    # a weaker or missing compression (21.6 s at 1e3, 6 h uncompressed), so a loaded machine cannot trip it
    assert 0.8 * 360 * 60 / 1e5 <= elapsed < 10.0
    assert status.success and lab.wall_seconds(360 * 60) == pytest.approx(0.216)
    assert reactor.state.get() == "done" and reactor.sample_id.get() == "S0001"
    assert reactor.next_sample_id.get() == "S0002"
    with pytest.raises(SampleError, match="already exists"):
        reactor.next_sample_id.set("S0001")


def test_samples_are_deterministic_given_the_lab_seed(tmp_path):
    morphologies = []
    for _ in range(2):
        lab, reactor, _ = make_reactor(tmp_path, seed=3)
        reactor.set({"ph": 10.1}).wait(5)
        reactor.set({"ph": 11.1}).wait(5)
        morphologies.append([lab.samples["S0001"], lab.samples["S0002"]])
    assert morphologies[0] == morphologies[1]
    assert morphologies[0][0] != morphologies[0][1]


def test_first_sample_seed_gives_independent_replicates_of_one_world(tmp_path):
    def two_batches(**kwargs):
        lab, reactor, _ = make_reactor(tmp_path, seed=3, **kwargs)
        for _ in range(2):
            reactor.set({"ph": 10.6}).wait(5)
        return [lab.samples["S0001"], lab.samples["S0002"]], lab

    (a, b), lab = two_batches()
    (c, d), other = two_batches(first_sample_seed=10**6)
    assert lab.world.truth({"ph": 10.6}) == other.world.truth({"ph": 10.6})  # the same world
    assert len({a, b, c, d}) == 4  # and four different batches
    assert two_batches(first_sample_seed=10**6)[0] == [c, d]  # replayed identically
    with pytest.raises(ValueError, match="first_sample_seed"):
        SimulatedLab(tmp_path, first_sample_seed=-1)


def test_pump_fault_fails_the_status_latches_and_makes_no_sample():
    lab, reactor, _ = make_reactor(faults={"pump_fault": 1})
    status = reactor.set({})
    with pytest.raises(PumpFault, match="pump"):
        status.wait(5)
    assert (reactor.state.get(), reactor.fault.get()) == ("fault", 1) and lab.samples == {}
    with pytest.raises(RuntimeError, match="clear_fault"):
        reactor.set({})
    reactor.clear_fault()
    reactor.set({}).wait(5)
    assert list(lab.samples) == ["S0001"] and reactor.fault.get() == 0


def test_ph_drift_moves_the_readback_and_fails_with_ph_probe_drift():
    lab, reactor, _ = make_reactor(faults={"ph_drift": 1})
    with pytest.raises(PhProbeDrift):
        reactor.set({"ph": 10.0}).wait(5)
    assert abs(reactor.ph_readback.get() - 10.0) > PH_TOLERANCE
    assert "pH readback" in reactor.fault_reason.get() and lab.samples == {}


def watch_batch(reactor: Reactor) -> threading.Event:
    """An Event set when the reactor's next batch thread has returned (whatever it did)."""
    ended, run_batch = threading.Event(), reactor._run_batch

    def watched(*args, **kwargs):
        try:
            run_batch(*args, **kwargs)
        finally:
            ended.set()

    reactor._run_batch = watched
    return ended


def test_stop_aborts_the_batch_without_a_sample(tmp_path):
    lab, reactor, _ = make_reactor(tmp_path, time_compression=1e4)  # 1440 min -> 8.6 s
    ended = watch_batch(reactor)
    status = reactor.set({"time_min": 1440.0})
    reactor.stop()
    with pytest.raises(SynthesisAborted):
        status.wait(10)
    assert ended.wait(5)  # the batch notices the stop and ends long before its 8.6 s are up ...
    assert reactor.state.get() == "idle" and lab.samples == {}  # ... without making its sample


def test_a_timed_out_batch_stops_and_makes_no_sample(tmp_path):
    lab, reactor, _ = make_reactor(tmp_path, time_compression=1e4)  # 1440 min -> 8.6 s
    ended = watch_batch(reactor)
    with pytest.raises(StatusTimeoutError):
        reactor.set({"time_min": 1440.0}, timeout=0.1).wait(10)
    assert ended.wait(5)  # the timeout stops the batch long before its 8.6 s are up ...
    assert reactor.state.get() == "idle" and lab.samples == {}  # ... back to idle, without a sample


def test_epics_mode_is_defined_without_an_ioc():
    reactor = Reactor("XF:31ID-RX{Rx:1}", mode="epics")
    assert reactor.mode == "epics" and reactor.lab is None
    pvs = Reactor.pv_names("XF:31ID-RX{Rx:1}")
    assert pvs["ph"] == ("XF:31ID-RX{Rx:1}pH:SP", None)
    assert pvs["ph_readback"][0] == "XF:31ID-RX{Rx:1}pH:RBV"
    assert set(CONDITIONS) <= set(pvs)
    with pytest.raises(ValueError, match="prefix"):
        Reactor(mode="epics")
    with pytest.raises(ValueError, match="SimulatedLab"):
        Reactor(mode="sim")
