"""Bluesky plans that make and image samples: generators that only yield messages.

Arguments are JSON-able (conditions as a dict, sample ids and magnification names as strings) so
bluesky-queueserver can validate and run the plans by name; devices are passed by name there.
Annotations stay objects (no ``from __future__ import annotations``): the queue server evaluates them to
validate queue items, and a string annotation naming a device class fails that (``flows/deploy/qserver/``).

Documents
---------
start
    ``plan_name``, ``plan_args``, ``detectors``, ``conditions`` (all eight, validated), ``sample_id``, and for
    imaging plans ``magnifications`` (names or numbers as given) -- plus the caller's ``md``.
events
    ``synthesize``: one event with the reactor's readbacks (``reactor_ph_readback``, ...,
    ``reactor_sample_id``); its descriptor's configuration holds the setpoints.
    ``image_sample``: one event per magnification with ``sem_image`` (datum id), ``sem_image_path`` (the TIFF),
    ``sem_magnification``, ``sem_pixel_size_um``, ``sem_sample_id``.
    ``synthesize_and_image``: one run with both: the reactor event in stream ``"synthesis"``, the images in
    ``"primary"``.
resource / datum
    One Resource (spec ``MORPHLOOP_TIFF``, ``root`` + ``resource_path`` = the file) and one Datum per image,
    emitted before the event that references them.

Faults and resuming
-------------------
A device fault fails the device's Status, so by default it raises through the RunEngine as
``bluesky.utils.FailedStatus`` whose ``__cause__`` is the :class:`~simulators.faults.LabFault` (the run closes
with ``exit_status="fail"``). For unattended operation the reactor latches a fault on its interlock signal
``reactor.fault`` and, when built with ``fault_hold_s > 0``, holds the Status instead of failing it. Install
:func:`fault_suspenders` on the RunEngine: the suspender fires on ``fault=1``, the RunEngine stops the reactor
(which discards the faulted batch, no sample is registered), waits until an operator fixes the cause and
calls ``reactor.clear_fault()``, then rewinds to the ``checkpoint`` placed just before the reactor is set and
makes the batch again under the same sample id (the plan re-asserts ``reactor.next_sample_id`` after the
checkpoint, because every batch consumes that request whatever its outcome). The lab refuses to register a
sample id twice, so a resumed plan can never produce a sample twice. ``RE.request_pause()`` / ``RE.resume()``
rewind to the same checkpoint. Imaging has a checkpoint before each frame (a resumed plan re-takes only that
frame, as a new file); an SEM timeout is not held: it fails the run, and re-imaging a sample is cheap.

Message order of :func:`synthesize`: validate (no message) -> ``mv(reactor.next_sample_id, id)`` or
``rd(reactor.next_sample_id)`` -> open_run -> checkpoint -> ``mv(reactor.next_sample_id, id)`` ->
``set(reactor, conditions)`` + wait -> trigger_and_read(reactor) -> close_run.
"""

from typing import Any, Sequence

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.suspenders import SuspendBoolHigh
from bluesky.utils import MsgGenerator

from devices.reactor import Reactor
from devices.sem import MAGNIFICATION_PRESETS, SEM
from simulators.conditions import validate_conditions

DEFAULT_MAGNIFICATIONS = ("low", "high")


def magnification_value(magnification: str | float) -> float:
    """The magnification (x) of a preset name (:data:`~devices.sem.MAGNIFICATION_PRESETS`) or a number.

    Raises
    ------
    ValueError
        An unknown name or a non-positive number (the message lists the presets).
    """
    if isinstance(magnification, str):
        if magnification not in MAGNIFICATION_PRESETS:
            raise ValueError(f"unknown magnification {magnification!r}; use one of {sorted(MAGNIFICATION_PRESETS)} "
                             f"or a number of x")
        return MAGNIFICATION_PRESETS[magnification]
    if isinstance(magnification, bool) or not isinstance(magnification, (int, float)) or not magnification > 0:
        raise ValueError(f"magnification must be a preset name {sorted(MAGNIFICATION_PRESETS)} or a positive "
                         f"number, got {magnification!r}")
    return float(magnification)


def _check_magnifications(magnifications: Sequence[str | float]) -> list[str | float]:
    if isinstance(magnifications, (str, bytes)) or not len(magnifications):
        raise ValueError(f"magnifications must be a non-empty list such as ['low', 'high'], got {magnifications!r}")
    for m in magnifications:
        magnification_value(m)
    return list(magnifications)


def _check_sample_id(sample_id: str | None) -> None:
    if sample_id is not None and (not isinstance(sample_id, str) or not sample_id):
        raise ValueError(f"sample_id must be a non-empty string or None (the lab picks one), got {sample_id!r}")


def _start_md(plan_name: str, plan_args: dict[str, Any], detectors: list[str], ours: dict[str, Any],
              md: dict[str, Any] | None) -> dict[str, Any]:
    """Start metadata: the caller's ``md`` may add keys but never overrides the conditions or the sample id."""
    return {"plan_name": plan_name, "plan_args": plan_args, "detectors": detectors, **(md or {}), **ours}


def _claim_sample_id(reactor: Reactor, sample_id: str | None) -> MsgGenerator[str]:
    """Before the run: check a given id with the reactor (a taken id fails here, before the run opens), or
    read the id the lab will give the next batch."""
    if sample_id is not None:
        yield from bps.mv(reactor.next_sample_id, sample_id)
        return sample_id
    return (yield from bps.rd(reactor.next_sample_id, default_value=""))


def _synthesis_steps(reactor: Reactor, conditions: dict[str, Any], sample_id: str, stream: str) -> MsgGenerator[str]:
    """Inside an open run: make one batch under ``sample_id`` and record the readbacks; returns the new id.

    Every batch consumes the reactor's ``next_sample_id`` request, so it is set again after the checkpoint: a
    batch redone after a suspension or pause gets the id the start document announced.
    """
    yield from bps.checkpoint()  # a suspension or pause rewinds here and makes the batch again
    yield from bps.mv(reactor.next_sample_id, sample_id)
    yield from bps.abs_set(reactor, conditions, wait=True)
    yield from bps.trigger_and_read([reactor], name=stream)
    return (yield from bps.rd(reactor.sample_id, default_value=sample_id))


def _imaging_steps(sem: SEM, sample_id: str, magnifications: list[str | float], stream: str) -> MsgGenerator[list[str]]:
    """Inside an open run: load the sample, then one referenced frame per magnification; returns the paths."""
    yield from bps.mv(sem.sample_id, sample_id)
    paths = []
    for magnification in magnifications:
        yield from bps.mv(sem.magnification, magnification_value(magnification))
        yield from bps.checkpoint()  # a suspension re-takes only the current frame
        reading = yield from bps.trigger_and_read([sem], name=stream)
        paths.append(reading[sem.image_path.name]["value"] if reading else "")
    return paths


def synthesize(reactor: Reactor, conditions: dict[str, Any], *, sample_id: str | None = None,
               md: dict[str, Any] | None = None) -> MsgGenerator[str]:
    """Make one sample at ``conditions`` in one run.

    Parameters
    ----------
    reactor : Reactor
    conditions : dict
        Synthesis conditions by name (see :data:`simulators.conditions.CONDITIONS`); missing ones take their
        defaults. Validated before any message is yielded.
    sample_id : str, optional
        Id of the new sample; by default the lab's next sequential id (``S0001``, ...).
    md : dict, optional
        Extra start metadata.

    Returns
    -------
    str
        The id of the sample made (the reactor's ``sample_id`` readback).

    Raises
    ------
    simulators.conditions.ConditionError
        Before anything moves, for unknown or out-of-range conditions.
    bluesky.utils.FailedStatus
        When the batch faults (``__cause__``: PumpFault or PhProbeDrift) and no suspender takes over.
    """
    conds = validate_conditions(conditions)
    _check_sample_id(sample_id)
    sid = yield from _claim_sample_id(reactor, sample_id)
    start = _start_md("synthesize", {"reactor": reactor.name, "conditions": conds, "sample_id": sample_id},
                      [reactor.name], {"conditions": conds, "sample_id": sid}, md)

    @bpp.run_decorator(md=start)
    def run() -> MsgGenerator[str]:
        return (yield from _synthesis_steps(reactor, conds, sid, "primary"))

    return (yield from run())


def image_sample(sem: SEM, sample_id: str, magnifications: Sequence[str | float] = DEFAULT_MAGNIFICATIONS, *,
                 md: dict[str, Any] | None = None) -> MsgGenerator[list[str]]:
    """Image one sample at each magnification in one run; frames are written as files and referenced.

    Parameters
    ----------
    sem : SEM
    sample_id : str
        A sample made in the lab (the reactor's ``sample_id`` after :func:`synthesize`).
    magnifications : list of str or float
        Preset names (``"low"`` 3000x, ``"high"`` 15000x) or magnifications in x; one event each.
    md : dict, optional
        Extra start metadata.

    Returns
    -------
    list of str
        The image files, one per magnification ("" when the plan is iterated without a RunEngine).

    Raises
    ------
    ValueError
        Before anything moves, for a bad sample id or magnification.
    devices.lab.SampleError
        When the lab has no such sample.
    bluesky.utils.FailedStatus
        When an acquisition times out (``__cause__``: AcquisitionTimeout).
    """
    if sample_id is None:
        raise ValueError("image_sample needs the id of a sample to image, e.g. sample_id='S0001'")
    _check_sample_id(sample_id)
    mags = _check_magnifications(magnifications)
    start = _start_md("image_sample", {"sem": sem.name, "sample_id": sample_id, "magnifications": mags},
                      [sem.name], {"sample_id": sample_id, "magnifications": mags}, md)

    @bpp.run_decorator(md=start)
    def run() -> MsgGenerator[list[str]]:
        return (yield from _imaging_steps(sem, sample_id, mags, "primary"))

    return (yield from run())


def synthesize_and_image(reactor: Reactor, sem: SEM, conditions: dict[str, Any], *,
                         magnifications: Sequence[str | float] = DEFAULT_MAGNIFICATIONS,
                         sample_id: str | None = None, md: dict[str, Any] | None = None) -> MsgGenerator[str]:
    """Make one sample and image it, in a single run (one run = one sample, the unit the ledger stores).

    The sample goes from reactor to SEM through the lab: after the batch, the reactor's ``sample_id``
    readback is read and put on the SEM stage. Reactor readbacks are in stream ``"synthesis"``, frames in
    ``"primary"``. Checkpoints before the batch and before each frame make the plan resumable (module notes).

    Parameters
    ----------
    reactor : Reactor
    sem : SEM
    conditions : dict
        Validated before any message is yielded; missing conditions take their defaults.
    magnifications : list of str or float
        As in :func:`image_sample`.
    sample_id : str, optional
        As in :func:`synthesize`.
    md : dict, optional
        Extra start metadata.

    Returns
    -------
    str
        The id of the sample made and imaged.

    Raises
    ------
    simulators.conditions.ConditionError, ValueError
        Before anything moves, for bad conditions, sample id or magnifications.
    bluesky.utils.FailedStatus
        When a device faults and no suspender takes over.
    """
    conds = validate_conditions(conditions)
    _check_sample_id(sample_id)
    mags = _check_magnifications(magnifications)
    sid = yield from _claim_sample_id(reactor, sample_id)
    start = _start_md("synthesize_and_image",
                      {"reactor": reactor.name, "sem": sem.name, "conditions": conds,
                       "magnifications": mags, "sample_id": sample_id},
                      [reactor.name, sem.name], {"conditions": conds, "sample_id": sid, "magnifications": mags}, md)

    @bpp.run_decorator(md=start)
    def run() -> MsgGenerator[str]:
        made = yield from _synthesis_steps(reactor, conds, sid, "synthesis")
        yield from _imaging_steps(sem, made, mags, "primary")
        return made

    return (yield from run())


def fault_suspenders(*devices: Any, sleep: float = 0.0) -> list[SuspendBoolHigh]:
    """One ``SuspendBoolHigh`` per device interlock (``device.fault``), for ``RE.install_suspender``.

    Use with a reactor built with ``fault_hold_s > 0`` so the faulted batch waits for the suspension instead
    of failing the plan; ``sleep`` is the wall time to wait after the fault clears before resuming.
    """
    return [SuspendBoolHigh(d.fault, sleep=sleep, tripped_message=f"{d.name} fault latched; fix it and call "
                                                                  f"{d.name}.clear_fault() to resume")
            for d in devices if hasattr(d, "fault")]
