"""What a device is bound to: the simulated lab, or EPICS process variables.

Every device in ``devices/`` has two equal modes of one class, picked at construction with ``mode=``:

``"sim"``
    bound to a :class:`SimulatedLab`, the hidden world of ``simulators/`` seen as hardware: the reactor writes
    its setpoints into the lab and makes samples there, the SEM loads those samples and images them. The lab is
    the sample hand-over between the two devices.
``"epics"``
    bound to an IOC through process variables named ``prefix + suffix``. The signals are created lazily and
    never connected at construction, so building a device needs no IOC (call ``wait_for_connection()`` before
    using it on real hardware).

:class:`ModeComponent` is the component that builds one or the other signal; :class:`LimitedSignal` and
:class:`LimitedEpicsSignal` are setpoints whose limits the device itself enforces in both modes, so a value
outside them never reaches the backend.
"""
from __future__ import annotations

import math
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from ophyd import Component, EpicsSignal, Signal
from ophyd.utils.errors import LimitError

from simulators.conditions import Morphology
from simulators.coprecipitation import CoprecipitationWorld
from simulators.faults import FaultInjector

MODES = ("sim", "epics")
#: Sample ids the lab hands out: ``S0001``, ``S0002``, ... (callers may choose any id matching SAMPLE_ID_PATTERN).
SAMPLE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def finish_status(lock, status, exc: BaseException | None = None) -> None:
    """Finish ``status`` once, under the device's ``lock``: successfully, or with ``exc``. A Status already done
    (finished by ``stop()`` or by a timeout racing the backend) is left alone."""
    with lock:
        if status.done:
            return
        if exc is None:
            status.set_finished()
        else:
            status.set_exception(exc)


class SampleError(ValueError):
    """A sample id that is malformed, already used, or unknown to the lab."""


def check_mode(mode: str, prefix: str, lab: Any) -> None:
    """Raise ``ValueError`` unless (mode, prefix, lab) describe one coherent backend."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "sim" and not isinstance(lab, SimulatedLab):
        raise ValueError("mode='sim' needs lab=SimulatedLab(...); pass the same lab to the reactor and the SEM "
                         "so samples can be handed over")
    if mode == "epics" and (lab is not None or not prefix):
        raise ValueError("mode='epics' needs a non-empty PV prefix (e.g. 'XF:31ID-RX{Rx:1}') and no lab")


class SimulatedLab:
    """The simulated backend shared by the reactor and the SEM.

    Parameters
    ----------
    output_dir : str or Path, optional
        Where the SEM writes its TIFF files (a fresh temporary folder if omitted).
    seed : int
        Seed of the :class:`~simulators.coprecipitation.CoprecipitationWorld`; sample ``k`` (the k-th sample
        made, 1-based) is made with ``sample_seed=first_sample_seed + k`` and imaged with seeds derived from
        (seed, that sample seed), so a lab replays identically.
    batch_noise : float
        Batch-to-batch noise of the world (0: every batch equals the truth).
    faults : mapping of str to int or FaultInjector, optional
        Faults to inject (``{"pump_fault": 1}``); ``lab.faults.arm(kind)`` arms more later.
    time_compression : float or None
        Lab seconds per wall second: 1e4 makes a 360-min synthesis take 2.2 s. ``None`` or ``inf``: instant.
    first_sample_seed : int
        Offset of the sample seeds (default 0). Two labs on the same world with the same offset make identical
        batches at identical conditions; give them offsets far apart (e.g. 10**6) for independent replicates
        of one world.

    Attributes
    ----------
    samples : dict of str to Morphology
        Every sample made, by id (the hand-over from reactor to SEM).
    sample_conditions : dict of str to dict
        The conditions each sample was made at, as the reactor's hardware received them.
    setpoints : dict of str to dict
        Last value each device wrote to the simulated hardware, by device name then setpoint name.
    """

    def __init__(self, output_dir: str | Path | None = None, *, seed: int = 0, batch_noise: float = 1.0,
                 faults: Mapping[str, int] | FaultInjector | None = None,
                 time_compression: float | None = 1e4, first_sample_seed: int = 0) -> None:
        if time_compression is not None and not time_compression > 0:
            raise ValueError(f"time_compression must be > 0 (lab seconds per wall second) or None for instant, "
                             f"got {time_compression!r}")
        if isinstance(first_sample_seed, bool) or not isinstance(first_sample_seed, int) or first_sample_seed < 0:
            raise ValueError(f"first_sample_seed must be a non-negative integer, got {first_sample_seed!r}")
        self.world = CoprecipitationWorld(seed=seed, batch_noise=batch_noise)
        self.first_sample_seed = first_sample_seed
        self.faults = faults if isinstance(faults, FaultInjector) else FaultInjector(faults)
        if output_dir is None:
            output_dir = tempfile.mkdtemp(prefix="morphloop-lab-")
        # absolute: Resource documents name the image files by it, and are read from any working directory
        self.output_dir = Path(output_dir).absolute()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.time_compression = time_compression
        self.samples: dict[str, Morphology] = {}
        self.sample_conditions: dict[str, dict[str, Any]] = {}
        self.setpoints: dict[str, dict[str, Any]] = {}
        self._index: dict[str, int] = {}
        self._images = 0
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return (f"SimulatedLab(output_dir={str(self.output_dir)!r}, seed={self.world.seed}, "
                f"samples={len(self.samples)}, time_compression={self.time_compression})")

    @property
    def seed(self) -> int:
        return self.world.seed

    def wall_seconds(self, lab_seconds: float) -> float:
        """Wall-clock seconds that ``lab_seconds`` of lab time take under the time compression."""
        if self.time_compression is None or math.isinf(self.time_compression):
            return 0.0
        return float(lab_seconds) / float(self.time_compression)

    def write_setpoint(self, device: str, name: str, value: Any) -> None:
        """The simulated hardware receiving one setpoint (the equivalent of a PV write)."""
        with self._lock:
            self.setpoints.setdefault(device, {})[name] = value

    def next_sample_id(self) -> str:
        """The first unused id of the lab's sequence ``S0001, S0002, ...``."""
        with self._lock:
            k = len(self.samples) + 1
            while f"S{k:04d}" in self.samples:
                k += 1
            return f"S{k:04d}"

    def check_new_sample_id(self, sample_id: Any) -> str:
        """Return ``sample_id`` if a new sample may take it, else raise :class:`SampleError`."""
        if not isinstance(sample_id, str) or not SAMPLE_ID_PATTERN.match(sample_id):
            raise SampleError(f"sample id {sample_id!r} is malformed: use 1-64 letters, digits, '_', '.', '-' "
                              f"(e.g. 'S0001')")
        with self._lock:
            if sample_id in self.samples:
                raise SampleError(f"sample {sample_id!r} already exists in the lab; choose a new id or leave it "
                                  f"to the lab (next free: {self.next_sample_id()})")
        return sample_id

    def make_sample(self, sample_id: str, conditions: Mapping[str, Any]) -> Morphology:
        """Register the batch made at ``conditions`` under ``sample_id`` and return its morphology.

        Raises
        ------
        SampleError
            If ``sample_id`` is malformed or already taken: a sample is never produced twice.
        """
        with self._lock:
            self.check_new_sample_id(sample_id)
            index = self.first_sample_seed + len(self.samples) + 1
            morphology = self.world.synthesize(conditions, sample_seed=index)
            self.samples[sample_id] = morphology
            self.sample_conditions[sample_id] = dict(conditions)
            self._index[sample_id] = index
            return morphology

    def sample(self, sample_id: str) -> Morphology:
        """The morphology of a sample made in this lab.

        Raises
        ------
        SampleError
            If no sample has that id (the message lists the known ones).
        """
        with self._lock:
            if sample_id not in self.samples:
                known = sorted(self.samples)
                raise SampleError(f"no sample {sample_id!r} in the lab; synthesize it first (known: {known})")
            return self.samples[sample_id]

    def next_image(self, sample_id: str, magnification: float) -> tuple[int, int]:
        """``(image_number, seed)`` for the next frame of ``sample_id``: numbers count up per lab, seeds are
        derived from (lab seed, sample index, magnification, image number)."""
        with self._lock:
            self._images += 1
            number = self._images
            index = self._index.get(sample_id, 0)
        seq = np.random.SeedSequence([self.seed, index, int(round(magnification)), number])
        return number, int(seq.generate_state(1)[0])


class _LimitsMixin:
    """Setpoint limits the device enforces itself, before any value leaves it (sim and EPICS alike).

    Either numeric ``low``/``high`` (inclusive, with ``unit`` for messages) or string ``choices``.
    """

    def _init_limits(self, low: float | None, high: float | None, choices: tuple[str, ...] | None,
                     unit: str) -> None:
        self._low, self._high, self._choices, self._unit = low, high, choices, unit

    @property
    def limits(self) -> tuple[float, float]:
        return (self._low, self._high) if self._low is not None else (0, 0)

    @property
    def choices(self) -> tuple[str, ...] | None:
        return self._choices

    def check_value(self, value: Any) -> None:
        label = self.attr_name or self.name
        if self._choices is not None:
            if value not in self._choices:
                raise LimitError(f"{label}={value!r} is not one of {list(self._choices)}; pick one of them")
            return
        if self._low is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not math.isfinite(value):
            raise LimitError(f"{label}={value!r} must be a finite number in {self._unit} "
                             f"within [{self._low}, {self._high}]")
        if not self._low <= value <= self._high:
            raise LimitError(f"{label}={value} {self._unit} is outside the device limits [{self._low}, "
                             f"{self._high}]; choose a value inside them")

    def set(self, value: Any, **kwargs: Any):
        self.check_value(value)  # synchronously: the caller sees LimitError, not a failed Status
        return super().set(value, **kwargs)


class LimitedSignal(_LimitsMixin, Signal):
    """Simulated setpoint: checks its limits, then writes the value into the device's :class:`SimulatedLab`."""

    def __init__(self, *, low: float | None = None, high: float | None = None,
                 choices: tuple[str, ...] | None = None, unit: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_limits(low, high, choices, unit)

    def put(self, value: Any, *, force: bool = False, **kwargs: Any) -> None:
        if not force:
            self.check_value(value)
        lab = getattr(self.parent, "lab", None)
        if lab is not None:
            lab.write_setpoint(self.parent.name, self.attr_name, value)
        super().put(value, force=True, **kwargs)


class LimitedEpicsSignal(_LimitsMixin, EpicsSignal):
    """EPICS setpoint with the same device-side limits as :class:`LimitedSignal` (checked before the PV put,
    in addition to the PV's own control limits)."""

    def __init__(self, read_pv: str, *, low: float | None = None, high: float | None = None,
                 choices: tuple[str, ...] | None = None, unit: str = "", **kwargs: Any) -> None:
        super().__init__(read_pv, **kwargs)
        self._init_limits(low, high, choices, unit)

    def check_value(self, value: Any) -> None:
        _LimitsMixin.check_value(self, value)
        EpicsSignal.check_value(self, value)


class ModeComponent(Component):
    """A component built as ``sim_cls`` in ``mode="sim"`` or ``epics_cls`` on PV ``prefix + pv`` in
    ``mode="epics"``.

    Parameters
    ----------
    sim_cls, epics_cls : type
        Signal classes of the two modes; ``epics_cls=None``: a soft ``sim_cls`` signal in both modes (values
        the device computes itself, such as a datum id).
    pv : str
        PV suffix of the readback (or only) PV; ``write_pv`` optionally names a separate setpoint PV.
    limits : dict, optional
        ``low``/``high``/``unit`` or ``choices``, passed to both classes (setpoints only).
    sim_kwargs, epics_kwargs : dict, optional
        Extra constructor arguments of one mode (e.g. ``value=""`` or ``string=True``).
    """

    def __init__(self, sim_cls: type, epics_cls: type | None, pv: str, *, write_pv: str | None = None,
                 limits: Mapping[str, Any] | None = None, sim_kwargs: Mapping[str, Any] | None = None,
                 epics_kwargs: Mapping[str, Any] | None = None, kind: str = "normal", doc: str | None = None):
        super().__init__(sim_cls, lazy=True, kind=kind, doc=doc)
        self.sim_cls, self.epics_cls = sim_cls, epics_cls
        self.pv, self.write_pv = pv, write_pv
        self.limits = dict(limits or {})
        self.sim_kwargs, self.epics_kwargs = dict(sim_kwargs or {}), dict(epics_kwargs or {})

    def pv_names(self, prefix: str) -> tuple[str, str | None]:
        """``(read_pv, write_pv)`` of this component under ``prefix`` (``write_pv`` None: same PV)."""
        return prefix + self.pv, (prefix + self.write_pv if self.write_pv else None)

    def create_component(self, instance: Any) -> Signal:
        kwargs = dict(name=f"{instance.name}{instance._child_name_separator}{self.attr}",
                      kind=instance._component_kinds[self.attr], attr_name=self.attr, parent=instance,
                      **self.limits)
        if instance.mode == "sim" or self.epics_cls is None:
            return self.sim_cls(**kwargs, **self.sim_kwargs)
        read_pv, write_pv = self.pv_names(instance.prefix)
        if write_pv is not None:
            kwargs["write_pv"] = write_pv
        return self.epics_cls(read_pv, **kwargs, **self.epics_kwargs)  # lazy: created on first access, not connected


def device_pv_names(device_cls: type, prefix: str) -> dict[str, tuple[str, str | None]]:
    """``component -> (read_pv, write_pv)`` of a device class's EPICS backend under ``prefix``."""
    return {attr: cpt.pv_names(prefix) for attr, cpt in device_cls._sig_attrs.items()
            if isinstance(cpt, ModeComponent) and cpt.epics_cls is not None}
