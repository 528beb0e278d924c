"""Plans end to end in a RunEngine on simulated devices: documents, file references, faults, resuming."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
from bluesky import RunEngine
from bluesky.utils import FailedStatus, RunEngineInterrupted

from devices.lab import SimulatedLab
from devices.plans import fault_suspenders, image_sample, synthesize, synthesize_and_image
from devices.reactor import Reactor
from devices.sem import RESOURCE_SPEC, SEM
from simulators.conditions import DEFAULT_CONDITIONS, ConditionError
from simulators.faults import AcquisitionTimeout, PhProbeDrift, PumpFault

SHAPE = (128, 128)


@pytest.fixture
def lab(tmp_path) -> SimulatedLab:
    return SimulatedLab(tmp_path, time_compression=1e6)


@pytest.fixture
def reactor(lab) -> Reactor:
    return Reactor(lab=lab)


@pytest.fixture
def sem(lab) -> SEM:
    return SEM(lab=lab, image_shape=SHAPE)


@pytest.fixture
def run_engine():
    """``(RE, docs)``: a RunEngine and the (name, doc) pairs it emitted."""
    docs: list[tuple[str, dict]] = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    return RE, docs


def only(docs, name):
    found = [doc for n, doc in docs if n == name]
    assert len(found) == 1, [n for n, _ in docs]
    return found[0]


def test_synthesize_and_image_records_conditions_sample_and_file_references(reactor, sem, lab, run_engine):
    RE, docs = run_engine
    RE(synthesize_and_image(reactor, sem, {"ph": 10.2, "atmosphere": "sealed"}, md={"campaign": "c1"}))

    start = only(docs, "start")
    assert start["conditions"] == {**DEFAULT_CONDITIONS, "ph": 10.2, "atmosphere": "sealed"}
    assert start["sample_id"] == "S0001" and start["magnifications"] == ["low", "high"]
    assert start["plan_name"] == "synthesize_and_image" and start["campaign"] == "c1"
    assert list(lab.samples) == ["S0001"]

    streams = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    events = [d for n, d in docs if n == "event"]
    synthesis = [e for e in events if streams[e["descriptor"]] == "synthesis"]
    images = [e for e in events if streams[e["descriptor"]] == "primary"]
    assert len(synthesis) == 1 and synthesis[0]["data"]["reactor_sample_id"] == "S0001"
    assert [e["data"]["sem_magnification"] for e in images] == [3000.0, 15000.0]

    resources = {d["uid"]: d for n, d in docs if n == "resource"}
    datums = {d["datum_id"]: d for n, d in docs if n == "datum"}
    assert len(resources) == len(datums) == 2
    for event in images:
        path = Path(event["data"]["sem_image_path"])
        assert path.is_file() and event["data"]["sem_sample_id"] == "S0001"
        resource = resources[datums[event["data"]["sem_image"]]["resource"]]
        assert resource["spec"] == RESOURCE_SPEC and resource["run_start"] == start["uid"]
        assert Path(resource["root"]) / resource["resource_path"] == path
    assert only(docs, "stop")["exit_status"] == "success"


def test_separate_plans_hand_the_sample_over_through_the_lab(reactor, sem, lab, run_engine):
    RE, docs = run_engine
    RE(synthesize(reactor, {"time_min": 120.0}, sample_id="batch-7"))
    assert only(docs, "start")["sample_id"] == "batch-7"
    assert reactor.sample_id.get() == "batch-7" and list(lab.samples) == ["batch-7"]
    reading = only(docs, "event")["data"]
    assert reading["reactor_sample_id"] == "batch-7" and reading["reactor_state"] == "done"

    docs.clear()
    RE(image_sample(sem, reactor.sample_id.get(), ["high"]))
    start, event = only(docs, "start"), only(docs, "event")
    assert start["sample_id"] == "batch-7" and start["magnifications"] == ["high"]
    assert Path(event["data"]["sem_image_path"]).name.startswith("batch-7_15000x")


@pytest.mark.parametrize("plan", ["synthesize", "synthesize_and_image"])
def test_bad_conditions_raise_before_any_message(reactor, sem, lab, run_engine, plan):
    RE, docs = run_engine
    make = {"synthesize": lambda c: synthesize(reactor, c),
            "synthesize_and_image": lambda c: synthesize_and_image(reactor, sem, c)}[plan]
    with pytest.raises(ConditionError, match="ph=13"):
        next(make({"ph": 13.0}))
    with pytest.raises(ConditionError):
        RE(make({"ph": 13.0}))
    assert docs == [] and lab.setpoints == {} and lab.samples == {}


def test_image_sample_refuses_unknown_magnifications_before_any_message(sem):
    with pytest.raises(ValueError, match="unknown magnification"):
        next(image_sample(sem, "S0001", ["medium"]))


@pytest.mark.parametrize("fault, exc", [("pump_fault", PumpFault), ("ph_drift", PhProbeDrift)])
def test_reactor_faults_raise_through_the_run_engine(reactor, lab, run_engine, fault, exc):
    RE, docs = run_engine
    lab.faults.arm(fault)
    with pytest.raises(FailedStatus) as info:
        RE(synthesize(reactor, {}, sample_id="B-1"))
    assert isinstance(info.value.__cause__, exc)
    assert only(docs, "stop")["exit_status"] == "fail" and lab.samples == {}
    assert reactor.fault.get() == 1
    assert reactor.next_sample_id.get() == "S0001"  # the failed batch consumed the request for "B-1"


def test_sem_timeout_raises_through_the_run_engine(sem, lab, run_engine):
    RE, docs = run_engine
    lab.make_sample("S0001", DEFAULT_CONDITIONS)
    lab.faults.arm("sem_timeout")
    with pytest.raises(FailedStatus) as info:
        RE(image_sample(sem, "S0001", ["high"]))
    assert isinstance(info.value.__cause__, AcquisitionTimeout)
    assert only(docs, "stop")["exit_status"] == "fail"


def test_suspended_fault_resumes_and_makes_the_sample_once(lab, run_engine):
    RE, docs = run_engine
    reactor = Reactor(lab=lab, fault_hold_s=10.0)
    for suspender in fault_suspenders(reactor):
        RE.install_suspender(suspender)
    lab.faults.arm("pump_fault")
    trips = []

    def operator(value, old_value, **_):  # fixes the pump a moment after the interlock trips
        if value == 1 and old_value == 0:
            trips.append(reactor.fault_reason.get())
            threading.Timer(0.2, reactor.clear_fault).start()

    reactor.fault.subscribe(operator, run=False)
    RE(synthesize(reactor, {"ph": 10.8}, sample_id="R-1"))

    assert len(trips) == 1 and "pump" in trips[0]
    assert only(docs, "stop")["exit_status"] == "success"
    assert list(lab.samples) == ["R-1"] and only(docs, "start")["sample_id"] == "R-1"
    assert only(docs, "event")["data"]["reactor_sample_id"] == "R-1"
    assert lab.sample_conditions["R-1"]["ph"] == 10.8
    assert reactor.state.get() == "done" and reactor.fault.get() == 0


def test_pause_during_a_batch_discards_it_and_resume_makes_it_once(tmp_path, run_engine):
    RE, docs = run_engine
    lab = SimulatedLab(tmp_path, time_compression=1e4)  # 360 min -> 2.2 s: time to pause mid-batch
    reactor = Reactor(lab=lab)
    # pause once the batch is under way (its first pH tick), not at a fixed wall time a loaded machine may miss
    ticking = threading.Event()
    reactor.ph_readback.subscribe(lambda **_: ticking.set(), run=False)

    def pause_mid_batch():
        if ticking.wait(30):
            RE.request_pause()

    threading.Thread(target=pause_mid_batch, daemon=True).start()
    with pytest.raises(RunEngineInterrupted):
        RE(synthesize(reactor, {"time_min": 360.0}))
    assert RE.state == "paused" and lab.samples == {} and reactor.state.get() == "idle"

    lab.time_compression = 1e6
    RE.resume()
    assert only(docs, "stop")["exit_status"] == "success"
    assert list(lab.samples) == ["S0001"] and only(docs, "event")["data"]["reactor_sample_id"] == "S0001"


def test_bluesky_queueserver_can_describe_and_validate_the_plans(reactor, sem):
    """The plans' annotations are objects the queue server evaluates: a string annotation naming a device class
    (``from __future__ import annotations``) made every queue item fail validation."""
    profile_ops = pytest.importorskip("bluesky_queueserver.manager.profile_ops")
    nspace = {"reactor": reactor, "sem": sem, "synthesize": synthesize, "image_sample": image_sample,
              "synthesize_and_image": synthesize_and_image}
    plans, devices, *_ = profile_ops.existing_plans_and_devices_from_nspace(nspace=nspace)
    assert sorted(plans) == ["image_sample", "synthesize", "synthesize_and_image"]

    def validate(args, **kwargs):
        item = {"name": "synthesize_and_image", "args": args, "kwargs": kwargs}
        return profile_ops.validate_plan(item, allowed_plans=plans, allowed_devices=devices)

    assert validate(["reactor", "sem", {"ph": 10.0}], magnifications=["low", 30000]) == (True, "")
    assert not validate(["reactor", "sem", "ph=10"])[0]  # conditions must be a mapping
    assert not validate(["reactor", "sem", {"ph": 10.0}], sample_id=7)[0]
