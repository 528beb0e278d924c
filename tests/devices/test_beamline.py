"""Tomography station devices: device-side limits, Status completion, frames by station state, HDF5 file
references, potentiostat model, faults, EPICS definitions."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from ophyd.utils.errors import LimitError

from devices import beamline_sim
from devices.beamline import (DATA_PATH, FRAME_DATASETS, RESOURCE_SPEC, AcquisitionAborted, AreaDetector, BeamMonitor,
                              HDF5FrameHandler, Potentiostat, RotationStage, SampleStage, Shutter, TomoStation)
from devices.beamline_sim import BeamlineFaults, SimulatedBeamline, open_circuit_voltage
from simulators.tomography import DARK_LEVEL, QUALITIES, BeamLoss, DetectorFault, ElectrodeCell


@pytest.fixture(scope="session")
def cell() -> ElectrodeCell:
    return ElectrodeCell(seed=0)  # about a second to build: shared


def make_station(tmp_path, cell, **kwargs) -> tuple[SimulatedBeamline, TomoStation, list]:
    """A station on a fresh beamline whose backend records every setpoint it receives."""
    beamline = SimulatedBeamline(tmp_path, cell=cell, **{"time_compression": None, **kwargs})
    received: list[tuple[str, str, object]] = []
    write = beamline.write_setpoint

    def spy(device, name, value):
        received.append((device, name, value))
        write(device, name, value)

    beamline.write_setpoint = spy
    station = TomoStation.simulated(beamline, quality="lq")
    received.clear()  # the detector's initial quality
    return beamline, station, received


@pytest.fixture
def station(tmp_path, cell):
    return make_station(tmp_path, cell)


# ---------------------------------------------------------------------------------------------------- motion
@pytest.mark.parametrize("bad", [360.5, -361.0, float("nan"), float("inf"), True, "ten"])
def test_rotation_refuses_out_of_range_angles_before_the_backend(station, bad):
    beamline, st, received = station
    with pytest.raises(LimitError):
        st.rotation.set(bad)
    with pytest.raises(LimitError):
        st.rotation.user_setpoint.put(bad)
    assert received == [] and beamline.rotation_deg == 0.0 and st.rotation.position == 0.0


def test_rotation_moves_and_reports_where_it_is(station):
    beamline, st, received = station
    status = st.rotation.set(-90.0)
    status.wait(2)
    assert status.success and st.rotation.position == -90.0 and beamline.rotation_deg == -90.0
    assert ("rotation", "user_setpoint", -90.0) in received
    assert beamline.now() == pytest.approx(90.0 / 90.0)  # 90 deg at 90 deg/s: one lab second
    with pytest.raises(LimitError, match="velocity"):
        st.rotation.velocity.set(1000.0)
    assert st.rotation.limits == (-360.0, 360.0)


def test_rotation_move_takes_compressed_time_and_stop_leaves_it_on_the_way(tmp_path, cell):
    beamline, st, _ = make_station(tmp_path, cell, time_compression=100.0)
    st.rotation.velocity.set(10.0).wait(1)
    t0 = time.perf_counter()
    status = st.rotation.set(180.0)  # 18 lab s -> 0.18 s wall
    status.wait(30)
    elapsed = time.perf_counter() - t0
    # compressed, not skipped: at least the 0.18 s of compressed time; the upper bound only separates compressed
    # from uncompressed lab time (18 s), so a loaded machine cannot trip it
    assert 0.8 * 0.18 <= elapsed < 0.5 * 18.0
    assert status.success and st.rotation.position == 180.0 and beamline.rotation_deg == 180.0

    # back at 0.1 deg/s: 1800 lab s = 18 s wall, so the move is certainly under way when it is stopped
    st.rotation.velocity.set(0.1).wait(1)
    lab_before = beamline.now()
    status = st.rotation.set(0.0)
    assert not status.done and st.rotation.done.get() == 0  # set() returns while the axis moves
    time.sleep(0.05)  # let it go some way (any time short of 18 s leaves it on the way)
    st.rotation.stop()
    with pytest.raises(AcquisitionAborted, match="stopped"):
        status.wait(10)
    lab_after = beamline.now()
    travelled = 180.0 - st.rotation.position
    # strictly between start and target, and no farther than the velocity allows in the lab time it had
    assert 0.0 < travelled < 180.0 and travelled <= 0.1 * (lab_after - lab_before) + 1e-9
    assert beamline.rotation_deg == st.rotation.position and st.rotation.done.get() == 1


def test_sample_stage_named_positions_move_the_sample_out_of_the_beam(station):
    beamline, st, received = station
    assert beamline.sample_in_beam and st.sample_stage.position_name.get() == "in"
    st.sample_stage.set("out").wait(2)
    assert st.sample_stage.position == 5.0 and st.sample_stage.position_name.get() == "out"
    assert not beamline.sample_in_beam
    st.sample_stage.set(1.0).wait(2)
    assert st.sample_stage.position_name.get() == "" and not beamline.sample_in_beam
    st.sample_stage.set("in").wait(2)
    assert beamline.sample_in_beam
    n = len(received)
    with pytest.raises(LimitError, match="unknown position"):
        st.sample_stage.set("sideways")
    with pytest.raises(LimitError):
        st.sample_stage.set(30.0)
    assert len(received) == n and beamline.sample_x_mm == 0.0
    with pytest.raises(LimitError):
        SampleStage(beamline=beamline, positions={"out": 40.0})


def test_shutter_opens_closes_and_refuses_other_commands(station):
    beamline, st, received = station
    assert st.shutter.state.get() == "closed" and not beamline.shutter_open
    st.shutter.set("open").wait(2)
    assert st.shutter.state.get() == "open" and beamline.shutter_open
    with pytest.raises(LimitError, match="open"):
        st.shutter.set("opened")
    assert [v for d, n, v in received if d == "shutter"] == ["open"] and beamline.shutter_open
    st.shutter.set("close").wait(2)
    assert not beamline.shutter_open


# ---------------------------------------------------------------------------------------------------- potentiostat
def test_open_circuit_voltage_is_monotonic():
    v = [open_circuit_voltage(s) for s in np.linspace(0, 1, 51)]
    assert np.all(np.diff(v) > 0) and 3.0 < v[0] < v[-1] < 4.5


@pytest.mark.parametrize("step, exc", [({"mode": "discharge"}, LimitError),
                                       ({"mode": "cc_charge", "c_rate": 0.0}, LimitError),
                                       ({"mode": "cc_charge", "c_rate": 20.0}, LimitError),
                                       ({"mode": "ocv", "duration_s": -1.0}, LimitError),
                                       ({"mode": "ocv", "volts": 4.2}, ValueError), ({"c_rate": 1.0}, ValueError),
                                       ("ocv", ValueError)])
def test_potentiostat_refuses_bad_steps_before_anything_is_written(station, step, exc):
    beamline, st, received = station
    with pytest.raises(exc):
        st.potentiostat.set(step)
    assert received == [] and beamline.cell_state()["mode"] == "ocv"


def test_charging_integrates_current_into_soc_and_open_circuit_relaxes(station):
    beamline, st, _ = station
    p = st.potentiostat
    status = p.set({"mode": "cc_charge", "c_rate": 2.0, "duration_s": 900.0})
    status.wait(2)
    assert status.success
    assert p.soc.get() == pytest.approx(2.0 * 900 / 3600)  # dSOC/dt = C-rate / 3600
    assert p.current_ma.get() == pytest.approx(2.0 * beamline.capacity_mah)
    assert p.capacity_mah.get() == pytest.approx(0.5 * beamline.capacity_mah)
    assert p.voltage.get() > open_circuit_voltage(0.5) + 0.05  # IR drop while charging
    p.set({"mode": "ocv", "duration_s": 2.0}).wait(2)
    early = p.voltage.get()
    p.set({"mode": "ocv", "duration_s": 120.0}).wait(2)  # same mode: its clock keeps running
    assert p.mode_elapsed_s.get() == pytest.approx(120.0)
    assert p.soc.get() == pytest.approx(0.5) and p.current_ma.get() == 0.0
    assert early > p.voltage.get() and p.voltage.get() == pytest.approx(open_circuit_voltage(0.5), abs=1e-3)
    before = beamline.now()
    p.set({"mode": "ocv", "duration_s": 60.0}).wait(2)  # already held 120 s: done at once
    assert beamline.now() == before and p.control_mode.get() == "ocv"


def test_charging_stops_at_full_charge(station):
    beamline, st, _ = station
    st.potentiostat.set({"mode": "cc_charge", "c_rate": 1.0, "duration_s": 7200.0}).wait(2)
    assert st.potentiostat.soc.get() == 1.0 and st.potentiostat.current_ma.get() == 0.0


# ---------------------------------------------------------------------------------------------------- detector
def acquire(st: TomoStation) -> dict:
    st.detector.trigger().wait(10)
    return st.detector.read()


def test_frames_follow_the_station_state_and_land_in_one_referenced_hdf5_file(station):
    beamline, st, _ = station
    det = st.detector
    det.stage()
    path = Path(det.file_path.get())
    readings = {"dark": acquire(st)}
    st.shutter.set("open").wait(2)
    st.sample_stage.set("out").wait(2)
    readings["flat"] = acquire(st)
    st.sample_stage.set("in").wait(2)
    st.rotation.set(45.0).wait(2)
    readings["projection"] = acquire(st)
    docs = list(det.collect_asset_docs())
    assert list(det.collect_asset_docs()) == []  # handed over once
    det.unstage()

    assert [r["detector_image_key"]["value"] for r in readings.values()] == [2, 1, 0]
    assert [name for name, _ in docs] == ["resource", "datum"]  # the resource once, then each frame's datum
    resource, datum = docs[0][1], docs[1][1]
    assert resource["spec"] == RESOURCE_SPEC and resource["resource_kwargs"] == {"frame_per_point": 1}
    assert Path(resource["root"]) / resource["resource_path"] == path and path.parent == beamline.output_dir
    assert datum["datum_id"] == readings["projection"]["detector_image"]["value"]
    assert datum["datum_kwargs"] == {"point_number": 2} and datum["resource"] == resource["uid"]

    with h5py.File(path, "r") as f:
        frames = f[DATA_PATH][()]
        assert frames.shape == (3, QUALITIES["lq"].n_rows, QUALITIES["lq"].fov_px) and frames.dtype == np.float32
        assert list(f[FRAME_DATASETS["image_key"]][()]) == [2, 1, 0]
        assert f[FRAME_DATASETS["rotation_angle"]][2] == 45.0 and f["/entry"].attrs["quality"] == "lq"
    dark, flat, projection = (frame.mean() for frame in frames)
    assert dark < projection < flat  # attenuation by the sample, between the dark level and the open beam
    assert flat == pytest.approx(QUALITIES["lq"].dose + DARK_LEVEL, rel=0.05)  # open beam on top of the dark level
    handler = HDF5FrameHandler(path, **resource["resource_kwargs"])
    try:
        np.testing.assert_array_equal(handler(**datum["datum_kwargs"]), frames[2])
    finally:
        handler.close()

    desc = det.describe()["detector_image"]
    assert desc["external"] == "FILESTORE:" and desc["shape"] == [16, 128] and desc["dtype"] == "array"


def test_projections_see_the_state_of_charge(station):
    beamline, st, _ = station
    st.shutter.set("open").wait(2)
    st.detector.stage()
    empty = acquire(st)["detector_frame_number"]["value"]
    st.potentiostat.set({"mode": "cc_charge", "c_rate": 1.0, "duration_s": 3600.0}).wait(2)
    full = acquire(st)["detector_frame_number"]["value"]
    path = st.detector.file_path.get()
    st.detector.unstage()
    with h5py.File(path, "r") as f:
        frames = f[DATA_PATH][()]
    # swelling and the dense phase attenuate more at full charge
    assert frames[full].mean() < 0.97 * frames[empty].mean()


def test_detector_needs_staging_and_keeps_its_quality_while_staged(station):
    _, st, _ = station
    with pytest.raises(RuntimeError, match="stage"):
        st.detector.trigger()
    st.detector.quality.set("hq").wait(1)
    assert st.detector.frame_shape == (16, 128)
    with pytest.raises(LimitError):
        st.detector.quality.set("mq")
    st.detector.stage()
    try:
        with pytest.raises(RuntimeError, match="quality"):
            st.detector.quality.set("lq")
        assert st.detector.voxel_nm.get() == 50.0
    finally:
        st.detector.unstage()


def test_detector_fault_fails_the_frame_and_writes_nothing(station):
    beamline, st, _ = station
    beamline.faults.arm("detector_fault", skip=1)
    st.detector.stage()
    acquire(st)
    with pytest.raises(DetectorFault, match="detector_fault"):
        st.detector.trigger().wait(5)
    path = st.detector.file_path.get()
    st.detector.unstage()
    with h5py.File(path, "r") as f:
        assert f[DATA_PATH].shape[0] == 1
    assert beamline.faults.pending("detector_fault") == 0


def test_beam_loss_drops_and_restores_the_beam_and_fails_an_unattended_frame(station):
    beamline, st, _ = station
    changes = []
    st.beam.lost.subscribe(lambda value, **_: changes.append(value), run=False)
    beamline.faults.arm("beam_loss")
    st.shutter.set("open").wait(2)
    st.detector.stage()
    try:
        st.sample_stage.set("out").wait(2)
        acquire(st)  # a flat does not count: the loss is armed for a projection
        st.sample_stage.set("in").wait(2)
        with pytest.raises(BeamLoss, match="beam_loss"):
            st.detector.trigger().wait(5)
    finally:
        st.detector.unstage()
    assert changes == [1, 0] and st.beam.current_ma.get() > 0 and not beamline.beam_lost


def test_pause_during_a_beam_loss_gives_the_frame_up_without_a_reading(station, monkeypatch):
    beamline, st, _ = station
    # Wall-clock windows of the simulator, widened so that a loaded machine cannot race them: an unattended frame
    # fails BEAM_LOSS_GRACE_S after the loss (here: long after the pause below), and the outage lasts
    # MIN_OUTAGE_WALL_S (here: long enough that the pause certainly comes while the beam is down).
    monkeypatch.setattr(beamline_sim, "BEAM_LOSS_GRACE_S", 60.0)
    monkeypatch.setattr(beamline_sim, "MIN_OUTAGE_WALL_S", 1.0)
    timeline: list[tuple[str, int]] = []
    lost, back = threading.Event(), threading.Event()

    def on_beam(value, **_):
        timeline.append(("beam_lost", value))
        (lost if value else back).set()

    st.beam.lost.subscribe(on_beam, run=False)
    beamline.faults.arm("beam_loss")
    st.shutter.set("open").wait(2)
    st.detector.stage()
    try:
        status = st.detector.trigger()
        assert lost.wait(10), "the armed beam loss never happened"
        assert not status.done  # the frame waits for a suspender to take it over
        timeline.append(("pause", int(beamline.beam_lost)))
        st.detector.pause()  # what a RunEngine does when a suspender trips
        status.wait(10)
        assert status.success and list(st.detector.collect_asset_docs()) == [("resource", st.detector._resource)]
        st.detector.resume()
        assert back.wait(10), "the beam did not come back by itself"
        assert timeline == [("beam_lost", 1), ("pause", 1), ("beam_lost", 0)]  # paused while the beam was down
        assert st.beam.lost.get() == 0
        acquire(st)
        path = st.detector.file_path.get()
    finally:
        st.detector.unstage()
    with h5py.File(path, "r") as f:
        assert f[DATA_PATH].shape[0] == 1 and f[FRAME_DATASETS["attempt"]][0] == 1


def test_beamline_faults_count_qualifying_frames():
    faults = BeamlineFaults({"detector_fault": 1})
    faults.arm("beam_loss", 2, skip=2)
    assert faults.pending("beam_loss") == 2
    assert [faults.due("beam_loss") for _ in range(5)] == [False, False, True, True, False]
    with pytest.raises(DetectorFault):
        faults.maybe_raise("detector_fault", "frame 0")
    faults.maybe_raise("detector_fault")  # consumed
    with pytest.raises(ValueError, match="known kinds"):
        faults.arm("pump_fault")
    with pytest.raises(ValueError):
        faults.arm("beam_loss", skip=-1)


def test_frames_are_deterministic_given_the_beamline_seed(tmp_path, cell):
    frames = []
    for run in range(2):
        beamline, st, _ = make_station(tmp_path / str(run), cell, seed=5)
        st.shutter.set("open").wait(2)
        st.detector.stage()
        acquire(st)
        path = st.detector.file_path.get()
        st.detector.unstage()
        with h5py.File(path, "r") as f:
            frames.append(f[DATA_PATH][0])
    np.testing.assert_array_equal(frames[0], frames[1])


# ---------------------------------------------------------------------------------------------------- EPICS
def test_epics_mode_is_defined_without_an_ioc():
    prefix = "XF:32ID-TOMO{"
    devices = {cls: cls(prefix + cls.__name__ + "}", mode="epics") for cls in
               (RotationStage, SampleStage, Shutter, AreaDetector, Potentiostat, BeamMonitor)}
    assert all(d.mode == "epics" and d.beamline is None for d in devices.values())
    assert RotationStage.pv_names("R:")["user_setpoint"] == ("R:.VAL", None)
    assert Potentiostat.pv_names("P:")["control_mode"] == ("P:Mode:RBV", "P:Mode:SP")
    assert AreaDetector.pv_names("D:")["file_path"][0] == "D:HDF1:FullFileName_RBV"
    assert "image" not in AreaDetector.pv_names("D:")  # the datum id is soft
    assert BeamMonitor.pv_names("B:")["lost"][0] == "B:Lost-Sts"
    with pytest.raises(ValueError, match="prefix"):
        Shutter(mode="epics")
    with pytest.raises(ValueError, match="SimulatedBeamline"):
        Shutter(mode="sim")


def test_the_beamline_seed_draws_the_detector_noise_and_the_cell_is_the_sample(tmp_path):
    """What ``tomo dry-run --noise-seed`` relies on: another seed, the same cell, another noise draw."""
    cell = ElectrodeCell(seed=7)
    beamlines = [SimulatedBeamline(tmp_path / str(s), seed=s, cell=cell, time_compression=None)
                 for s in (7, 7, 1000)]
    for beamline in beamlines:
        beamline.shutter_open = True  # sample in the beam: a projection
    a, b, c = (beamline.acquire_frame(QUALITIES["lq"], 1.0, threading.Event()).data for beamline in beamlines)
    np.testing.assert_array_equal(a, b)  # a beamline replays identically
    assert not np.array_equal(a, c) and abs(a.mean() - c.mean()) < 0.05 * a.mean()  # same sample, other noise


def test_a_relative_output_folder_is_referenced_by_its_absolute_path(tmp_path, cell, monkeypatch):
    # documents are read later from any working directory (Tiled, `tomo runs`): a relative Resource root broke them
    monkeypatch.chdir(tmp_path)
    beamline = SimulatedBeamline("beamline/raw", cell=cell, time_compression=None)
    st = TomoStation.simulated(beamline, quality="lq")
    st.detector.stage()
    acquire(st)
    resource = dict(st.detector.collect_asset_docs())["resource"]
    st.detector.unstage()
    assert resource["root"] == (tmp_path / "beamline" / "raw").as_posix()
    assert Path(st.detector.file_path.get()) == Path(resource["root"]) / resource["resource_path"]
    monkeypatch.chdir(tmp_path / "beamline")
    assert (Path(resource["root"]) / resource["resource_path"]).is_file()
