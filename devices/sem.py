"""The scanning electron microscope as an ophyd device that writes TIFF files and references them.

Images never travel inside event documents: like an area detector, :meth:`SEM.trigger` has the frame written
to a TIFF file and the reading carries a datum id (``{name}_image``, marked ``external: "FILESTORE:"`` in
``describe()``), while :meth:`SEM.collect_asset_docs` hands the RunEngine one Resource (spec
:data:`RESOURCE_SPEC`, ``root`` + ``resource_path`` = the file) and one Datum per frame. The same path is also
read as a plain string (``{name}_image_path``) so users find files without a handler.

In ``mode="sim"`` the sample comes from the :class:`~devices.lab.SimulatedLab` (put there by the reactor) and
the frame is rendered by :func:`simulators.microscope.render_micrograph`; in ``mode="epics"`` the signals are
the microscope's PVs and its file plugin writes the frame (see :meth:`SEM.pv_names`).
"""
from __future__ import annotations

import threading
from collections import deque
from pathlib import Path, PurePosixPath
from typing import Any, Iterator
from uuid import uuid4

from ophyd import Device, EpicsSignal, EpicsSignalRO, Signal
from ophyd.signal import InternalSignal
from ophyd.status import DeviceStatus

from devices.lab import (LimitedEpicsSignal, LimitedSignal, ModeComponent, SimulatedLab, check_mode, device_pv_names,
                         finish_status)
from simulators.microscope import MAGNIFICATIONS, render_micrograph, write_micrograph

#: ``spec`` of the Resource documents: one 8-bit grayscale TIFF per resource, a single frame (datum_kwargs {}).
RESOURCE_SPEC = "MORPHLOOP_TIFF"
#: Named magnifications the plans accept (``"low"``: secondary particles; ``"high"``: primary platelets).
MAGNIFICATION_PRESETS: dict[str, float] = dict(MAGNIFICATIONS)
#: Seconds one frame takes on the real microscope (compressed by the lab's time compression).
FRAME_TIME_S = 20.0


class NoSampleLoaded(RuntimeError):
    """``trigger()`` with no sample on the stage."""


class AcquisitionAborted(RuntimeError):
    """A frame stopped by :meth:`SEM.stop`."""


class SampleSlot(Signal):
    """Simulated stage: accepts only ids of samples that exist in the lab ("" unloads)."""

    def check_value(self, value: Any) -> None:
        if not isinstance(value, str):
            raise ValueError(f"{self.name}: sample id must be a string, got {value!r}")
        lab = getattr(self.parent, "lab", None)
        if value and lab is not None:
            lab.sample(value)  # raises SampleError naming the known samples

    def set(self, value: Any, **kwargs: Any):
        self.check_value(value)  # synchronously: an unknown sample fails the plan at once
        return super().set(value, **kwargs)


class ImageReference(Signal):
    """Datum id of the last frame; described as an external ``H x W`` uint8 array."""

    def describe(self) -> dict[str, dict[str, Any]]:
        desc = super().describe()
        h, w = self.parent.image_shape
        desc[self.name].update(dtype="array", dtype_numpy="|u1", shape=[int(h), int(w)], external="FILESTORE:")
        return desc


def _setting(pv: str, low: float, high: float, unit: str, default: float, kind: str) -> ModeComponent:
    return ModeComponent(LimitedSignal, LimitedEpicsSignal, pv, limits={"low": low, "high": high, "unit": unit},
                         sim_kwargs={"value": default}, kind=kind)


class SEM(Device):
    """Scanning electron microscope: magnification, beam settings, a loaded sample and file-backed frames.

    Parameters
    ----------
    prefix : str
        PV prefix in ``mode="epics"`` (e.g. ``"XF:31ID-EM{SEM:1}"``); unused in ``mode="sim"``.
    name : str
        Device name; data keys are ``{name}_{component}`` (``sem_image``, ``sem_image_path``).
    mode : {"sim", "epics"}
    lab : SimulatedLab, optional
        Required in ``mode="sim"``: where samples come from and where files are written.
    image_shape : (int, int)
        ``H x W`` of a frame in pixels (tests use small frames; the real detector's shape in EPICS mode).
    drift, charging : bool
        Simulated detector drift and charging artefacts.

    Notes
    -----
    Limits: ``magnification`` 100-100000 x, ``accelerating_voltage_kv`` 0.5-30 kV, ``working_distance_mm``
    2-50 mm. A reading holds ``magnification``, ``sample_id``, ``image`` (datum id), ``image_path`` and
    ``pixel_size_um``.
    """

    magnification = _setting("Mag:SP", 100.0, 100000.0, "x", MAGNIFICATION_PRESETS["low"], "hinted")
    accelerating_voltage_kv = _setting("HV:SP", 0.5, 30.0, "kV", 15.0, "config")
    working_distance_mm = _setting("WD:SP", 2.0, 50.0, "mm", 10.0, "config")
    sample_id = ModeComponent(SampleSlot, EpicsSignal, "Stage:SampleID", sim_kwargs={"value": ""},
                              epics_kwargs={"string": True}, doc="id of the loaded sample ('' : none)")
    image = ModeComponent(ImageReference, None, "", sim_kwargs={"value": ""}, doc="datum id of the last frame")
    image_path = ModeComponent(InternalSignal, EpicsSignalRO, "TIFF1:FullFileName_RBV", sim_kwargs={"value": ""},
                               epics_kwargs={"string": True}, doc="absolute path of the last frame's TIFF")
    pixel_size_um = ModeComponent(InternalSignal, EpicsSignalRO, "PixelSize_RBV", sim_kwargs={"value": 0.0})
    acquire = ModeComponent(Signal, EpicsSignal, "cam1:Acquire", kind="omitted", sim_kwargs={"value": 0},
                            epics_kwargs={"put_complete": True}, doc="1: take one frame (put-completes when written)")

    def __init__(self, prefix: str = "", *, name: str = "sem", mode: str = "sim", lab: SimulatedLab | None = None,
                 image_shape: tuple[int, int] = (1024, 1024), drift: bool = True, charging: bool = False,
                 **kwargs: Any) -> None:
        check_mode(mode, prefix, lab)
        if len(image_shape) != 2 or min(int(n) for n in image_shape) < 64:
            raise ValueError(f"image_shape must be (H, W) with both >= 64 px, got {image_shape!r}")
        self.mode, self.lab = mode, lab
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        self.drift, self.charging = bool(drift), bool(charging)
        self._asset_docs: deque[tuple[str, dict[str, Any]]] = deque()
        self._stop_event = threading.Event()
        self._status: DeviceStatus | None = None
        self._lock = threading.Lock()
        super().__init__(prefix, name=name, **kwargs)

    @classmethod
    def pv_names(cls, prefix: str) -> dict[str, tuple[str, str | None]]:
        """``component -> (read_pv, write_pv)`` of the EPICS backend under ``prefix`` (write_pv None: same PV)."""
        return device_pv_names(cls, prefix)

    def load_sample(self, sample_id: str) -> DeviceStatus:
        """Put ``sample_id`` on the stage (plans: ``bps.mv(sem.sample_id, sample_id)``).

        Raises
        ------
        devices.lab.SampleError
            In ``mode="sim"``, if the lab has no such sample (the message lists the known ones).
        """
        return self.sample_id.set(sample_id)

    # ------------------------------------------------------------------ detector interface
    def trigger(self) -> DeviceStatus:
        """Take one frame of the loaded sample at the current settings and write it to a TIFF file.

        Returns
        -------
        DeviceStatus
            Finishes when the file is written and referenced (then ``read()`` and ``collect_asset_docs()``
            describe it); fails with :class:`~simulators.faults.AcquisitionTimeout` on a ``sem_timeout`` fault.

        Raises
        ------
        NoSampleLoaded
            Nothing is on the stage.
        """
        sample_id = self.sample_id.get()
        if not sample_id:
            raise NoSampleLoaded(f"{self.name}: no sample loaded; load one first with "
                                 f"{self.name}.load_sample(sample_id) (in a plan: bps.mv({self.name}.sample_id, id))")
        self._asset_docs.clear()  # references of a frame that was never read are stale now
        status = DeviceStatus(self, call_stop_on_failure=False)
        if self.mode == "epics":
            return self._trigger_epics(status)
        settings = (float(self.magnification.get()), float(self.accelerating_voltage_kv.get()),
                    float(self.working_distance_mm.get()))
        self._stop_event.clear()
        with self._lock:
            self._status = status
        threading.Thread(target=self._acquire_sim, args=(status, sample_id, *settings), daemon=True,
                         name=f"{self.name}-frame").start()
        return status

    def collect_asset_docs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``("resource", doc)`` then ``("datum", doc)`` for the last frame, once."""
        while self._asset_docs:
            yield self._asset_docs.popleft()

    def stop(self, *, success: bool = False) -> None:
        """Abort a frame in progress (its Status fails with :class:`AcquisitionAborted` unless ``success``)."""
        self._stop_event.set()
        with self._lock:
            status = self._status
        if status is not None and not status.done:
            self._finish(status, None if success else AcquisitionAborted(f"{self.name}: frame stopped"))
        if self.mode == "epics":
            self.acquire.put(0, use_complete=False)

    # ------------------------------------------------------------------ backends
    def _finish(self, status: DeviceStatus, exc: BaseException | None) -> None:
        finish_status(self._lock, status, exc)

    def _reference_file(self, root: str, resource_path: str, pixel_size_um: float | None) -> None:
        """Record the frame at ``root/resource_path``: datum id and path into the signals, Resource + Datum
        documents into the cache :meth:`collect_asset_docs` empties."""
        uid = str(uuid4())
        resource = {"spec": RESOURCE_SPEC, "root": root, "resource_path": resource_path,
                    "resource_kwargs": {}, "path_semantics": "posix", "uid": uid}
        datum = {"resource": uid, "datum_id": f"{uid}/0", "datum_kwargs": {}}
        self._asset_docs.extend([("resource", resource), ("datum", datum)])
        if self.mode == "sim":
            self.image_path.put(str(PurePosixPath(root) / resource_path), internal=True)
            self.pixel_size_um.put(float(pixel_size_um), internal=True)
        self.image.put(datum["datum_id"])

    def _acquire_sim(self, status: DeviceStatus, sample_id: str, magnification: float, kv: float,
                     wd: float) -> None:
        lab = self.lab
        try:
            if self._stop_event.wait(lab.wall_seconds(FRAME_TIME_S)):
                return
            lab.faults.maybe_raise("sem_timeout", detail=f"{self.name}, sample {sample_id} at {magnification:g}x")
            number, seed = lab.next_image(sample_id, magnification)
            micrograph = render_micrograph(lab.sample(sample_id), magnification, seed, shape=self.image_shape,
                                           accelerating_voltage_kv=kv, working_distance_mm=wd, drift=self.drift,
                                           charging=self.charging)
            if self._stop_event.is_set():
                return
            rel = PurePosixPath(sample_id) / f"{sample_id}_{magnification:.0f}x_{number:04d}.tif"
            write_micrograph(Path(lab.output_dir) / rel, micrograph,
                             metadata={"sample_id": sample_id, "accelerating_voltage_kv": kv,
                                       "working_distance_mm": wd, "image_number": number})
            self._reference_file(Path(lab.output_dir).as_posix(), rel.as_posix(), micrograph.pixel_size_um)
        except Exception as exc:  # noqa: BLE001 - every failure must reach the Status, not die in the thread
            self._finish(status, exc)
            return
        self._finish(status, None)

    def _trigger_epics(self, status: DeviceStatus) -> DeviceStatus:
        """Real backend: ``cam1:Acquire`` put-completes once the file plugin has written the frame; then the
        file named by ``TIFF1:FullFileName_RBV`` is referenced."""
        def written(acquired: Any) -> None:
            if not acquired.success:
                self._finish(status, acquired.exception() or RuntimeError(f"{self.name}: acquisition failed"))
                return
            path = PurePosixPath(self.image_path.get())
            self._reference_file(str(path.parent), path.name, None)
            self._finish(status, None)

        self.acquire.set(1).add_callback(written)
        return status
