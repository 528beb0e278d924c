"""The tomography camera: one frame per trigger, frames in one HDF5 file per scan, referenced by Resource/Datum."""
from __future__ import annotations

import threading
from pathlib import Path, PurePosixPath
from typing import Any, Iterator
from uuid import uuid4

import h5py
import numpy as np
from ophyd import Signal
from ophyd.device import Staged
from ophyd.status import DeviceStatus

from devices.lab import LimitedEpicsSignal, LimitedSignal, ModeComponent
from devices.station import (
    AcquisitionAborted, DATA_PATH, FRAME_DATASETS, RESOURCE_SPEC, StationDevice, _command, _readback,
    _setpoint,
)
from simulators.tomography import QUALITIES


class FrameReference(Signal):
    """Datum id of the last frame; described as an external ``n_rows x n_cols`` float32 array."""

    def describe(self) -> dict[str, dict[str, Any]]:
        desc = super().describe()
        rows, cols = self.parent.frame_shape
        desc[self.name].update(dtype="array", dtype_numpy="<f4", shape=[rows, cols], external="FILESTORE:")
        return desc


class QualitySetting(LimitedSignal):
    """The acquisition quality (``"hq"`` / ``"lq"``); fixed while the detector is staged (one file = one shape)."""

    def check_value(self, value: Any) -> None:
        super().check_value(value)
        parent = self.parent
        if parent is not None and parent._staged == Staged.yes and value != self.get():
            raise RuntimeError(f"{parent.name}: quality cannot change during a scan (staged); unstage first")


class AreaDetector(StationDevice):
    """The tomography camera with an HDF5 file writer.

    ``stage()`` opens one HDF5 file (``{output_dir}/tomo_{n:04d}_{uid8}.h5``); each ``trigger()`` exposes one frame,
    appends it to ``/entry/data/data`` (with its ``image_key``, rotation angle, lab time and attempt number, see
    :data:`FRAME_DATASETS`) and references it: ``image`` reads a datum id (``external: "FILESTORE:"``) and
    :meth:`collect_asset_docs` yields one Resource per file (spec :data:`RESOURCE_SPEC`, ``root`` +
    ``resource_path`` = the file) and one Datum per frame (``{"point_number": i}``); ``unstage()`` closes the file.

    In ``mode="sim"`` the frame is a dark (shutter closed, ``image_key`` 2), a flat (sample out, 1) or a
    projection (0) of the beamline's cell at the stage's angle. When a RunEngine pauses or suspends, it calls
    :meth:`pause`: a frame in progress is given up (its Status finishes without a reading) and later frames count
    as the next ``attempt``, so the frames of the last attempt in a file are the complete, repeated scan.

    Parameters
    ----------
    quality : {"hq", "lq"}
        Initial acquisition quality (:data:`simulators.tomography.QUALITIES`): dose, voxel size, frame shape.
    """

    quality = ModeComponent(QualitySetting, LimitedEpicsSignal, "cam1:Quality", limits={"choices": tuple(QUALITIES)},
                            sim_kwargs={"value": "hq"}, epics_kwargs={"string": True}, kind="config")
    exposure_s = _setpoint("cam1:AcquireTime", 1.0, low=0.001, high=60.0, unit="s")
    voxel_nm = _readback("cam1:VoxelSize_RBV", QUALITIES["hq"].voxel_nm, kind="config")
    image = ModeComponent(FrameReference, None, "", sim_kwargs={"value": ""}, doc="datum id of the last frame")
    image_key = _readback("cam1:ImageKey_RBV", -1, doc="NXtomo image_key: 0 projection, 1 flat, 2 dark")
    frame_number = _readback("HDF1:NumCaptured_RBV", -1, doc="point number of the last frame in the file")
    file_path = _readback("HDF1:FullFileName_RBV", "", string=True, doc="the scan's HDF5 file")
    acquire = _command("cam1:Acquire")
    capture = _command("HDF1:Capture")

    def __init__(self, prefix: str = "", *, name: str = "detector", quality: str = "hq", **kwargs: Any) -> None:
        super().__init__(prefix, name=name, **kwargs)
        self._file: h5py.File | None = None
        self._resource: dict[str, Any] | None = None
        self._pending: list[tuple[str, dict[str, Any]]] = []  # asset documents, in emission order
        self._abandon = threading.Event()
        self._attempt = 0
        self._files = 0
        if self.mode == "sim":
            self.quality.put(quality)
            self._put("voxel_nm", QUALITIES[quality].voxel_nm)

    @property
    def frame_shape(self) -> tuple[int, int]:
        q = QUALITIES[self.quality.get()] if self.mode == "sim" else QUALITIES["hq"]
        return q.n_rows, q.fov_px

    # ------------------------------------------------------------------ staging: one file per scan
    def stage(self) -> list[object]:
        staged = super().stage()
        if self.mode == "epics":
            self.capture.put(1, use_complete=False)
            return staged
        q = QUALITIES[self.quality.get()]
        self._files += 1
        uid = str(uuid4())
        rel = f"tomo_{self._files:04d}_{uid[:8]}.h5"
        path = Path(self.beamline.output_dir) / rel
        f = h5py.File(path, "w")
        f.create_dataset(DATA_PATH, shape=(0, q.n_rows, q.fov_px), maxshape=(None, q.n_rows, q.fov_px),
                         dtype="<f4", chunks=(1, q.n_rows, q.fov_px))
        for key, dataset in FRAME_DATASETS.items():
            dtype = "<f8" if key in ("rotation_angle", "lab_time_s") else "<i2"
            f.create_dataset(dataset, shape=(0,), maxshape=(None,), dtype=dtype)
        f["/entry"].attrs.update(quality=q.name, voxel_nm=q.voxel_nm, dose=q.dose, spec=RESOURCE_SPEC)
        self._file, self._attempt = f, 0
        self._resource = {"spec": RESOURCE_SPEC, "root": Path(self.beamline.output_dir).as_posix(),
                          "resource_path": rel, "resource_kwargs": {"frame_per_point": 1},
                          "path_semantics": "posix", "uid": uid}
        self._pending = [("resource", self._resource)]
        self._put("voxel_nm", q.voxel_nm)
        self._put("file_path", path.as_posix())  # absolute: the beamline's output_dir is
        self._put("frame_number", -1)
        return staged

    def unstage(self) -> list[object]:
        if self.mode == "epics":
            self.capture.put(0, use_complete=False)
        elif self._file is not None:
            with self._status_lock:
                self._file.close()
                self._file = None
        self._pending, self._resource = [], None
        return super().unstage()

    # ------------------------------------------------------------------ detector interface
    def trigger(self) -> DeviceStatus:
        """Expose one frame and append it to the scan's file.

        Returns
        -------
        DeviceStatus
            Finishes when the frame is written and referenced; fails with ``DetectorFault`` or ``BeamLoss``
            (see :meth:`devices.beamline_sim.SimulatedBeamline.acquire_frame`).

        Raises
        ------
        RuntimeError
            The detector is not staged (no file to write to).
        """
        if self._staged != Staged.yes:
            raise RuntimeError(f"{self.name}: stage the detector first (it opens the scan's HDF5 file); in a plan "
                               f"use bpp.stage_wrapper or bps.stage({self.name})")
        self._pending = [doc for doc in self._pending if doc[0] == "resource"]  # an unread frame's datum is stale
        status = DeviceStatus(self, call_stop_on_failure=False)
        with self._status_lock:
            self._status = status
        if self.mode == "epics":
            return self._trigger_epics(status)
        self._abandon = abandon = threading.Event()  # one per frame: a late old frame never sees a new one's
        threading.Thread(target=self._acquire_sim, args=(status, QUALITIES[self.quality.get()],
                                                         float(self.exposure_s.get()), abandon),
                         daemon=True, name=f"{self.name}-frame").start()
        return status

    def collect_asset_docs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield the file's Resource (once per file) and the last frame's Datum (once)."""
        while self._pending:
            yield self._pending.pop(0)

    def pause(self) -> None:
        """RunEngine pause or suspension: give up the frame in progress (its Status finishes without a reading);
        frames after the resume belong to the next attempt."""
        self._abandon.set()
        self._attempt += 1
        with self._status_lock:
            status = self._status
        if status is not None and not status.done:
            self._finish(status, None)

    def stop(self, *, success: bool = False) -> None:
        """Abort a frame in progress (its Status fails with :class:`AcquisitionAborted` unless ``success``)."""
        self._abandon.set()
        with self._status_lock:
            status = self._status
        if status is not None and not status.done:
            self._finish(status, None if success else AcquisitionAborted(f"{self.name}: frame stopped"))
        if self.mode == "epics":
            self.acquire.put(0, use_complete=False)

    # ------------------------------------------------------------------ backends
    def _reference(self, point_number: int) -> None:
        datum = {"resource": self._resource["uid"], "datum_id": f"{self._resource['uid']}/{point_number}",
                 "datum_kwargs": {"point_number": int(point_number)}}
        self._pending.append(("datum", datum))
        if self.mode == "sim":
            self._put("frame_number", int(point_number))
        self.image.put(datum["datum_id"])

    def _acquire_sim(self, status: DeviceStatus, quality: Any, exposure_s: float, abandon: threading.Event) -> None:
        try:
            frame = self.beamline.acquire_frame(quality, exposure_s, abandon)
            if frame is None or abandon.is_set():
                self._finish(status, None)  # given up (pause / suspension): no reading
                return
            with self._status_lock:
                f = self._file
                if f is None:
                    raise RuntimeError(f"{self.name}: unstaged during the exposure; frame discarded")
                i = f[DATA_PATH].shape[0]
                values = {"image_key": frame.image_key, "rotation_angle": frame.angle_deg,
                          "lab_time_s": frame.lab_time_s, "attempt": self._attempt}
                f[DATA_PATH].resize(i + 1, axis=0)
                f[DATA_PATH][i] = frame.data
                for key, dataset in FRAME_DATASETS.items():
                    f[dataset].resize(i + 1, axis=0)
                    f[dataset][i] = values[key]
                f.flush()
            self._put("image_key", frame.image_key)
            self._reference(i)
        except Exception as exc:  # noqa: BLE001 - every failure must reach the Status, not die in the thread
            self._finish(status, exc)
            return
        self._finish(status, None)

    def _trigger_epics(self, status: DeviceStatus) -> DeviceStatus:
        """Real backend: ``cam1:Acquire`` put-completes once the HDF5 plugin captured the frame; the frame is then
        point ``NumCaptured_RBV - 1`` of ``FullFileName_RBV``."""
        def written(acquired: Any) -> None:
            if not acquired.success:
                self._finish(status, acquired.exception() or RuntimeError(f"{self.name}: acquisition failed"))
                return
            if self._resource is None:
                path = PurePosixPath(self.file_path.get())
                self._resource = {"spec": RESOURCE_SPEC, "root": str(path.parent), "resource_path": path.name,
                                  "resource_kwargs": {"frame_per_point": 1}, "path_semantics": "posix",
                                  "uid": str(uuid4())}
                self._pending.insert(0, ("resource", self._resource))
            self._reference(int(self.frame_number.get()) - 1)
            self._finish(status, None)

        self.acquire.set(1).add_callback(written)
        return status



class HDF5FrameHandler:
    """Reads the frames :data:`RESOURCE_SPEC` documents point at (a databroker/tiled-style handler).

    ``HDF5FrameHandler(root / resource_path, **resource_kwargs)(**datum_kwargs)`` returns one ``n_rows x n_cols``
    frame (or ``frame_per_point`` of them stacked).
    """

    specs = {RESOURCE_SPEC}

    def __init__(self, filename: str | Path, frame_per_point: int = 1) -> None:
        self._file = h5py.File(filename, "r")
        self._frame_per_point = int(frame_per_point)

    def __call__(self, point_number: int) -> np.ndarray:
        start = int(point_number) * self._frame_per_point
        frames = self._file[DATA_PATH][start:start + self._frame_per_point]
        return frames[0] if self._frame_per_point == 1 else frames

    def close(self) -> None:
        self._file.close()


