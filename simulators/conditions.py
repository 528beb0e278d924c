"""Synthesis conditions of the coprecipitation reactor and the morphology they produce: names, units, ranges.

These names are a contract used everywhere (JSON, devices, search spaces): ``ph``, ``naoh_wt_pct``,
``nh4oh_wt_pct``, ``time_min``, ``temperature_c``, ``stir_rpm``, ``atmosphere``, ``additive_ppm``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class ContinuousCondition:
    """A numeric synthesis condition with its unit, physical range and default."""

    name: str
    unit: str
    low: float
    high: float
    default: float
    description: str


@dataclass(frozen=True)
class CategoricalCondition:
    """A synthesis condition taking one of a few named values."""

    name: str
    choices: tuple[str, ...]
    default: str
    description: str


CONDITIONS: dict[str, ContinuousCondition | CategoricalCondition] = {
    c.name: c
    for c in (
        ContinuousCondition("ph", "pH", 9.5, 11.5, 10.5, "reactor pH held by the base pump"),
        ContinuousCondition("naoh_wt_pct", "wt%", 0.05, 3.0, 1.0, "initial NaOH loading"),
        ContinuousCondition("nh4oh_wt_pct", "wt%", 0.05, 3.0, 1.0, "initial NH4OH (chelating agent) loading"),
        ContinuousCondition("time_min", "min", 30.0, 1440.0, 360.0, "reaction time"),
        ContinuousCondition("temperature_c", "°C", 20.0, 60.0, 50.0, "reactor temperature"),
        ContinuousCondition("stir_rpm", "rpm", 300.0, 1500.0, 800.0, "impeller speed"),
        CategoricalCondition("atmosphere", ("n2", "sealed", "air"), "n2",
                             "n2: nitrogen purge; sealed: closed reactor; air: open to O2"),
        ContinuousCondition("additive_ppm", "ppm", 0.0, 5000.0, 0.0, "surfactant additive"),
    )
}

DEFAULT_CONDITIONS: dict[str, Any] = {name: c.default for name, c in CONDITIONS.items()}


class ConditionError(ValueError):
    """Synthesis conditions that are unknown, malformed or outside the reactor's range."""


def validate_conditions(conditions: Mapping[str, Any]) -> dict[str, Any]:
    """Complete ``conditions`` with the defaults and check every value.

    Returns
    -------
    dict
        All eight conditions, numbers as ``float``, ``atmosphere`` as one of its choices.

    Raises
    ------
    ConditionError
        Naming the offending key, the value, the allowed range and the fix.
    """
    if not isinstance(conditions, Mapping):
        raise ConditionError(f"conditions must be a JSON object of name: value, got {type(conditions).__name__}")
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        raise ConditionError(f"unknown condition(s) {unknown}; known: {sorted(CONDITIONS)}")
    out = dict(DEFAULT_CONDITIONS)
    for name, value in conditions.items():
        spec = CONDITIONS[name]
        if isinstance(spec, CategoricalCondition):
            if value not in spec.choices:
                raise ConditionError(f"{name}={value!r} is not one of {list(spec.choices)}")
            out[name] = value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConditionError(f"{name}={value!r} must be a finite number in {spec.unit}")
        if not spec.low <= value <= spec.high:
            raise ConditionError(f"{name}={value} {spec.unit} is outside the reactor's range "
                                 f"[{spec.low}, {spec.high}]; choose a value inside it")
        out[name] = float(value)
    return out


def naoh_nh4oh_ratio(conditions: Mapping[str, Any]) -> float:
    """The NaOH/NH4OH loading ratio that drives primary-particle shape."""
    return float(conditions["naoh_wt_pct"]) / float(conditions["nh4oh_wt_pct"])


@dataclass(frozen=True)
class Morphology:
    """The precursor morphology of one sample (what SEM images show and ``describe`` measures).

    Attributes
    ----------
    d50_um : float
        Number-median equivalent diameter of the secondary particles (lognormal median).
    d50_spread : float
        Log-sigma of the lognormal secondary-particle size distribution.
    sphericity_mean, sphericity_std : float
        Mean and standard deviation of Ψ = 4πA/P² over the secondary particles.
    texture : float
        Primary-particle texture on ``describe``'s normalised [0, 1] scale (1: thin dense platelets).
    primary_aspect : float
        Length/width of the primary platelets (needle-like above ~4).
    """

    d50_um: float
    d50_spread: float
    sphericity_mean: float
    sphericity_std: float
    texture: float
    primary_aspect: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)
