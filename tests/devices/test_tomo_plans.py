"""Tomography plans end to end in a RunEngine on the simulated station: documents, file references, the in-situ
protocol, beam loss (suspend and repeat the scan) and detector faults."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import FailedStatus
from ophyd.utils.errors import LimitError

from devices import beamline_sim
from devices.beamline import DATA_PATH, FRAME_DATASETS, RESOURCE_SPEC, HDF5FrameHandler, TomoStation
from devices.beamline_sim import SimulatedBeamline
from devices.tomo_plans import beam_suspender, insitu_tomography, tomo_scan
from simulators.tomography import BeamLoss, DetectorFault, ElectrodeCell

N, DARKS, FLATS = 12, 3, 2


@pytest.fixture(scope="session")
def cell() -> ElectrodeCell:
    return ElectrodeCell(seed=0)


@pytest.fixture
def run_engine():
    """``(RE, docs)``: a RunEngine and the (name, doc) pairs it emitted."""
    docs: list[tuple[str, dict]] = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    return RE, docs


def station_on(tmp_path, cell, **kwargs) -> tuple[SimulatedBeamline, TomoStation]:
    beamline = SimulatedBeamline(tmp_path, cell=cell, **{"time_compression": None, **kwargs})
    return beamline, TomoStation.simulated(beamline, quality="lq")


def scan(st: TomoStation, **kwargs):
    return tomo_scan(st.detector, st.rotation, st.sample_stage, st.shutter,
                     **{"n_projections": N, "n_darks": DARKS, "n_flats": FLATS, "quality": "lq", **kwargs})


def events_by_stream(docs, run_uid=None) -> dict[str, list[dict]]:
    streams = {d["uid"]: d["name"] for n, d in docs if n == "descriptor" and run_uid in (None, d["run_start"])}
    out: dict[str, list[dict]] = {}
    for name, doc in docs:
        if name == "event" and doc["descriptor"] in streams:
            out.setdefault(streams[doc["descriptor"]], []).append(doc)
    return out


def latest_per_seq_num(events: list[dict]) -> list[dict]:
    """What a consumer keeps after a rewind: the last event of each seq_num, in seq_num order."""
    return [e for _, e in sorted({e["seq_num"]: e for e in events}.items())]


def assert_documents_complete(docs, run_uid: str) -> Path:
    """Every event's frame is referenced by a datum of a resource of this run, emitted before the event; returns
    the run's HDF5 file."""
    seen_resources, seen_datums = {}, {}
    for name, doc in docs:
        if name == "resource":
            seen_resources[doc["uid"]] = doc
        elif name == "datum":
            assert doc["resource"] in seen_resources
            seen_datums[doc["datum_id"]] = doc
        elif name == "event" and "detector_image" in doc["data"]:
            assert doc["data"]["detector_image"] in seen_datums and doc["filled"] == {"detector_image": False}
    (resource,) = [r for r in seen_resources.values() if r["run_start"] == run_uid]
    assert resource["spec"] == RESOURCE_SPEC
    path = Path(resource["root"]) / resource["resource_path"]
    assert path.is_file()
    return path


def test_tomo_scan_records_darks_flats_and_projections_over_the_arc(tmp_path, cell, run_engine):
    RE, docs = run_engine
    beamline, st = station_on(tmp_path, cell)
    (uid,) = RE(scan(st, arc_deg=180.0, potentiostat=st.potentiostat, md={"sample": "cell-0", "quality": "x"}))

    names = [n for n, _ in docs]
    assert names[0] == "start" and names[-1] == "stop" and names.count("start") == 1
    start, stop = docs[0][1], docs[-1][1]
    assert start["uid"] == uid and start["plan_name"] == "tomo_scan" and start["sample"] == "cell-0"
    assert start["quality"] == "lq" and start["voxel_nm"] == 100.0 and start["frame_shape"] == [16, 128]
    assert start["soc"] == 0.0 and start["n_projections"] == N
    resource = next(d for n, d in docs if n == "resource")  # the run can be found by the file it wrote
    assert start["scan_file"] == (Path(resource["root"]) / resource["resource_path"]).absolute().as_posix()
    step = 180.0 / N
    assert start["angles"] == pytest.approx([k * step for k in range(N)])
    assert stop["exit_status"] == "success"
    assert stop["num_events"] == {"electrochemistry": 2, "dark": DARKS, "flat": FLATS, "primary": N}

    streams = events_by_stream(docs)
    assert [e["data"]["detector_image_key"] for e in streams["dark"]] == [2] * DARKS
    assert [e["data"]["detector_image_key"] for e in streams["flat"]] == [1] * FLATS
    assert [e["data"]["sample_stage_position_name"] for e in streams["flat"]] == ["out"] * FLATS
    assert [e["data"]["detector_image_key"] for e in streams["primary"]] == [0] * N
    angles = [e["data"]["rotation_readback"] for e in streams["primary"]]
    assert angles == pytest.approx(start["angles"])  # the arc is covered: 0 .. 180 - step, evenly
    assert angles[-1] + step == pytest.approx(180.0)

    path = assert_documents_complete(docs, uid)
    datums = {d["datum_id"]: d for n, d in docs if n == "datum"}
    with h5py.File(path, "r") as f:
        assert f[DATA_PATH].shape[0] == DARKS + FLATS + N
        assert list(f[FRAME_DATASETS["image_key"]][()]) == [2] * DARKS + [1] * FLATS + [0] * N
    handler = HDF5FrameHandler(path, frame_per_point=1)
    try:
        frame = {s: handler(**datums[streams[s][0]["data"]["detector_image"]]["datum_kwargs"]).mean()
                 for s in ("dark", "flat", "primary")}
    finally:
        handler.close()
    assert frame["dark"] < frame["primary"] < frame["flat"]
    assert st.shutter.state.get() == "closed" and st.detector.file_path.get() == path.as_posix()


@pytest.mark.parametrize("kwargs, exc", [({"n_projections": 1}, ValueError), ({"n_projections": 12.0}, ValueError),
                                         ({"arc_deg": 0.0}, ValueError), ({"arc_deg": 400.0}, ValueError),
                                         ({"n_flats": 0}, ValueError), ({"quality": "mq"}, ValueError),
                                         ({"md": "note"}, ValueError)])
def test_tomo_scan_refuses_bad_arguments_before_any_message(tmp_path, cell, run_engine, kwargs, exc):
    RE, docs = run_engine
    beamline, st = station_on(tmp_path, cell)
    with pytest.raises(exc):
        next(scan(st, **kwargs))
    with pytest.raises(exc):
        RE(scan(st, **kwargs))
    assert docs == [] and beamline.frames_acquired == 0 and "rotation" not in beamline.setpoints


def test_insitu_tomography_rests_at_open_circuit_before_every_scan_while_the_cell_charges(tmp_path, cell, run_engine):
    RE, docs = run_engine
    compression, hold_min, interval_min, c_rate = 600.0, 1.0, 4.0, 1.5
    beamline, st = station_on(tmp_path, cell, time_compression=compression)
    # One timeline of the run's documents and the potentiostat's mode changes, in the order they happened (the
    # mode is switched inside the plan's set, before the documents that follow it): ordering, not wall clocks.
    timeline: list[tuple[str, object]] = []
    st.potentiostat.control_mode.subscribe(
        lambda value, old_value=None, **_: timeline.append(("mode", value)) if value != old_value else None,
        run=False)
    RE.subscribe(lambda name, doc: timeline.append((name, doc)))
    st.potentiostat.set({"mode": "cc_charge", "c_rate": c_rate}).wait(2)  # the cell is charging when the plan starts

    uids = RE(insitu_tomography(st.potentiostat, st.detector, st.rotation, st.sample_stage, st.shutter,
                                c_rate=c_rate, interval_min=interval_min, n_timepoints=3, ocv_hold_min=hold_min,
                                n_projections=N, n_flats=FLATS, n_darks=DARKS, md={"campaign": "c7"}))

    starts = [d for n, d in docs if n == "start"]
    stops = [d for n, d in docs if n == "stop"]
    assert len(uids) == 3 and [s["uid"] for s in starts] == list(uids)
    assert [s["exit_status"] for s in stops] == ["success"] * 3
    assert [s["timepoint"] for s in starts] == [0, 1, 2] and len({s["insitu_id"] for s in starts}) == 1
    assert all(s["campaign"] == "c7" and s["quality"] == "lq" and s["c_rate"] == c_rate for s in starts)
    # every switch before a scan is to open circuit, every switch after one (but the last) back to charging, and
    # none during a scan
    order = [v if n == "mode" else n for n, v in timeline if n in ("mode", "start", "stop")]
    assert order == ["cc_charge", "ocv", "start", "stop", "cc_charge", "ocv", "start", "stop", "cc_charge", "ocv",
                     "start", "stop"]
    hold_s = 60.0 * hold_min
    for start in starts:
        assert start["ocv_rest_s"] >= hold_s  # rested at open circuit before the scan (lab time) ...
        chem = events_by_stream(docs, start["uid"])["electrochemistry"]
        assert [e["data"]["potentiostat_control_mode"] for e in chem] == ["ocv", "ocv"]
        # ... as the potentiostat's readbacks in the scan's own events say: at open circuit for at least the hold
        # when the scan began, and the same open-circuit period still running at its end
        elapsed = [e["data"]["potentiostat_mode_elapsed_s"] for e in chem]
        assert hold_s <= start["ocv_rest_s"] <= elapsed[0] < elapsed[1]
        assert chem[0]["data"]["potentiostat_soc"] == chem[1]["data"]["potentiostat_soc"] == start["soc"]
        assert chem[0]["data"]["potentiostat_current_ma"] == 0.0 == chem[1]["data"]["potentiostat_current_ma"]

    # The charge between scans, from the backend's mode log (lab seconds of every switch): the state of charge of
    # each scan is the coulomb count of the charging periods before it, each at c_rate ...
    log = beamline.mode_log
    assert [m for _, _, m, _ in log] == ["ocv"] + ["cc_charge", "ocv"] * 3
    charging = [(log[i + 1][0] - log[i][0], log[i][3]) for i in range(len(log) - 1) if log[i][2] == "cc_charge"]
    assert [c for _, c in charging] == [c_rate] * 3
    socs = [s["soc"] for s in starts]
    assert socs == pytest.approx(np.cumsum([c_rate * d / 3600.0 for d, _ in charging]), rel=1e-9)
    assert socs[0] > 0.0  # charged before the plan's first open-circuit switch
    # ... and the plan charges for interval_min each time: never less (lab time), and not grossly more (the slack
    # only absorbs the plan's overhead, compressed 600x, on a loaded machine)
    interval_s = 60.0 * interval_min
    assert all(0.999 * interval_s <= d < 2.0 * interval_s for d, _ in charging[1:])
    expected = c_rate * interval_min / 60.0
    assert all(expected * 0.999 <= g < 2.0 * expected for g in np.diff(socs))  # soc grows between timepoints
    assert st.potentiostat.control_mode.get() == "ocv"  # left at open circuit after the last scan


def test_beam_loss_mid_scan_suspends_and_repeats_the_whole_scan(tmp_path, cell, run_engine, monkeypatch):
    RE, docs = run_engine
    beamline, st = station_on(tmp_path, cell)
    # an unattended frame fails BEAM_LOSS_GRACE_S after the loss: widened so that a RunEngine slowed by a loaded
    # machine still suspends in time (without a suspender the run would still fail, only later)
    monkeypatch.setattr(beamline_sim, "BEAM_LOSS_GRACE_S", 30.0)
    RE.install_suspender(beam_suspender(st, sleep=0.05))
    lost = []
    st.beam.lost.subscribe(lambda value, **_: lost.append(value), run=False)
    k = 5
    beamline.faults.arm("beam_loss", skip=k)  # the beam drops during projection k (0-based)

    (uid,) = RE(scan(st))

    assert lost == [1, 0] and beamline.faults.pending("beam_loss") == 0
    stop = [d for n, d in docs if n == "stop"][0]
    assert stop["exit_status"] == "success" and stop["num_events"]["primary"] == N
    streams = events_by_stream(docs)
    # the interrupted attempt's darks, flats and k projections, then the whole scan again
    assert len(streams["dark"]) == 2 * DARKS and len(streams["flat"]) == 2 * FLATS
    assert len(streams["primary"]) == k + N
    final = latest_per_seq_num(streams["primary"])
    assert [e["seq_num"] for e in final] == list(range(1, N + 1))
    assert [e["data"]["rotation_readback"] for e in final] == pytest.approx([180.0 * i / N for i in range(N)])
    assert len(latest_per_seq_num(streams["dark"])) == DARKS and len(latest_per_seq_num(streams["flat"])) == FLATS

    path = assert_documents_complete(docs, uid)
    with h5py.File(path, "r") as f:
        attempts = f[FRAME_DATASETS["attempt"]][()]
        keys = f[FRAME_DATASETS["image_key"]][()]
    assert len(attempts) == (DARKS + FLATS + k) + (DARKS + FLATS + N) > DARKS + FLATS + N  # re-acquired
    last = keys[attempts == attempts.max()]
    assert list(last) == [2] * DARKS + [1] * FLATS + [0] * N  # the last attempt is the complete scan
    final_points = [int(e["data"]["detector_frame_number"]) for e in final]
    assert min(final_points) > DARKS + FLATS + k  # every kept projection was taken after the beam came back


def test_beam_loss_without_a_suspender_fails_the_run(tmp_path, cell, run_engine):
    RE, docs = run_engine
    beamline, st = station_on(tmp_path, cell)
    beamline.faults.arm("beam_loss", skip=2)
    with pytest.raises(FailedStatus) as info:
        RE(scan(st))
    assert isinstance(info.value.__cause__, BeamLoss)
    assert [d for n, d in docs if n == "stop"][0]["exit_status"] == "fail"


def test_detector_fault_raises_through_the_run_engine(tmp_path, cell, run_engine):
    RE, docs = run_engine
    beamline, st = station_on(tmp_path, cell)
    RE.install_suspender(beam_suspender(st.beam))  # a beam suspender does not hide a camera failure
    beamline.faults.arm("detector_fault", skip=DARKS + 1)
    with pytest.raises(FailedStatus) as info:
        RE(scan(st))
    assert isinstance(info.value.__cause__, DetectorFault)
    stop = [d for n, d in docs if n == "stop"][0]
    assert stop["exit_status"] == "fail"
    assert st.detector._file is None  # unstaged: the file is closed
    with h5py.File(st.detector.file_path.get(), "r") as f:
        assert f[DATA_PATH].shape[0] == DARKS + 1


def test_insitu_refuses_bad_protocols_before_any_message(tmp_path, cell, run_engine):
    RE, docs = run_engine
    beamline, st = station_on(tmp_path, cell)
    devices = (st.potentiostat, st.detector, st.rotation, st.sample_stage, st.shutter)
    for kwargs, exc in [({"c_rate": 20.0}, LimitError), ({"interval_min": 0.0}, ValueError),
                        ({"n_timepoints": 0}, ValueError), ({"ocv_hold_min": -1.0}, ValueError),
                        ({"n_projections": 0}, ValueError)]:
        with pytest.raises(exc):
            next(insitu_tomography(*devices, **kwargs))
    assert docs == [] and beamline.cell_state()["mode"] == "ocv" and beamline.mode_log[1:] == []
    with pytest.raises(ValueError, match="BeamMonitor"):
        beam_suspender(st.detector)


def test_plans_are_deterministic_messages_without_hardware(tmp_path, cell):
    _, st = station_on(tmp_path, cell)
    messages = list(scan(st))
    commands = Counter(msg.command for msg in messages)
    assert sum(m.command == "trigger" and m.obj is st.detector for m in messages) == DARKS + FLATS + N
    assert commands["open_run"] == 1
    assert commands["checkpoint"] == 3 and commands["stage"] == 1 and commands["unstage"] == 1
