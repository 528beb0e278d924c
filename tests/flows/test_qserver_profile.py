"""``flows/deploy/qserver/``: the tomography station as bluesky-queueserver loads it (startup code, the plan and
device list queue items are validated against, user groups), and a queue item run the way the manager's worker
runs it. No Redis is needed: these are the profile functions the manager itself calls."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flows.tomo import read_scan_file, scan_attempts

profile_ops = pytest.importorskip("bluesky_queueserver.manager.profile_ops")

PROFILE = Path(__file__).resolve().parents[2] / "flows" / "deploy" / "qserver"
DEVICES = ["potentiostat", "detector", "rotation", "sample_stage", "shutter"]


@pytest.fixture
def station(tmp_path, monkeypatch):
    """The startup code's namespace, writing into ``tmp_path``."""
    monkeypatch.setenv("MORPHLOOP_BEAMLINE_DIR", str(tmp_path))
    return profile_ops.load_worker_startup_code(startup_dir=str(PROFILE))


@pytest.fixture(scope="module")
def allowed():
    plans, devices = profile_ops.load_allowed_plans_and_devices(
        path_existing_plans_and_devices=str(PROFILE / "existing_plans_and_devices.yaml"),
        path_user_group_permissions=str(PROFILE / "user_group_permissions.yaml"))
    return plans, devices


def _validate(item, allowed, group="primary"):
    plans, devices = allowed
    return profile_ops.validate_plan({**item, "user_group": group}, allowed_plans=plans[group],
                                     allowed_devices=devices[group])


def test_the_shipped_plan_and_device_list_is_what_the_startup_code_defines(station, tmp_path):
    plans, devices, *_ = profile_ops.existing_plans_and_devices_from_nspace(nspace=station)
    profile_ops.save_existing_plans_and_devices(existing_plans=plans, existing_devices=devices,
                                                file_dir=str(tmp_path), file_name="generated.yaml")
    shipped = (PROFILE / "existing_plans_and_devices.yaml").read_text()
    assert (tmp_path / "generated.yaml").read_text() == shipped, (
        "flows/deploy/qserver/existing_plans_and_devices.yaml is stale: regenerate it with "
        "`qserver-list-plans-devices --startup-dir . --file-name existing_plans_and_devices.yaml` in that folder")
    assert sorted(plans) == ["insitu_tomography", "tomo_scan"]
    assert {"beam", *DEVICES} <= set(devices)


def test_queue_items_are_checked_before_they_reach_the_run_engine(allowed):
    good = {"name": "insitu_tomography", "args": DEVICES, "kwargs": {"n_timepoints": 2, "c_rate": 2.0}}
    assert _validate(good, allowed) == (True, "")
    assert _validate({"name": "tomo_scan", "args": DEVICES[1:], "kwargs": {"quality": "hq"}}, allowed)[0]
    bad = {"wrong device for a role": {**good, "args": ["potentiostat", "shutter", *DEVICES[2:4], "detector"]},
           "no such device": {**good, "args": [*DEVICES[:1], "camera", *DEVICES[2:]]},
           "a count given as text": {**good, "kwargs": {"n_timepoints": "two"}},
           "an unknown quality": {**good, "kwargs": {"quality": "medium"}},
           "an unknown parameter": {**good, "kwargs": {"n_scans": 2}}}
    for why, item in bad.items():
        ok, message = _validate(item, allowed)
        assert not ok, why
        assert "Plan validation failed" in message, why
    ok, message = _validate({"name": "count", "args": [["detector"]]}, allowed)
    assert not ok and "not in the list of allowed plans" in message


def test_a_queued_insitu_series_survives_a_beam_loss_and_every_scan_is_processed(station, allowed, tmp_path,
                                                                                 prefect_harness):
    plans, devices = allowed
    item = {"name": "insitu_tomography", "args": DEVICES, "user_group": "primary",
            "kwargs": {"n_timepoints": 2, "n_projections": 16, "n_flats": 2, "n_darks": 2, "interval_min": 5.0}}
    prepared = profile_ops.prepare_plan(item, plans_in_nspace=profile_ops.plans_from_nspace(station),
                                        devices_in_nspace=profile_ops.devices_from_nspace(station),
                                        allowed_plans=plans, allowed_devices=devices, nspace=station)
    assert prepared["args"][1] is station["detector"]  # names became the namespace's devices
    beamline = station["_beamline"]
    beamline.faults.arm("beam_loss", skip=5)  # the first scan loses the beam at its 6th projection
    uids = station["RE"](prepared["callable"](*prepared["args"], **prepared["kwargs"]))
    assert len(uids) == 2 and beamline.faults.pending("beam_loss") == 0
    results = station["end_of_run"].wait(timeout=300)
    assert sorted(results) == sorted(uids)
    for result in results.values():
        assert result["quality"] == "lq" and Path(result["png"]).is_file()
        assert Path(result["scan"]).stem + "_enhanced.h5" in {p.name for p in (tmp_path / "processed").iterdir()}
    documents = [json.loads(line) for line in (tmp_path / "documents.jsonl").read_text().splitlines()]
    stops = [d["doc"] for d in documents if d["name"] == "stop"]
    assert [s["exit_status"] for s in stops] == ["success", "success"]
    starts = [d["doc"] for d in documents if d["name"] == "start"]
    assert [s["timepoint"] for s in starts] == [0, 1] and starts[1]["soc"] > starts[0]["soc"]
    # both runs are in the profile's Tiled catalog; the interrupted scan reads as its complete repeat
    store = station["_run_store"]
    assert store.runs() == list(uids)
    first = store.run_summary(uids[0])
    assert first["exit_status"] == "success" and first["start"]["timepoint"] == 0
    processed = first["annotations"]["end_of_run"]  # the processing's figures, attached to the run
    assert processed["scan"] == results[uids[0]]["scan"] and "enhanced" in processed
    scan = read_scan_file(first["images"][0]["path"])
    assert scan_attempts(first["images"][0]["path"]) == 2
    np.testing.assert_array_equal(store.read_frames(uids[0]), scan.projections)
    np.testing.assert_array_equal(store.read_frames(uids[0], "flat"), scan.flats)


def test_a_failed_or_empty_run_is_skipped_not_processed(tmp_path):
    from flows.tomo_flow import EndOfRunProcessing

    processing = EndOfRunProcessing(tmp_path)
    processing("start", {"uid": "a", "quality": "lq"})
    processing("stop", {"run_start": "a", "exit_status": "success"})
    processing("start", {"uid": "b", "quality": "lq"})
    processing("resource", {"root": str(tmp_path), "resource_path": "scan.h5"})
    processing("stop", {"run_start": "b", "exit_status": "abort", "reason": "operator"})
    assert processing.results == {} and processing.wait() == {}
    assert "no frames" in processing.skipped["a"] and "abort" in processing.skipped["b"]


def test_a_processing_failure_is_raised_by_wait_not_lost(tmp_path, monkeypatch):
    import flows.tomo_flow as tomo_flow

    def broken(scan_file, *args):
        raise RuntimeError(f"cannot reconstruct {scan_file}")

    monkeypatch.setattr(tomo_flow, "tomo_end_of_run", broken)
    processing = tomo_flow.EndOfRunProcessing(tmp_path)
    processing("start", {"uid": "a", "quality": "lq"})
    processing("resource", {"root": str(tmp_path), "resource_path": "scan.h5"})
    processing("stop", {"run_start": "a", "exit_status": "success"})
    assert list(processing.results) == ["a"]
    with pytest.raises(RuntimeError, match="cannot reconstruct .*scan.h5"):
        processing.wait(timeout=30)
