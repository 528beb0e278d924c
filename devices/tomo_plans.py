"""Bluesky plans of the in-situ tomography station: generators that only yield messages.

Arguments are JSON-able (numbers, strings, ``md`` a dict) so bluesky-queueserver can validate and run the plans
by name; devices are passed by name there. Every argument is checked before the first message.
Annotations stay objects (no ``from __future__ import annotations``): the queue server evaluates them to
validate queue items, and a string annotation naming a device class fails that (``flows/deploy/qserver/``).

Documents of :func:`tomo_scan` (one run per scan)
-------------------------------------------------
start
    ``plan_name``, ``plan_args``, ``detectors``, ``motors``, ``quality``, ``voxel_nm``, ``dose``,
    ``frame_shape`` (``[n_rows, n_cols]``), ``n_projections``, ``arc_deg``, ``angles`` (deg, the ``n_projections``
    angles ``arc_deg * k / n_projections``), ``n_darks``, ``n_flats``, ``soc`` (the potentiostat's state of charge
    when the scan started; None without a potentiostat), ``voltage`` and ``scan_file`` (the detector's HDF5 file,
    as it reports it once staged) -- plus the caller's ``md`` (which may add
    keys, never override these). :func:`insitu_tomography` adds ``timepoint``, ``n_timepoints``, ``insitu_id``,
    ``c_rate``, ``interval_min``, ``ocv_hold_min`` and ``ocv_rest_s`` (lab seconds the cell had rested at open
    circuit when the scan started).
streams
    ``"electrochemistry"`` (only with a potentiostat): the potentiostat's readings at the start and the end of
    the scan. ``"dark"``: ``n_darks`` events, shutter closed. ``"flat"``: ``n_flats`` events, sample out, shutter
    open (with the stage position). ``"primary"``: ``n_projections`` events, sample in, one per angle (with the
    rotation readback). Each frame event carries ``{det}_image`` (datum id), ``{det}_image_key`` (NXtomo:
    0 projection, 1 flat, 2 dark, as the station's state made it), ``{det}_frame_number`` and ``{det}_file_path``.
resource / datum
    One Resource per scan (spec ``MORPHLOOP_HDF5_FRAME``, the scan's HDF5 file, ``{"frame_per_point": 1}``) and
    one Datum per frame (``{"point_number": i}``), emitted before the event that references them.

Beam loss: suspend, then repeat the whole scan
----------------------------------------------
Install :func:`beam_suspender` on the RunEngine. When the beam drops, the suspender trips, the RunEngine pauses
the detector (the frame in progress is given up), waits until the beam is back (plus ``sleep``), and rewinds to
the last checkpoint. :func:`tomo_scan` has exactly one checkpoint inside its run, at the start of the scan, and
none between frames, so the rewind repeats the whole scan: darks, flats and every projection. A tomogram is only
as good as its flat-field correction: after a beam loss the beam comes back with another intensity profile and
the optics and the detector have drifted, so flats taken before the loss do not normalise projections taken
after it, and projections from before and after do not form one consistent sinogram. The run stays open and
ends with a complete scan; the interrupted frames stay in the document stream: the repeated events reuse the
``seq_num`` of the ones they replace (bluesky's rewind), so a consumer keeps the last event per ``seq_num`` and
stream. In the HDF5 file the frames of the last ``attempt`` are the complete scan. Outside the run the plans
place checkpoints before each potentiostat step and after each scan, so a suspension between scans only repeats
the current step, and re-asserting a running potentiostat step does not restart its clock (see
:class:`~devices.beamline.Potentiostat`). Without a suspender a beam loss fails the run with ``FailedStatus``
(``__cause__``: ``BeamLoss``); a detector fault always does (``DetectorFault``).

Message order of :func:`tomo_scan`: validate (no message) -> checkpoint -> ``mv(detector.quality)`` -> read the
potentiostat -> stage(detector) -> read its file path -> open_run -> **checkpoint** -> [electrochemistry] ->
shutter close -> darks -> sample out, shutter open -> flats -> sample in -> (rotate, trigger_and_read) x n ->
[electrochemistry] -> shutter close -> close_run -> checkpoint -> unstage.
"""

import math
from typing import Any
from uuid import uuid4

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.suspenders import SuspendBoolHigh
from bluesky.utils import MsgGenerator

from devices.beamline import AreaDetector, BeamMonitor, Potentiostat, RotationStage, SampleStage, Shutter
from simulators.tomography import QUALITIES

#: Most frames of one kind a scan may ask for.
MAX_FRAMES = 20000


def _check_count(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_FRAMES:
        raise ValueError(f"{name} must be an integer in [{low}, {MAX_FRAMES}], got {value!r}")
    return value


def _check_number(name: str, value: Any, low: float, high: float, *, open_low: bool = False) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (low < value if open_low else low <= value) and value <= high)
    if not ok:
        raise ValueError(f"{name} must be a number in {'(' if open_low else '['}{low}, {high}], got {value!r}")
    return float(value)


def _check_quality(quality: Any) -> str:
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {sorted(QUALITIES)}, got {quality!r}")
    return quality


def _check_md(md: Any) -> dict[str, Any]:
    if md is not None and not isinstance(md, dict):
        raise ValueError(f"md must be a dict or None, got {type(md).__name__}")
    return dict(md or {})


def projection_angles(n_projections: int, arc_deg: float) -> list[float]:
    """The ``n_projections`` angles (deg) ``arc_deg * k / n_projections``, ``k = 0 .. n - 1`` (the end of the arc
    is not repeated: for 180 deg it is the first angle's mirror, for 360 deg the first angle itself)."""
    return [arc_deg * k / n_projections for k in range(n_projections)]


def check_scan_args(rotation: RotationStage, n_projections: Any, arc_deg: Any, n_flats: Any, n_darks: Any,
                    quality: Any) -> list[float]:
    """Validate a scan's arguments (before any message); returns the angles.

    Raises
    ------
    ValueError
        A count, the arc or the quality out of range.
    ophyd.utils.errors.LimitError
        An angle outside the rotation stage's limits.
    """
    _check_count("n_projections", n_projections, 2)
    _check_number("arc_deg", arc_deg, 0.0, 360.0, open_low=True)
    _check_count("n_flats", n_flats, 1)
    _check_count("n_darks", n_darks, 1)
    _check_quality(quality)
    angles = projection_angles(n_projections, float(arc_deg))
    for angle in (angles[0], angles[-1]):
        rotation.user_setpoint.check_value(angle)
    return angles


def _frames(detector: AreaDetector, others: list[Any], n: int, stream: str) -> MsgGenerator[None]:
    for _ in range(n):
        yield from bps.trigger_and_read([detector, *others], name=stream)


def tomo_scan(detector: AreaDetector, rotation: RotationStage, sample_stage: SampleStage, shutter: Shutter, *,
              n_projections: int = 180, arc_deg: float = 180.0, n_flats: int = 10, n_darks: int = 10,
              quality: str = "hq", potentiostat: Potentiostat | None = None,
              md: dict[str, Any] | None = None) -> MsgGenerator[str]:
    """One tomographic scan in one run: darks, flats, then projections over the arc.

    Parameters
    ----------
    detector, rotation, sample_stage, shutter : devices of :mod:`devices.beamline`
    n_projections : int
        Projections (2 or more), at :func:`projection_angles` ``(n_projections, arc_deg)``.
    arc_deg : float
        Rotation arc in (0, 360] deg (180 for parallel beam; the paper's scans use 360).
    n_flats, n_darks : int
        Flat fields (sample out, shutter open) and dark fields (shutter closed), at least 1 each.
    quality : {"hq", "lq"}
        Acquisition quality (:data:`simulators.tomography.QUALITIES`): voxel size, dose, frame shape.
    potentiostat : Potentiostat, optional
        When given, the cell's state of charge and voltage go into the start document and its readings into
        stream ``"electrochemistry"``.
    md : dict, optional
        Extra start metadata.

    Returns
    -------
    str
        The run's uid.

    Raises
    ------
    ValueError, ophyd.utils.errors.LimitError
        Before the first message, for bad arguments.
    bluesky.utils.FailedStatus
        A detector fault (``__cause__``: ``DetectorFault``), or a beam loss with no suspender installed.

    Notes
    -----
    Documents, checkpoints and the beam-loss behaviour: see the module notes. Only one checkpoint inside the
    run, at its start: a suspension or pause repeats the whole scan.
    """
    angles = check_scan_args(rotation, n_projections, arc_deg, n_flats, n_darks, quality)
    extra = _check_md(md)
    q = QUALITIES[quality]
    plan_args = {"detector": detector.name, "rotation": rotation.name, "sample_stage": sample_stage.name,
                 "shutter": shutter.name, "n_projections": n_projections, "arc_deg": arc_deg, "n_flats": n_flats,
                 "n_darks": n_darks, "quality": quality,
                 "potentiostat": potentiostat.name if potentiostat is not None else None}

    yield from bps.checkpoint()  # a suspension before the run repeats only this preparation
    yield from bps.mv(detector.quality, quality)
    soc = voltage = None
    if potentiostat is not None:
        soc = yield from bps.rd(potentiostat.soc)
        voltage = yield from bps.rd(potentiostat.voltage)
    start = {"plan_name": "tomo_scan", "plan_args": plan_args, **extra,
             "detectors": [detector.name], "motors": [rotation.name], "quality": quality, "voxel_nm": q.voxel_nm,
             "dose": q.dose, "frame_shape": [q.n_rows, q.fov_px], "n_projections": n_projections,
             "arc_deg": float(arc_deg), "angles": angles, "n_darks": n_darks, "n_flats": n_flats, "soc": soc,
             "voltage": voltage, "hints": {"dimensions": [([rotation.readback.name], "primary")]}}

    def electrochemistry() -> MsgGenerator[None]:
        if potentiostat is not None:
            yield from bps.trigger_and_read([potentiostat], name="electrochemistry")

    def scan() -> MsgGenerator[None]:
        yield from bps.checkpoint()  # the only checkpoint in the run: a resume repeats the whole scan
        yield from electrochemistry()
        yield from bps.mv(shutter, "close")
        yield from _frames(detector, [], n_darks, "dark")
        yield from bps.mv(sample_stage, "out")
        yield from bps.mv(shutter, "open")
        yield from _frames(detector, [sample_stage], n_flats, "flat")
        yield from bps.mv(sample_stage, "in")
        for angle in angles:  # no checkpoint here: a beam loss must not splice two halves of a scan
            yield from bps.mv(rotation, angle)
            yield from bps.trigger_and_read([detector, rotation], name="primary")
        yield from electrochemistry()
        yield from bps.mv(shutter, "close")

    def staged() -> MsgGenerator[str]:
        scan_file = yield from bps.rd(detector.file_path)  # opened by stage(): a run can be found by its file
        uid = yield from bpp.run_wrapper(scan(), md={**start, "scan_file": scan_file or None})
        yield from bps.checkpoint()  # later suspensions never replay this closed run
        return uid

    return (yield from bpp.stage_wrapper(staged(), [detector]))


def insitu_tomography(potentiostat: Potentiostat, detector: AreaDetector, rotation: RotationStage,
                      sample_stage: SampleStage, shutter: Shutter, *, c_rate: float = 1.0, interval_min: float = 10.0,
                      n_timepoints: int = 3, ocv_hold_min: float = 1.0, quality: str = "lq",
                      n_projections: int = 180, arc_deg: float = 180.0, n_flats: int = 10, n_darks: int = 10,
                      md: dict[str, Any] | None = None) -> MsgGenerator[list[str]]:
    """In-situ tomography while the cell charges (paper 001): one scan per timepoint, each at open circuit.

    For each timepoint ``k``: switch the potentiostat to open circuit and hold it ``ocv_hold_min`` (relaxation,
    1 min in the paper) -> :func:`tomo_scan` (its own run, with ``timepoint=k`` and the cell's state of charge in
    the start document) -> unless it was the last timepoint, charge at ``c_rate`` for ``interval_min``. So
    timepoint 0 images the cell as found (the paper's T0) and the state of charge grows by
    ``c_rate * interval_min / 60`` between timepoints (until the cell is full). The plan ends after the last scan
    with the cell at open circuit.

    Parameters
    ----------
    potentiostat, detector, rotation, sample_stage, shutter : devices of :mod:`devices.beamline`
    c_rate : float
        Charging rate (C) between scans, within the potentiostat's limits (0.01-10).
    interval_min : float
        Charging time between scans (lab minutes, compressed in simulation), > 0.
    n_timepoints : int
        Scans (1 or more).
    ocv_hold_min : float
        Open-circuit rest before each scan (lab minutes), >= 0.
    quality, n_projections, arc_deg, n_flats, n_darks :
        As in :func:`tomo_scan` (LQ by default: the in-situ scans of the paper).
    md : dict, optional
        Extra start metadata of every scan.

    Returns
    -------
    list of str
        The scans' run uids, in timepoint order.

    Raises
    ------
    ValueError, ophyd.utils.errors.LimitError
        Before the first message, for bad arguments.
    bluesky.utils.FailedStatus
        As :func:`tomo_scan`.

    Notes
    -----
    Checkpoints before each potentiostat step (and each scan's own) make the plan resumable anywhere: a
    suspension during a step replays the step, which waits only for what is left of it.
    """
    check_scan_args(rotation, n_projections, arc_deg, n_flats, n_darks, quality)
    potentiostat.c_rate.check_value(c_rate)
    _check_number("interval_min", interval_min, 0.0, 1e4, open_low=True)
    _check_count("n_timepoints", n_timepoints, 1)
    _check_number("ocv_hold_min", ocv_hold_min, 0.0, 1e3)
    extra = _check_md(md)
    insitu_id = str(uuid4())
    protocol = {"insitu_id": insitu_id, "n_timepoints": n_timepoints, "c_rate": float(c_rate),
                "interval_min": float(interval_min), "ocv_hold_min": float(ocv_hold_min)}
    uids = []
    for k in range(n_timepoints):
        yield from bps.checkpoint()
        yield from bps.mv(potentiostat, {"mode": "ocv", "duration_s": 60.0 * ocv_hold_min})
        rest = yield from bps.rd(potentiostat.mode_elapsed_s)
        uid = yield from tomo_scan(detector, rotation, sample_stage, shutter, n_projections=n_projections,
                                   arc_deg=arc_deg, n_flats=n_flats, n_darks=n_darks, quality=quality,
                                   potentiostat=potentiostat,
                                   md={**extra, **protocol, "timepoint": k, "ocv_rest_s": rest})
        uids.append(uid)
        if k < n_timepoints - 1:
            yield from bps.checkpoint()
            yield from bps.mv(potentiostat, {"mode": "cc_charge", "c_rate": float(c_rate),
                                             "duration_s": 60.0 * interval_min})
    return uids


def beam_suspender(beam: BeamMonitor, *, sleep: float = 0.0) -> SuspendBoolHigh:
    """A ``SuspendBoolHigh`` on ``beam.lost``, for ``RE.install_suspender``: the run suspends while the beam is
    down and, ``sleep`` wall seconds after it is back, resumes by repeating the interrupted scan (module notes).

    ``beam`` may also be a :class:`~devices.beamline.TomoStation` (its ``beam`` is used).
    """
    beam = getattr(beam, "beam", beam)
    if not hasattr(beam, "lost"):
        raise ValueError(f"beam_suspender needs a BeamMonitor (with a 'lost' signal), got {beam!r}")
    return SuspendBoolHigh(beam.lost, sleep=sleep,
                           tripped_message=f"{beam.name}: X-ray beam lost; the scan repeats from its start once "
                                           f"the beam is back")
