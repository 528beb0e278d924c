"""Run synthesis-and-imaging experiments on the simulated lab through a Bluesky RunEngine.

What ``morphloop simulate`` does: each conditions object becomes one ``synthesize_and_image`` run on a simulated
:class:`~devices.reactor.Reactor` and :class:`~devices.sem.SEM`. Every Bluesky document is appended to
``documents.jsonl`` in the output folder as it is emitted, so a crash loses nothing already measured.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from bluesky import RunEngine

from devices.lab import SimulatedLab
from devices.plans import synthesize_and_image
from devices.reactor import Reactor
from devices.sem import SEM
from simulators.conditions import ConditionError, validate_conditions

DOCUMENTS_FILE = "documents.jsonl"
TRUTH_KEYS = ("d50_um", "sphericity_mean", "sphericity_std", "texture")


@dataclass
class SimulatedSample:
    """One sample made and imaged by the simulated lab (a ``morphloop simulate --json`` record)."""

    sample_id: str
    conditions: dict[str, Any]
    images: dict[str, str] = field(default_factory=dict)
    pixel_size_um: dict[str, float] = field(default_factory=dict)
    truth: dict[str, float] = field(default_factory=dict)
    run_uid: str = ""

    def record(self) -> dict[str, Any]:
        return {"sample_id": self.sample_id, "conditions": self.conditions, "images": self.images,
                "pixel_size_um": self.pixel_size_um, "truth": self.truth}


def parse_conditions(text_or_path: str) -> list[dict[str, Any]]:
    """Conditions from a JSON string or a JSON file: one object or a list of objects, each validated.

    Raises
    ------
    ConditionError
        With the item index, what is wrong and the fix.
    """
    source = text_or_path
    path = Path(text_or_path)
    if not text_or_path.lstrip().startswith(("{", "[")):
        if not path.is_file():
            raise ConditionError(f"--conditions {text_or_path!r} is neither JSON nor an existing file; pass "
                                 "'{\"ph\": 10.5}' or a path to a .json file")
        source = path.read_text()
    try:
        data = json.loads(source)
    except json.JSONDecodeError as exc:
        raise ConditionError(f"conditions are not valid JSON ({exc.msg} at line {exc.lineno} column "
                             f"{exc.colno}); expected an object or a list of objects") from exc
    items = data if isinstance(data, list) else [data]
    if not items:
        raise ConditionError("the conditions list is empty; give at least one conditions object")
    out = []
    for index, item in enumerate(items):
        try:
            out.append(validate_conditions(item))
        except ConditionError as exc:
            where = f"conditions[{index}]: " if isinstance(data, list) else ""
            raise ConditionError(f"{where}{exc}") from exc
    return out


class DocumentLog:
    """Appends every Bluesky ``(name, doc)`` to a JSON-lines file, flushed per document."""

    def __init__(self, path: Path):
        self.path = path
        self._file = path.open("a", encoding="utf-8")

    def __call__(self, name: str, doc: dict) -> None:
        self._file.write(json.dumps({"name": name, "doc": doc}, default=str) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def simulate_samples(
    conditions: Iterable[dict[str, Any]],
    out_dir: str | Path,
    *,
    seed: int = 0,
    magnifications: tuple[str, ...] = ("low", "high"),
    image_shape: tuple[int, int] = (1024, 1024),
    time_compression: float | None = None,
    on_sample: Callable[[SimulatedSample], None] | None = None,
) -> list[SimulatedSample]:
    """Make and image one sample per conditions object on simulated devices through a RunEngine.

    Parameters
    ----------
    conditions : iterable of dict
        Synthesis conditions (missing keys take their defaults).
    out_dir : str or Path
        Image files and ``documents.jsonl``. Must not hold an earlier simulation (sample ids restart at S0001).
    seed : int
        Seed of the simulated lab (world, batch noise and imaging).
    time_compression : float, optional
        Lab seconds per wall second; ``None`` runs syntheses instantly.
    on_sample : callable, optional
        Called with each :class:`SimulatedSample` as soon as its run ends.

    Returns
    -------
    list of SimulatedSample
    """
    out = Path(out_dir)
    if (out / DOCUMENTS_FILE).exists():
        raise FileExistsError(f"{out} already holds a simulation ({DOCUMENTS_FILE}); pass a new --out folder so "
                              "no earlier sample is overwritten")
    out.mkdir(parents=True, exist_ok=True)
    lab = SimulatedLab(out, seed=seed, time_compression=time_compression)
    reactor = Reactor(name="reactor", lab=lab)
    sem = SEM(name="sem", lab=lab, image_shape=image_shape)
    engine = RunEngine({})
    log = DocumentLog(out / DOCUMENTS_FILE)
    engine.subscribe(log)
    current: dict[str, Any] = {}

    def collect(name: str, doc: dict) -> None:
        if name == "start":
            current.clear()
            current.update(uid=doc["uid"], sample_id=doc.get("sample_id"), frames=[])
        elif name == "descriptor":
            current.setdefault("streams", {})[doc["uid"]] = doc.get("name")
        elif name == "event" and current.get("streams", {}).get(doc["descriptor"]) == "primary":
            current["frames"].append(doc["data"])

    engine.subscribe(collect)
    samples = []
    try:
        for conds in conditions:
            engine(synthesize_and_image(reactor, sem, conds, magnifications=magnifications))
            sample_id = current["sample_id"]
            sample = SimulatedSample(sample_id, dict(lab.sample_conditions.get(sample_id, conds)),
                                     run_uid=current["uid"])
            for name, frame in zip(magnifications, current["frames"]):
                sample.images[name] = frame["sem_image_path"]
                sample.pixel_size_um[name] = float(frame["sem_pixel_size_um"])
            morphology = lab.sample(sample_id).as_dict()
            sample.truth = {key: float(morphology[key]) for key in TRUTH_KEYS}
            samples.append(sample)
            if on_sample is not None:
                on_sample(sample)
    finally:
        log.close()
    return samples
