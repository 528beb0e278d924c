"""SEM: sample hand-over, limits, file-backed frames referenced the area-detector way, faults, EPICS definition."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from ophyd.utils.errors import LimitError

from devices.lab import SampleError, SimulatedLab
from devices.sem import RESOURCE_SPEC, SEM, NoSampleLoaded
from simulators.conditions import DEFAULT_CONDITIONS
from simulators.faults import AcquisitionTimeout

SHAPE = (128, 128)


@pytest.fixture
def lab(tmp_path) -> SimulatedLab:
    lab = SimulatedLab(tmp_path, time_compression=None)
    lab.make_sample("S0001", DEFAULT_CONDITIONS)
    return lab


@pytest.fixture
def sem(lab) -> SEM:
    return SEM(lab=lab, image_shape=SHAPE)


def test_trigger_without_a_sample_is_a_clear_error(sem):
    with pytest.raises(NoSampleLoaded, match="load_sample"):
        sem.trigger()


def test_loading_an_unknown_sample_names_the_known_ones(sem):
    with pytest.raises(SampleError, match="S0001"):
        sem.load_sample("S0999")
    assert sem.sample_id.get() == ""


@pytest.mark.parametrize("attr, value", [("magnification", 50.0), ("magnification", 2e5),
                                         ("accelerating_voltage_kv", 31.0), ("working_distance_mm", 1.0)])
def test_settings_enforce_their_limits(sem, lab, attr, value):
    signal = getattr(sem, attr)
    signal.set(signal.get()).wait(2)  # an in-range value reaches the backend ...
    with pytest.raises(LimitError, match=attr):
        signal.set(value)
    assert lab.setpoints["sem"][attr] != value and signal.get() != value  # ... an out-of-range one never does


def test_trigger_writes_a_tiff_and_references_it(sem, lab):
    sem.load_sample("S0001").wait(2)
    sem.magnification.set(15000.0).wait(2)
    sem.trigger().wait(10)
    reading = sem.read()
    path = Path(reading["sem_image_path"]["value"])
    assert path.is_file() and path.parent.parent == lab.output_dir
    image = tifffile.imread(path)
    assert image.shape == SHAPE and image.dtype == np.uint8 and image.std() > 0
    assert reading["sem_pixel_size_um"]["value"] > 0 and reading["sem_sample_id"]["value"] == "S0001"

    key = sem.describe()["sem_image"]
    assert key["external"] == "FILESTORE:" and key["dtype"] == "array" and key["shape"] == list(SHAPE)
    docs = list(sem.collect_asset_docs())
    assert [name for name, _ in docs] == ["resource", "datum"]
    resource, datum = docs[0][1], docs[1][1]
    assert resource["spec"] == RESOURCE_SPEC
    assert Path(resource["root"]) / resource["resource_path"] == path
    assert datum["resource"] == resource["uid"] and datum["datum_id"] == reading["sem_image"]["value"]
    assert list(sem.collect_asset_docs()) == []  # each document is handed over once


def test_documents_through_a_run_engine(sem, tmp_path):
    docs = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, doc)))

    def plan():
        yield from bps.open_run()
        yield from bps.mv(sem.sample_id, "S0001", sem.magnification, 15000.0)
        yield from bps.trigger_and_read([sem])
        yield from bps.close_run()

    RE(plan())
    names = [name for name, _ in docs]
    assert names == ["start", "descriptor", "resource", "datum", "event", "stop"]
    by_name = dict(docs)
    assert by_name["resource"]["run_start"] == by_name["start"]["uid"]
    event = by_name["event"]
    assert event["data"]["sem_image"] == by_name["datum"]["datum_id"] and event["filled"] == {"sem_image": False}
    assert Path(event["data"]["sem_image_path"]).is_file()


def test_sem_timeout_fails_the_status(sem, lab):
    lab.faults.arm("sem_timeout")
    sem.load_sample("S0001").wait(2)
    with pytest.raises(AcquisitionTimeout, match="sem_timeout"):
        sem.trigger().wait(10)
    assert list(sem.collect_asset_docs()) == [] and not any(lab.output_dir.rglob("*.tif"))


def test_epics_mode_is_defined_without_an_ioc():
    sem = SEM("XF:31ID-EM{SEM:1}", mode="epics")
    pvs = SEM.pv_names("XF:31ID-EM{SEM:1}")
    assert pvs["magnification"][0] == "XF:31ID-EM{SEM:1}Mag:SP"
    assert pvs["image_path"][0].endswith("FullFileName_RBV") and "image" not in pvs  # the datum id is soft
    assert sem.mode == "epics"


def test_a_relative_output_folder_is_referenced_by_its_absolute_path(tmp_path, monkeypatch):
    # documents are read later from any working directory (Tiled, reports): a relative Resource root broke them
    monkeypatch.chdir(tmp_path)
    lab = SimulatedLab("lab-data", time_compression=None)
    lab.make_sample("S0001", DEFAULT_CONDITIONS)
    sem = SEM(lab=lab, image_shape=SHAPE)
    sem.load_sample("S0001").wait(2)
    sem.trigger().wait(10)
    resource = dict(sem.collect_asset_docs())["resource"]
    assert resource["root"] == (tmp_path / "lab-data").as_posix()
    monkeypatch.chdir(tmp_path / "lab-data")
    assert (Path(resource["root"]) / resource["resource_path"]).is_file()
