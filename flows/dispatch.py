"""Dispatching experiments to the lab: one ``synthesize_and_image`` Bluesky run per experiment.

The campaign talks to a :class:`Dispatcher`; :class:`InProcessDispatcher` runs the plan on an in-process
RunEngine with the simulated reactor and SEM (the embedded default). A bluesky-queueserver dispatcher would
submit the same plan by name (``synthesize_and_image`` with JSON-able arguments) and wait for the run; it only has
to return the same :class:`DispatchResult`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from bluesky import RunEngine
from bluesky.utils import FailedStatus

from devices.lab import SimulatedLab
from devices.plans import synthesize_and_image
from devices.reactor import Reactor
from devices.sem import SEM
from models.describe import Describer


class DispatchError(RuntimeError):
    """An experiment that did not produce images; ``retryable`` says whether a new attempt may succeed."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


@dataclass
class DispatchResult:
    """What one experiment's run produced."""

    sample_id: str
    run_uid: str
    images: dict[str, str] = field(default_factory=dict)
    pixel_size_um: dict[str, float] = field(default_factory=dict)
    exit_status: str = "success"


class Dispatcher(Protocol):
    def run(self, conditions: dict[str, Any], sample_id: str, md: dict[str, Any]) -> DispatchResult: ...


class InProcessDispatcher:
    """Runs ``synthesize_and_image`` on simulated devices with a RunEngine in this process.

    Parameters
    ----------
    lab_dir : Path
        Where the simulated SEM writes its image files.
    seed : int
        Seed of the simulated world (the hidden truth).
    faults : dict, optional
        Fault injection passed to :class:`~devices.lab.SimulatedLab` (e.g. ``{"pump_fault": 3}``).
    fault_rate : float
        Probability that an operation of the simulated lab fails (see ``SimulatedLab``'s fault injector).
    subscribers : list of callables
        Document callbacks (e.g. the Tiled writer and the JSON-lines log).
    image_shape : (int, int)
    """

    def __init__(self, lab_dir: str | Path, *, seed: int = 0, faults: dict | None = None,
                 subscribers: list[Callable[[str, dict], Any]] | None = None,
                 image_shape: tuple[int, int] = (1024, 1024), lab: SimulatedLab | None = None):
        self.lab = lab or SimulatedLab(lab_dir, seed=seed, faults=faults, time_compression=None)
        self.reactor = Reactor(name="reactor", lab=self.lab)
        self.sem = SEM(name="sem", lab=self.lab, image_shape=image_shape)
        self.engine = RunEngine({}, call_returns_result=True)
        # The RunEngine holds bound-method callbacks by weak reference: keep them alive here.
        self.subscribers = list(subscribers or [])
        for callback in self.subscribers:
            self.engine.subscribe(callback)
        self._current: dict[str, Any] = {}
        self.engine.subscribe(self._collect)

    def _collect(self, name: str, doc: dict) -> None:
        if name == "start":
            self._current = {"uid": doc["uid"], "frames": [], "streams": {}}
        elif name == "descriptor":
            self._current["streams"][doc["uid"]] = doc.get("name")
        elif name == "event" and self._current["streams"].get(doc["descriptor"]) == "primary":
            self._current["frames"].append(doc["data"])
        elif name == "stop":
            self._current["exit_status"] = doc.get("exit_status")
            self._current["reason"] = doc.get("reason", "")

    def run(self, conditions: dict[str, Any], sample_id: str, md: dict[str, Any]) -> DispatchResult:
        """Make and image one sample. Raises :class:`DispatchError` when a device fails."""
        magnifications = ("low", "high")
        try:
            result = self.engine(synthesize_and_image(self.reactor, self.sem, conditions,
                                                      magnifications=magnifications, sample_id=sample_id, md=md))
        except FailedStatus as exc:
            raise DispatchError(f"device failure during {sample_id}: {exc}", retryable=True) from exc
        except Exception as exc:  # a RunEngine failure: record it, let the campaign decide
            raise DispatchError(f"run of {sample_id} failed: {type(exc).__name__}: {exc}", retryable=True) from exc
        if getattr(result, "exit_status", "success") != "success" or len(self._current.get("frames", [])) < 2:
            raise DispatchError(f"run of {sample_id} ended {self._current.get('exit_status')!r} "
                                f"({self._current.get('reason') or 'no images'})", retryable=True)
        out = DispatchResult(sample_id=sample_id, run_uid=self._current["uid"])
        for mag, frame in zip(magnifications, self._current["frames"]):
            out.images[mag] = str(frame["sem_image_path"])
            out.pixel_size_um[mag] = float(frame["sem_pixel_size_um"])
        return out


def describe_images(describer: Describer, images: dict[str, str]) -> dict[str, float]:
    """What the lab records of one experiment: D50 and sphericity from the low-magnification frame, texture from
    the high one (``describe``'s pipeline)."""
    low = describer.describe(images["low"]).descriptors
    high = describer.describe(images["high"]).descriptors
    return {"d50_um": low.get("d50_um"), "sphericity_mean": low.get("sphericity_mean"),
            "sphericity_std": low.get("sphericity_std"), "texture": high.get("texture")}
