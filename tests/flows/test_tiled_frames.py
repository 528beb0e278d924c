"""flows.tiled_frames through flows.run_store: tomography scans written to the embedded Tiled catalog and read
back through Tiled. The frames of each stream must be exactly the file rows the plan ended with: after a beam
loss the repeated scan, not the interrupted attempt; with streams interleaved in one file, each stream's own rows."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
# Tiled and the TiledWriter (bluesky-tiled-plugins since bluesky 1.16) are dependencies (pyproject.toml), so no
# skip here: a release that moves the writer must fail these tests rather than pass them by skipping.
import bluesky_tiled_plugins.writing.tiled_writer  # noqa: F401
import tiled.server  # noqa: F401
from bluesky import RunEngine

from devices import beamline_sim
from devices.beamline import DATA_PATH, FRAME_DATASETS, TomoStation
from devices.beamline_sim import SimulatedBeamline
from devices.tomo_plans import beam_suspender, tomo_scan
from flows.run_store import BACKUP_DIR, RunStore
from simulators.tomography import ElectrodeCell

N, DARKS, FLATS = 12, 3, 2
IMAGE_KEY = {"dark": 2, "flat": 1, "primary": 0}


def interleaved_flats(st: TomoStation, n_projections: int = 6, flat_every: int = 2):
    """A flat before every ``flat_every`` projections: the two streams' frames alternate in the one file."""
    @bpp.stage_decorator([st.detector])
    @bpp.run_decorator(md={"plan_name": "interleaved_flats"})
    def inner():
        yield from bps.mv(st.shutter, "open")
        for i in range(n_projections):
            if i % flat_every == 0:
                yield from bps.mv(st.sample_stage, "out")
                yield from bps.trigger_and_read([st.detector, st.sample_stage], name="flat")
                yield from bps.mv(st.sample_stage, "in")
            yield from bps.mv(st.rotation, 180.0 * i / n_projections)
            yield from bps.trigger_and_read([st.detector, st.rotation], name="primary")
        yield from bps.mv(st.shutter, "close")

    yield from bps.mv(st.detector.quality, "lq")
    return (yield from inner())


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A scan interrupted by a beam loss and repeated, and a plan with interleaved streams, written through
    ``store.writer``; returns the data dir and ``{name: (uid, scan file)}``."""
    data = tmp_path_factory.mktemp("tomo-store")
    beamline = SimulatedBeamline(data / "raw", cell=ElectrodeCell(seed=0), time_compression=None)
    st = TomoStation.simulated(beamline, quality="lq")
    files: list[str] = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: files.append(str(Path(doc["root"]) / doc["resource_path"]))
                 if name == "resource" else None)
    RE.install_suspender(beam_suspender(st, sleep=0.05))
    grace = beamline_sim.BEAM_LOSS_GRACE_S
    beamline_sim.BEAM_LOSS_GRACE_S = 30.0  # a slow RunEngine on a loaded machine still suspends in time
    with RunStore.open(data) as store:
        RE.subscribe(store.writer)
        try:
            beamline.faults.arm("beam_loss", skip=5)  # the beam drops during projection 5
            (interrupted,) = RE(tomo_scan(st.detector, st.rotation, st.sample_stage, st.shutter, n_projections=N,
                                          n_darks=DARKS, n_flats=FLATS, quality="lq"))
            (interleaved,) = RE(interleaved_flats(st))
        finally:
            beamline_sim.BEAM_LOSS_GRACE_S = grace
    assert beamline.faults.pending("beam_loss") == 0
    return data, {"interrupted": (interrupted, files[0]), "interleaved": (interleaved, files[1])}


@pytest.fixture(scope="module")
def store(recorded):
    with RunStore.open(recorded[0]) as reopened:
        yield reopened


def scan_file(path: str) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {"data": f[DATA_PATH][()], **{k: f[d][()] for k, d in FRAME_DATASETS.items()}}


def test_an_interrupted_scan_reads_back_as_the_repeated_complete_scan(recorded, store):
    _, runs = recorded
    uid, path = runs["interrupted"]
    f = scan_file(path)
    last = f["attempt"] == f["attempt"].max()
    assert f["attempt"].max() >= 1 and len(f["data"]) > DARKS + FLATS + N  # the file keeps both attempts
    for stream, count in (("dark", DARKS), ("flat", FLATS), ("primary", N)):
        frames = store.read_frames(uid, stream)
        assert frames.shape == (count, *f["data"].shape[1:]) and frames.dtype == np.float32
        np.testing.assert_array_equal(frames, f["data"][last & (f["image_key"] == IMAGE_KEY[stream])])
    np.testing.assert_array_equal(store.read_image(uid, -1), f["data"][-1])
    assert not any((recorded[0] / "tiled" / BACKUP_DIR).iterdir()), "Tiled refused documents (backup written)"


def test_the_summary_pairs_each_frame_with_its_file_row_and_the_readings_of_its_last_event(recorded, store):
    _, runs = recorded
    uid, path = runs["interrupted"]
    f = scan_file(path)
    summary = store.run_summary(uid)
    assert summary["exit_status"] == "success" and summary["plan_name"] == "tomo_scan"
    projections = [i for i in summary["images"] if i["stream"] == "primary"]
    assert [i["index"] for i in projections] == list(range(N))
    assert {i["path"] for i in summary["images"]} == {path}
    rows = [i["file_row"] for i in projections]
    assert rows == [i["detector_frame_number"] for i in projections]  # the frame the kept event referenced
    assert [f["image_key"][r] for r in rows] == [0] * N and min(f["attempt"][rows]) == f["attempt"].max()
    assert [i["rotation_readback"] for i in projections] == pytest.approx([180.0 * k / N for k in range(N)])
    assert [i["stream"] for i in summary["images"]].count("dark") == DARKS
    # the interrupted attempt's darks, flats and 5 projections were taken again
    assert summary["repeated_events"] == {"dark": DARKS, "flat": FLATS, "primary": 5}
    assert store.run_summary(runs["interleaved"][0])["repeated_events"] == {}


def test_interleaved_streams_each_read_their_own_rows_of_the_file(recorded, store):
    _, runs = recorded
    uid, path = runs["interleaved"]
    f = scan_file(path)
    flats, projections = store.read_frames(uid, "flat"), store.read_frames(uid, "primary")
    assert len(flats) == 3 and len(projections) == 6 and len(f["data"]) == 9
    np.testing.assert_array_equal(flats, f["data"][f["image_key"] == 1])
    np.testing.assert_array_equal(projections, f["data"][f["image_key"] == 0])
    rows = [i["file_row"] for i in store.run_summary(uid)["images"] if i["stream"] == "primary"]
    assert rows == [1, 2, 4, 5, 7, 8]


def test_unknown_stream_and_files_outside_the_store_fail_clearly(recorded, store, tmp_path):
    uid, _ = recorded[1]["interrupted"]
    with pytest.raises(KeyError, match="no stream 'electrochemistry'"):
        store.read_frames(uid, "electrochemistry")  # a scan without a potentiostat
    with pytest.raises(KeyError, match=r"primary holds the frames \['detector_image'\]"):
        store.read_image(uid, key="sem_image")
    with RunStore.open(tmp_path / "elsewhere") as other:  # a catalog whose data dir does not hold the scans
        RE = RunEngine({})
        RE.subscribe(other.writer)
        beamline = SimulatedBeamline(recorded[0] / "raw-2", cell=ElectrodeCell(seed=0), time_compression=None)
        st = TomoStation.simulated(beamline, quality="lq")
        (outside,) = RE(tomo_scan(st.detector, st.rotation, st.sample_stage, st.shutter, n_projections=4,
                                  n_darks=1, n_flats=1, quality="lq"))
        with pytest.raises(PermissionError, match="image_roots="):
            other.read_frames(outside)
