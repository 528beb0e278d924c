"""bluesky-queueserver startup code: the in-situ tomography station on the simulated beamline.

    start-re-manager --startup-dir flows/deploy/qserver --keep-re \
        --existing-plans-devices flows/deploy/qserver/existing_plans_and_devices.yaml \
        --user-group-permissions flows/deploy/qserver/user_group_permissions.yaml
    qserver environment open
    qserver queue add plan '{"name": "insitu_tomography", "args": ["potentiostat", "detector", "rotation",
        "sample_stage", "shutter"], "kwargs": {"n_timepoints": 3, "interval_min": 15, "c_rate": 2}}'
    qserver queue start

Devices are passed by name. Every Bluesky document is appended to ``$MORPHLOOP_BEAMLINE_DIR/documents.jsonl``
(default ``data/beamline``) and written to the Tiled catalog in its ``tiled/`` folder (``morphloop tomo runs
--data-dir $MORPHLOOP_BEAMLINE_DIR`` lists the runs), frames go to HDF5 files under ``raw/``, and each scan that
closes successfully is reconstructed, enhanced with InDI (``$MORPHLOOP_INDI_MODEL``, default the shipped model)
and quantified by the Prefect flow ``tomo-end-of-run`` in a background thread, into ``processed/`` and, as the
annotation ``end_of_run``, onto its run in Tiled. A beam loss suspends the run and
the interrupted scan is repeated. After changing the plans or devices, regenerate the list the manager checks
queue items against: ``qserver-list-plans-devices --startup-dir flows/deploy/qserver --file-name
existing_plans_and_devices.yaml`` (run inside ``flows/deploy/qserver``).
"""
import functools
import os
from pathlib import Path

from bluesky import RunEngine
from bluesky_queueserver import parameter_annotation_decorator

import devices.tomo_plans as _plans
from devices.beamline import TomoStation
from devices.beamline_sim import SimulatedBeamline
from flows.run_store import RunStore
from flows.simulate import DocumentLog
from flows.tomo_flow import EndOfRunProcessing
from simulators.tomography import QUALITIES

_data_dir = Path(os.environ.get("MORPHLOOP_BEAMLINE_DIR", "data/beamline"))
_data_dir.mkdir(parents=True, exist_ok=True)
# lab time runs 600x faster than the wall clock: a 15-min charging interval takes 1.5 s
_beamline = SimulatedBeamline(_data_dir / "raw", seed=int(os.environ.get("MORPHLOOP_BEAMLINE_SEED", "7")),
                              time_compression=float(os.environ.get("MORPHLOOP_TIME_COMPRESSION", "600")))
_station = TomoStation.simulated(_beamline, quality="lq")
detector, rotation, sample_stage = _station.detector, _station.rotation, _station.sample_stage
shutter, potentiostat, beam = _station.shutter, _station.potentiostat, _station.beam

RE = RunEngine({})
RE.subscribe(DocumentLog(_data_dir / "documents.jsonl"))
_run_store = RunStore.open(_data_dir)  # Tiled catalog in tiled/: `morphloop tomo runs --data-dir $DIR` lists it
RE.subscribe(_run_store.writer)
end_of_run = EndOfRunProcessing(_data_dir / "processed", model_dir=os.environ.get("MORPHLOOP_INDI_MODEL"),
                                store=_run_store)  # each scan's figures also attached to its run in Tiled
RE.subscribe(end_of_run)
RE.install_suspender(_plans.beam_suspender(beam))


# The queue's plans: devices.tomo_plans's plans with each device parameter limited to the device of that role,
# so the manager rejects a queue item that names a wrong device before it reaches the RunEngine.
def _queue_plan(plan, device_parameters, optional=()):
    parameters = {name: {"annotation": f"typing.Optional[{name}_device]" if name in optional else f"{name}_device",
                         "devices": {f"{name}_device": [name]}} for name in device_parameters}
    parameters["quality"] = {"annotation": "Quality", "enums": {"Quality": sorted(QUALITIES)}}

    @parameter_annotation_decorator({"parameters": parameters})
    @functools.wraps(plan)
    def queued(*args, **kwargs):
        return (yield from plan(*args, **kwargs))
    return queued


tomo_scan = _queue_plan(_plans.tomo_scan, ("detector", "rotation", "sample_stage", "shutter", "potentiostat"),
                        optional=("potentiostat",))
insitu_tomography = _queue_plan(_plans.insitu_tomography,
                                ("potentiostat", "detector", "rotation", "sample_stage", "shutter"))
