"""flows.run_store: real ``synthesize_and_image`` runs written to the embedded Tiled catalog, then read back
from disk by a new RunStore (metadata search, exit status, the SEM's TIFF files read through Tiled)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

# Tiled and the TiledWriter (bluesky-tiled-plugins) are dependencies: no import skips (see
# tests/flows/test_tiled_frames.py).
import tifffile
from bluesky import RunEngine
from bluesky.utils import FailedStatus

from devices.lab import SimulatedLab
from devices.plans import synthesize_and_image
from devices.reactor import Reactor
from devices.sem import SEM
from flows.run_store import BACKUP_DIR, CATALOG_FILE, RunNotFound, RunStore, StoreNotReadable, StoreNotWritable

SHAPE = (128, 128)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Four runs written through ``store.writer``, then the store is closed: two that succeed (experiments E1,
    E2), one imaged by a second lab whose files lie outside the data directory, and one whose SEM times out.
    Returns the data dir, the run uids, the RunEngine's documents per run, the closed store and the warnings
    the store logged."""
    data = tmp_path_factory.mktemp("run-store")
    lab = SimulatedLab(data / "images", time_compression=1e6)
    reactor, sem = Reactor(lab=lab), SEM(lab=lab, image_shape=SHAPE)
    elsewhere = SimulatedLab(tmp_path_factory.mktemp("elsewhere"), time_compression=1e6)
    warnings = RecordingHandler()
    logging.getLogger("flows.run_store").addHandler(warnings)
    store = RunStore.open(data)
    RE = RunEngine({})
    RE.subscribe(store.writer)
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    try:
        RE(synthesize_and_image(reactor, sem, {"ph": 10.2, "atmosphere": "sealed"}, md={"experiment_id": "E1"}))
        RE(synthesize_and_image(reactor, sem, {"ph": 11.0}, md={"experiment_id": "E2"}))
        RE(synthesize_and_image(Reactor(lab=elsewhere), SEM(lab=elsewhere, image_shape=SHAPE), {},
                                sample_id="X-1", magnifications=["high"], md={"experiment_id": "E-outside"}))
        lab.faults.arm("sem_timeout")
        with pytest.raises(FailedStatus):
            RE(synthesize_and_image(reactor, sem, {}, md={"experiment_id": "E-fail"}))
    finally:
        store.close()
        logging.getLogger("flows.run_store").removeHandler(warnings)
    runs: dict[str, list[tuple[str, dict]]] = {}
    for name, doc in docs:
        if name == "start":
            current = runs.setdefault(doc["uid"], [])
        current.append((name, doc))
    return data, list(runs), runs, store, [r.getMessage() for r in warnings.records]


class RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def store(recorded):
    """A new RunStore over the same data directory, opened from disk."""
    with RunStore.open(recorded[0]) as reopened:
        yield reopened


def sem_frames(run_docs):
    """``(path, data)`` of each SEM frame event, as the RunEngine emitted it."""
    primary = {d["uid"] for n, d in run_docs if n == "descriptor" and d["name"] == "primary"}
    return [d["data"] for n, d in run_docs if n == "event" and d["descriptor"] in primary]


def test_runs_are_found_by_experiment_sample_and_condition(recorded, store):
    _, (first, second, _, _), _, _, _ = recorded
    assert store.find(experiment_id="E1") == [first]
    assert store.find(experiment_id="E2") == [second]
    assert store.find(sample_id="S0002") == [second]
    assert store.find(experiment_id="E1", sample_id="S0002") == []
    assert store.find(conditions__atmosphere="sealed") == [first]
    assert store.find(experiment_id="nope") == []
    with pytest.raises(ValueError, match="runs\\(\\)"):
        store.find()


def test_every_run_is_listed_oldest_first(recorded, store):
    _, uids, _, _, _ = recorded
    assert len(uids) == 4 and store.runs() == uids
    assert not any((recorded[0] / "tiled" / BACKUP_DIR).iterdir()), "Tiled refused documents (backup written)"
    assert (recorded[0] / "tiled" / CATALOG_FILE).is_file()


def test_summary_holds_start_metadata_exit_status_and_the_sem_files(recorded, store):
    _, (first, _, _, _), runs, _, _ = recorded
    start = next(d for n, d in runs[first] if n == "start")
    summary = store.run_summary(first)
    assert summary["uid"] == first and summary["plan_name"] == "synthesize_and_image"
    assert summary["sample_id"] == "S0001" and summary["experiment_id"] == "E1"
    assert summary["conditions"] == start["conditions"] and summary["conditions"]["atmosphere"] == "sealed"
    assert summary["magnifications"] == ["low", "high"] and summary["start"]["uid"] == first
    assert summary["exit_status"] == "success"
    assert set(summary["streams"]) == {"synthesis", "primary"}

    frames = sem_frames(runs[first])
    resources = {d["uid"]: d for n, d in runs[first] if n == "resource"}
    datums = {d["datum_id"]: d for n, d in runs[first] if n == "datum"}
    assert [(i["stream"], i["key"], i["index"]) for i in summary["images"]] == [("primary", "sem_image", 0),
                                                                               ("primary", "sem_image", 1)]
    for image, frame in zip(summary["images"], frames, strict=True):
        resource = resources[datums[frame["sem_image"]]["resource"]]
        assert image["path"] == frame["sem_image_path"] == str(Path(resource["root"]) / resource["resource_path"])
        assert Path(image["path"]).is_file() and Path(image["path"]).is_relative_to(recorded[0] / "images")
        assert image["sem_magnification"] == frame["sem_magnification"]
        assert image["sem_pixel_size_um"] == pytest.approx(frame["sem_pixel_size_um"])
        assert image["sem_sample_id"] == "S0001"
    assert [i["sem_magnification"] for i in summary["images"]] == [3000.0, 15000.0]


def test_images_read_through_tiled_match_the_files_the_sem_wrote(recorded, store):
    _, (first, second, _, _), runs, _, _ = recorded
    for uid in (first, second):
        low, high = (frame["sem_image_path"] for frame in sem_frames(runs[uid]))
        for frame, path in [(0, low), ("high", high)]:
            image = store.read_image(uid, frame)
            expected = tifffile.imread(path)
            assert image.shape == SHAPE and image.dtype == np.uint8
            np.testing.assert_array_equal(image, expected)
    assert not np.array_equal(store.read_image(first, "low"), store.read_image(first, -1, key="sem_image"))
    with pytest.raises(KeyError, match="medium"):
        store.read_image(first, "medium")
    with pytest.raises(IndexError, match="2 frames"):
        store.read_image(first, 2)
    with pytest.raises(KeyError, match="no frames primary/nope"):
        store.read_image(first, key="nope")


def test_files_outside_the_data_directory_are_catalogued_with_a_warning_and_refused_by_read_image(recorded,
                                                                                                  store):
    data, (_, _, outside, _), runs, _, warnings = recorded
    (path,) = (frame["sem_image_path"] for frame in sem_frames(runs[outside]))
    assert not Path(path).is_relative_to(data)
    assert len(warnings) == 1 and "outside the folders this run store serves" in warnings[0]
    assert [i["path"] for i in store.run_summary(outside)["images"]] == [path]
    with pytest.raises(PermissionError, match="image_roots="):
        store.read_image(outside, "high")


def test_a_failed_run_is_stored_with_its_failure(recorded, store):
    _, (_, _, _, failed), _, _, _ = recorded
    summary = store.run_summary(failed)
    assert store.find(experiment_id="E-fail") == [failed]
    assert summary["exit_status"] == "fail" and summary["reason"]
    assert summary["images"] == []


def test_unknown_run_and_closed_store_fail_clearly(recorded, store):
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        store.run_summary("nope")
    closed = recorded[3]
    with pytest.raises(RuntimeError, match="closed"):
        closed.runs()
    closed.close()  # idempotent


def test_opening_in_an_unwritable_place_raises_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreNotWritable, match="cannot write the run store in .*a-file/data/tiled .*directory you can"):
        RunStore.open(blocker / "data")
    with pytest.raises(StoreNotWritable, match="directory you can"):
        RunStore.open(blocker)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_opening_in_a_read_only_directory_raises_a_clear_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StoreNotWritable, match="Permission denied"):
            RunStore.open(locked)
    finally:
        locked.chmod(0o700)


def test_a_catalog_file_that_is_not_a_database_is_refused_before_any_server_starts(tmp_path):
    (tmp_path / "tiled").mkdir()
    (tmp_path / "tiled" / CATALOG_FILE).write_bytes(b"half-written\x00garbage")
    with pytest.raises(StoreNotReadable, match="not a SQLite database.*move it aside"):
        RunStore.open(tmp_path)
    assert (tmp_path / "tiled" / CATALOG_FILE).read_bytes() == b"half-written\x00garbage"  # left as it was


def test_analysis_results_are_attached_to_a_run_and_read_back(recorded, store):
    _, (first, second, _, _), _, _, _ = recorded
    store.annotate(first, "analysis", {"d50_um": 3.2, "tool": "describe"})
    assert store.run_summary(first)["annotations"] == {"analysis": {"d50_um": 3.2, "tool": "describe"}}
    assert store.run_summary(first)["start"]["uid"] == first  # the run's own documents are untouched
    assert store.run_summary(second)["annotations"] == {}
    with pytest.raises(ValueError, match="'stop' holds the run's own document"):
        store.annotate(first, "stop", {})
    with pytest.raises(RunNotFound):
        store.annotate("nope", "analysis", {})
