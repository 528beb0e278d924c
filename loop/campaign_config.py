"""A closed-loop campaign's configuration: what it searches, what it aims at, what it may spend, where it writes.

Loaded from TOML (or JSON, or a dict) by :func:`load_campaign_config`, validated with pydantic v2 (unknown keys are
errors), and every problem reported in one :class:`CampaignConfigError`, one line per problem::

    campaign.toml: target.d50_um = 12: outside the physical range 2–7 µm; choose a reachable target

Example ``campaign.toml`` (everything but ``data_dir`` and ``target`` has a default)::

    name = "nmc-overnight"           # prefixes the campaign id, hence every experiment and sample id
    data_dir = "runs/overnight"      # ledger, images, Tiled catalog; created if missing
    # model_dir = "weights/my-surrogate"   # a folder with surrogate.json; default: the shipped model
    batch_size = 4                   # experiments per round (1-16)
    retrain_every_rounds = 2         # fine-tune the surrogate every 2 rounds (0 = never)
    tolerance = 0.05                 # relative tolerance on each descriptor
    seed = 7
    approve = false                  # ask an operator to approve/edit/skip each batch
    approve_timeout_s = 900
    max_attempts = 3                 # dispatches per experiment before it is abandoned
    interrupted_policy = "requeue"   # what resume does with experiments a kill left in flight (loop.ledger)
    local_candidates = 24            # conditions near the best measured samples offered to BoTorch each round
    random_candidates = 16           # and random feasible conditions (exploration where the surrogate is blind)

    [target]                         # numbers ... or: reference_image = "ref.tif" and pixel_size_um = 0.05
    d50_um = 4.5
    sphericity_mean = 0.85
    texture = 0.4

    [weights]
    w_d50 = 1.0
    w_sphericity = 1.0
    w_texture = 0.5

    [budget]
    experiments = 24
    hours = 12

    [devices]                        # or: devices = "simulated"
    backend = "epics"
    reactor_prefix = "XF:31ID-RX{Rx:1}"
    sem_prefix = "XF:31ID-ES{SEM:1}"

    [pso]
    particles = 40
    iters = 50

    [search_space.parameters]        # the format of loop.space.SearchSpace.from_config; default: all 8 conditions
    ph = [10.0, 11.5]
    atmosphere = ["n2", "sealed"]
    [search_space.constraints]
    ratio_window = [0.5, 2.0]

Relative paths (``data_dir``, ``model_dir``, ``target.reference_image``) are resolved against the TOML file's folder
(the working directory for a dict) and stored absolute, so :meth:`CampaignConfig.snapshot` (the ledger's record of
the campaign) does not depend on where the campaign was resumed from.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, ValidationInfo,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from loop.config import DESCRIPTOR_RANGES
from loop.space import SearchSpace

__all__ = ["CampaignConfig", "CampaignConfigError", "load_campaign_config", "TargetConfig", "WeightsConfig",
           "BudgetConfig", "DevicesConfig", "PSOConfig", "TARGET_RANGES", "SURROGATE_CONFIG_FILE"]

#: Physically reachable target of each descriptor: (low, high, unit).
TARGET_RANGES: dict[str, tuple[float, float, str]] = {
    "d50_um": (*DESCRIPTOR_RANGES["d50_um"], " µm"),
    "sphericity_mean": (0.5, 1.0, ""),
    "sphericity_std": (0.0, 0.5, ""),
    "texture": (0.0, 1.0, ""),
}
#: The file that marks a surrogate model folder (``models/surrogate/model.py``'s CONFIG_FILE; copied here so that
#: validating a config does not import torch).
SURROGATE_CONFIG_FILE = "surrogate.json"
_TRAIN_HINT = ("train one with `morphloop surrogate train --data DIR --out MODEL_DIR`, or leave model_dir out to use "
               "the shipped model")
_MISSING_HINTS = {
    "data_dir": 'add data_dir = "path/to/folder" (where the ledger and the images are written)',
    "target": "add a [target] table with d50_um, sphericity_mean and texture (or reference_image and pixel_size_um)",
}
_UNSET = object()


class CampaignConfigError(ValueError):
    """A campaign config that cannot run; ``problems`` holds one readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _problem(msg: str, sub: str = "", value: Any = _UNSET) -> PydanticCustomError:
    return _problems([(sub, value, msg)])


def _problems(items: list[tuple[str, Any, str]]) -> PydanticCustomError:
    """One pydantic error carrying several problems, each ``(sub-path, value or _UNSET, message)``."""
    found = [{"sub": sub, "value": None if value is _UNSET else _show(value), "msg": msg} for sub, value, msg in items]
    text = "; ".join((f"{p['sub']}: " if p["sub"] else "") + p["msg"] for p in found)
    return PydanticCustomError("campaign_config", "{text}", {"text": text, "problems": found})


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, float) else f"{value:g}"
    return text if len(text) <= 80 else text[:77] + "..."


def _resolve(value: Path | None, info: ValidationInfo) -> Path | None:
    """``value`` made absolute against the config's folder (``context["base_dir"]``, default the cwd)."""
    if value is None:
        return None
    value = value.expanduser()
    base = Path((info.context or {}).get("base_dir") or Path.cwd())
    return Path(os.path.normpath(value if value.is_absolute() else base / value))


def _finite(value: float, what: str = "a number") -> float:
    if not math.isfinite(value):
        raise _problem(f"not a finite number; give {what}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetConfig(_Section):
    """The target morphology: the descriptors as numbers, or a reference SEM image (not both)."""

    d50_um: float | None = None
    sphericity_mean: float | None = None
    sphericity_std: float | None = None
    texture: float | None = None
    reference_image: Path | None = None
    pixel_size_um: float | None = None

    @field_validator("d50_um", "sphericity_mean", "sphericity_std", "texture")
    @classmethod
    def _reachable(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is None:
            return None
        low, high, unit = TARGET_RANGES[info.field_name]
        _finite(value, f"a target in {low:g}–{high:g}{unit}")
        if value < 0:
            raise _problem(f"negative; descriptors are non-negative: choose a target in {low:g}–{high:g}{unit}")
        if not low <= value <= high:
            raise _problem(f"outside the physical range {low:g}–{high:g}{unit}; choose a reachable target")
        return value

    @field_validator("pixel_size_um")
    @classmethod
    def _positive_pixel(cls, value: float | None) -> float | None:
        if value is not None and not (_finite(value, "the image's pixel size in µm") > 0):
            raise _problem("must be > 0: the reference image's pixel size in µm")
        return value

    @field_validator("reference_image")
    @classmethod
    def _image_exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        value = _resolve(value, info)
        if value is not None and not value.is_file():
            raise _problem(f"no such file {value}; give the path of a reference SEM image", value=str(value))
        return value

    @model_validator(mode="after")
    def _numbers_or_image(self) -> "TargetConfig":
        numbers = [k for k in ("d50_um", "sphericity_mean", "texture", "sphericity_std")
                   if getattr(self, k) is not None]
        if self.reference_image is not None:
            if numbers:
                raise _problem(f"give either the numbers or reference_image, not both (got reference_image and "
                               f"{', '.join(numbers)}); remove one")
            if self.pixel_size_um is None:
                raise _problem("missing; a reference image needs its pixel size in µm", sub="pixel_size_um")
            return self
        if self.pixel_size_um is not None:
            raise _problem("pixel_size_um only goes with reference_image; remove it or add reference_image",
                           sub="pixel_size_um", value=self.pixel_size_um)
        missing = [k for k in ("d50_um", "sphericity_mean", "texture") if getattr(self, k) is None]
        if missing:
            raise _problem(f"missing {', '.join(missing)}; a numeric target sets d50_um, sphericity_mean and texture "
                           "(or give reference_image and pixel_size_um instead)")
        return self


class WeightsConfig(_Section):
    """Weights of the objective's terms (paper 000 eq. 3): >= 0 and not all 0."""

    w_d50: float = 1.0
    w_sphericity: float = 1.0
    w_texture: float = 1.0
    w_sphericity_std: float | None = None  # default: w_sphericity (when the target sets sphericity_std)

    @field_validator("w_d50", "w_sphericity", "w_texture", "w_sphericity_std")
    @classmethod
    def _non_negative(cls, value: float | None) -> float | None:
        if value is not None and not _finite(value, "a weight >= 0") >= 0:
            raise _problem("negative; weights are >= 0 (0 leaves the descriptor out)")
        return value

    @model_validator(mode="after")
    def _not_all_zero(self) -> "WeightsConfig":
        if self.w_d50 == self.w_sphericity == self.w_texture == 0 and not self.w_sphericity_std:
            raise _problem("all weights are 0: the objective would be flat; give at least one weight > 0")
        return self

    def as_tuple(self) -> tuple[float, ...]:
        """``(w1, w2, w3[, w4])`` in :class:`loop.objective.Objective`'s order (D50, sphericity, texture, std)."""
        w = (self.w_d50, self.w_sphericity, self.w_texture)
        return w if self.w_sphericity_std is None else (*w, self.w_sphericity_std)


class BudgetConfig(_Section):
    """What the campaign may spend; it stops at the first limit reached."""

    experiments: Annotated[StrictInt, Field(ge=1, description="give the number of experiments the campaign may run "
                                                              "(an integer >= 1)")] = 32
    hours: float = Field(12.0, description="give the wall-clock hours the campaign may run (> 0)")

    @field_validator("hours")
    @classmethod
    def _positive_hours(cls, value: float) -> float:
        if not _finite(value, "a duration in hours") > 0:
            raise _problem("must be > 0 hours")
        return value


class DevicesConfig(_Section):
    """The reactor and the SEM: the virtual lab (``"simulated"``) or EPICS IOCs under PV prefixes."""

    backend: Literal["simulated", "epics"] = Field("simulated", description='use "simulated" (the virtual lab) or '
                                                                           '"epics" (with reactor_prefix, sem_prefix)')
    reactor_prefix: str | None = None
    sem_prefix: str | None = None
    fault_rate: float = Field(0.0, ge=0.0, lt=1.0, description="give the probability (0 <= p < 1) that an operation "
                                                              "of the simulated lab fails (fault injection)")

    @model_validator(mode="after")
    def _prefixes_match_backend(self) -> "DevicesConfig":
        given = {k: v for k, v in (("reactor_prefix", self.reactor_prefix), ("sem_prefix", self.sem_prefix)) if v}
        if self.backend == "epics":
            missing = [k for k in ("reactor_prefix", "sem_prefix") if k not in given]
            if missing:
                raise _problems([(k, _UNSET, "missing; the epics backend needs the PV prefix of each device (e.g. "
                                              '"XF:31ID-RX{Rx:1}")') for k in missing])
        elif given:
            raise _problems([(k, v, "PV prefixes only go with backend = \"epics\"; remove them or switch backend")
                             for k, v in given.items()])
        return self


class PSOConfig(_Section):
    """Particle swarm over the surrogate (paper 000: 40 particles, 50 iterations)."""

    particles: Annotated[StrictInt, Field(ge=2, le=4096, description="give the swarm size, an integer in 2-4096 "
                                                                     "(paper 000: 40)")] = 40
    iters: Annotated[StrictInt, Field(ge=1, le=10000, description="give the PSO iterations, an integer in 1-10000 "
                                                                  "(paper 000: 50)")] = 50


class CampaignConfig(_Section):
    """A validated campaign config (see the module docstring for the TOML layout)."""

    name: str | None = None
    search_space: dict[str, Any] = Field(default_factory=dict)
    target: TargetConfig
    weights: WeightsConfig = Field(default_factory=WeightsConfig)
    tolerance: float = 0.05
    batch_size: Annotated[StrictInt, Field(ge=1, le=16, description="give the experiments per round, an integer "
                                                                    "in 1-16")] = 4
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    retrain_every_rounds: Annotated[StrictInt, Field(ge=0, description="give an integer >= 0 (fine-tune the "
                                                                       "surrogate every n rounds; 0 = never)")] = 0
    devices: DevicesConfig = Field(default_factory=DevicesConfig)
    data_dir: Path
    model_dir: Path | None = None
    pso: PSOConfig = Field(default_factory=PSOConfig)
    approve: StrictBool = Field(False, description="write true or false (ask an operator to approve each batch)")
    approve_timeout_s: float = 900.0
    seed: Annotated[StrictInt, Field(ge=0, description="give an integer >= 0")] = 0
    max_attempts: Annotated[StrictInt, Field(ge=1, le=100, description="give the dispatches an experiment may "
                                                                       "take before it is abandoned (1-100)")] = 3
    interrupted_policy: Literal["requeue", "abandon"] = Field("requeue", description="what resume does with "
                                                              "experiments a kill left in flight (see loop.ledger)")
    surrogate_steps: Annotated[StrictInt, Field(ge=1, le=200, description="give the surrogate's solver steps, an "
                                                                          "integer in 1-200")] | None = None
    images_per_condition: Annotated[StrictInt, Field(ge=1, le=64, description="give the tiles the surrogate "
                                                                              "generates per condition and "
                                                                              "magnification (1-64)")] = 2
    retrain_minutes: float = Field(0.5, gt=0, description="give the fine-tuning time per retrain in minutes (> 0)")
    local_candidates: Annotated[StrictInt, Field(ge=0, le=1024, description="give the conditions drawn near the "
                                                 "best measured samples each round, an integer in 0-1024")] = 24
    random_candidates: Annotated[StrictInt, Field(ge=0, le=1024, description="give the random conditions offered "
                                                  "to BoTorch each round, an integer in 0-1024")] = 16

    @field_validator("search_space")
    @classmethod
    def _valid_space(cls, value: dict[str, Any]) -> dict[str, Any]:
        params = value.get("parameters")
        problems: list[tuple[str, Any, str]] = []
        if isinstance(params, Mapping):  # one parameter at a time, so each problem names its parameter
            for name, spec in params.items():
                try:
                    SearchSpace.from_config({"parameters": {name: spec}})
                except (ValueError, TypeError) as exc:
                    problems.append((f"parameters.{name}", spec, str(exc)))
        if not problems:
            try:
                SearchSpace.from_config(value)
            except (ValueError, TypeError) as exc:
                constraints = value.get("constraints") if isinstance(value.get("constraints"), Mapping) else {}
                key = next((k for k in ("ratio_window", "fixed") if k in str(exc) and k in constraints), None)
                problems.append((f"constraints.{key}", constraints[key], str(exc)) if key else ("", _UNSET, str(exc)))
        if problems:
            raise _problems(problems)
        return value

    @field_validator("name")
    @classmethod
    def _id_safe_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}", value):
            raise _problem("must be 1-41 letters, digits, '_', '.' or '-' (starting with a letter or digit): it "
                           "prefixes every experiment and sample id")
        return value

    @field_validator("devices", mode="before")
    @classmethod
    def _devices_shorthand(cls, value: Any) -> Any:
        return {"backend": value} if isinstance(value, str) else value

    @field_validator("tolerance")
    @classmethod
    def _relative_tolerance(cls, value: float) -> float:
        if not 0 < _finite(value, "a fraction such as 0.05") < 1:
            raise _problem("must be a relative tolerance in (0, 1), e.g. 0.05 for 5 %")
        return value

    @field_validator("approve_timeout_s")
    @classmethod
    def _positive_timeout(cls, value: float) -> float:
        if not _finite(value, "seconds") > 0:
            raise _problem("must be > 0 seconds")
        return value

    @field_validator("data_dir")
    @classmethod
    def _writable_data_dir(cls, value: Path, info: ValidationInfo) -> Path:
        path = _resolve(value, info)
        if path.exists() and not path.is_dir():
            raise _problem(f"{path} is a file, not a folder; point data_dir to a folder", value=str(path))
        created = []
        probe = path
        while not probe.exists() and probe != probe.parent:
            created.append(probe)
            probe = probe.parent
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".morphloop-write-check-"):
                pass
        except OSError as exc:
            raise _problem(f"cannot create or write in {path} ({exc.strerror or exc}); choose a folder you can write "
                           "to, or fix its permissions", value=str(path)) from None
        finally:
            for folder in created:  # leave no trace of the check: the campaign creates the folder when it starts
                try:
                    folder.rmdir()
                except OSError:
                    pass
        return path

    @field_validator("model_dir")
    @classmethod
    def _trained_model_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        path = _resolve(value, info)
        if path is not None and not (path / SURROGATE_CONFIG_FILE).is_file():
            what = "no such folder" if not path.exists() else f"no {SURROGATE_CONFIG_FILE} in {path}"
            raise _problem(f"{what}: not a trained surrogate; {_TRAIN_HINT}", value=str(path))
        return path

    @model_validator(mode="after")
    def _consistent(self) -> "CampaignConfig":
        problems = []
        if self.budget.experiments < self.batch_size:
            problems.append(("budget.experiments", self.budget.experiments,
                             f"smaller than batch_size = {self.batch_size}: not even one full round fits; raise the "
                             "budget or lower batch_size"))
        if problems:
            raise _problems(problems)
        return self

    # -- what the rest of the loop takes ----------------------------------------------------------------------
    def space(self) -> SearchSpace:
        """The :class:`loop.space.SearchSpace` to search."""
        return SearchSpace.from_config(self.search_space)

    def objective_target(self) -> Any:
        """The :class:`loop.objective.Target` of a numeric target (None for a reference image: its descriptors are
        measured by ``models/`` first)."""
        from loop.objective import Target  # lazily: validating a config needs no objective

        t = self.target
        if t.reference_image is not None:
            return None
        return Target(d50_um=t.d50_um, sphericity_mean=t.sphericity_mean, texture=t.texture,
                      sphericity_std=t.sphericity_std, tolerance=self.tolerance)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able record of the config (the ledger's ``meta``): absolute paths and the explicit search space
        (every bound written out); :func:`load_campaign_config` reads it back."""
        out = self.model_dump(mode="json")
        out["search_space"] = self.space().to_config()
        return out


def load_campaign_config(source: str | Path | Mapping[str, Any]) -> CampaignConfig:
    """Read and validate a campaign config from a TOML (or JSON) file or a mapping.

    Raises
    ------
    CampaignConfigError
        With one line per problem: ``"<file>: <field.path> = <value>: <problem>; <fix>"``.
    """
    if isinstance(source, Mapping):
        where, base, data = "campaign config", Path.cwd(), dict(source)
    else:
        path = Path(source)
        where, base = str(source), path.parent
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CampaignConfigError([f"{where}: cannot read the campaign config ({exc.strerror or exc}); check the "
                                       "path"]) from None
        try:
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise CampaignConfigError([f"{where}: not valid {'JSON' if path.suffix == '.json' else 'TOML'} ({exc}); "
                                       "fix the syntax"]) from None
    try:
        return CampaignConfig.model_validate(data, context={"base_dir": base})
    except ValidationError as exc:
        raise CampaignConfigError([line for err in exc.errors() for line in _explain(where, err)]) from None


def _explain(where: str, err: Mapping[str, Any]) -> list[str]:
    """Readable lines for one pydantic error: ``where: path = value: problem; fix``."""
    loc = [str(p) for p in err["loc"]]
    path = ".".join(loc) or "(top level)"
    ctx = err.get("ctx") or {}
    if err["type"] == "campaign_config":
        lines = []
        for p in ctx["problems"]:
            full = ".".join([*loc, p["sub"]] if p["sub"] else loc) or "(top level)"
            shown = p["sub"] == "" and loc and not isinstance(err["input"], Mapping)
            value = p["value"] if p["value"] is not None else (_show(err["input"]) if shown else None)
            lines.append(f"{where}: {full}" + (f" = {value}" if value is not None else "") + f": {p['msg']}")
        return lines
    if err["type"] == "extra_forbidden":
        allowed = sorted(_section_at(loc[:-1]).model_fields) if _section_at(loc[:-1]) else []
        return [f"{where}: {path} = {_show(err['input'])}: unknown key; allowed keys"
                f"{' in ' + '.'.join(loc[:-1]) if loc[:-1] else ''}: {', '.join(allowed)}"]
    if err["type"] == "missing":
        return [f"{where}: {path}: missing; {_MISSING_HINTS.get(path, 'add it')}"]
    section = _section_at(loc[:-1])
    field = section.model_fields.get(loc[-1]) if section is not None and loc else None
    hint = f"; {field.description}" if field is not None and field.description else ""
    return [f"{where}: {path} = {_show(err['input'])}: {err['msg']}{hint}"]


def _section_at(loc: list[str]) -> type[BaseModel] | None:
    """The model class of the config section at ``loc`` (None when it is not a section)."""
    cls: type[BaseModel] = CampaignConfig
    for part in loc:
        field = cls.model_fields.get(part)
        if field is None:
            return None
        sub = next((a for a in (field.annotation, *getattr(field.annotation, "__args__", ()))
                    if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None:
            return None
        cls = sub
    return cls
