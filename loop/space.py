"""The search space of inverse design: typed synthesis parameters, constraints and the unit-cube encoding.

Optimisers (PSO, BoTorch) work on the unit cube ``[0, 1]^d``; predictors and the lab take condition dicts.
:meth:`SearchSpace.to_unit` and :meth:`SearchSpace.from_unit` translate between the two.

Encoding (one column or more per free parameter, in parameter order; types in :mod:`loop.parameters`)
----------------------------------------------------------------------------------------------------
* :class:`Continuous`: one column, ``(v - low) / (high - low)``, on ``log v`` when ``log=True``.
* :class:`Integer`: one column split into ``high - low + 1`` equal bins (each integer gets the same volume, so
  uniform sampling and swarms treat the ends fairly); decoding takes the bin.
* :class:`Categorical`: one column per choice (one-hot); decoding takes the argmax (ties: the first choice).
  This imposes no order on the choices, unlike one column cut into bins, at the price of ``k - 1`` extra
  dimensions. BoTorch optimises the relaxed one-hot continuously and rounds afterwards.
* Fixed parameters have no column: they are added back by :meth:`SearchSpace.from_unit`.

Constraints
-----------
* ``ratio_window=(lo, hi)``: ``lo <= naoh_wt_pct / nh4oh_wt_pct <= hi``. :meth:`SearchSpace.from_unit` repairs
  a point outside the window by projecting it onto the window in (log NaOH, log NH4OH) (equal and opposite
  moves; the other loading takes over where one meets its bound),
  so swarm particles and relaxed BoTorch candidates always decode to feasible conditions.
* ``fixed={name: value}``: the parameter keeps that value (it must lie in the parameter's bounds).
"""
from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from loop.config import (LAB_CATEGORICAL, LAB_CONDITION_NAMES, LAB_CONTINUOUS, RATIO_DENOMINATOR,
                         RATIO_NUMERATOR)
from loop.parameters import TOL as _TOL
from loop.parameters import Categorical, Continuous, Integer, Parameter, check_bounds

__all__ = ["Continuous", "Integer", "Categorical", "SearchSpace"]


class SearchSpace:
    """Typed synthesis parameters with constraints, and their ``[0, 1]^d`` encoding.

    Parameters
    ----------
    parameters : sequence of Continuous, Integer, Categorical
        The parameters (distinct names). Conditions the space does not list are left to the predictor (which
        fills the lab defaults).
    ratio_window : (float, float), optional
        ``lo <= naoh_wt_pct / nh4oh_wt_pct <= hi``; both loadings must be continuous parameters.
    fixed : mapping, optional
        Parameters held at one value (inside their bounds); they take no column of the encoding.

    Raises
    ------
    ValueError
        Duplicate names, a constraint on an unknown parameter, a fixed value outside its bounds, or a ratio
        window that no point of the bounds satisfies; the message names the field and the fix.
    """

    def __init__(self, parameters: Sequence[Parameter], ratio_window: tuple[float, float] | None = None,
                 fixed: Mapping[str, Any] | None = None) -> None:
        self.parameters: tuple[Parameter, ...] = tuple(parameters)
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise ValueError(f"parameter names must be distinct, got {names}")
        self._by_name = dict(zip(names, self.parameters))
        self.fixed = self._checked_fixed(dict(fixed or {}))
        self.free: tuple[Parameter, ...] = tuple(p for p in self.parameters if p.name not in self.fixed)
        self.ratio_window = None if ratio_window is None else self._checked_ratio_window(ratio_window)

    # -- construction ---------------------------------------------------------------------------------------
    def _checked_fixed(self, fixed: dict[str, Any]) -> dict[str, Any]:
        for name, value in fixed.items():
            if name not in self._by_name:
                raise ValueError(f"fixed value for unknown parameter {name!r}; parameters: {sorted(self._by_name)}")
            p = self._by_name[name]
            if not p.contains(value):
                where = list(p.choices) if isinstance(p, Categorical) else f"[{p.low}, {p.high}]"
                raise ValueError(f"fixed {name}={value!r} is outside the parameter's bounds {where}; "
                                 "fix a value inside them or widen the bounds")
            fixed[name] = value if isinstance(p, Categorical) else (int(value) if isinstance(p, Integer)
                                                                   else float(value))
        return fixed

    def _loading_range(self, name: str) -> tuple[float, float]:
        p = self._by_name.get(name)
        if not isinstance(p, Continuous) or p.low <= 0:
            raise ValueError(f"ratio_window needs {name!r} as a continuous parameter with low > 0; "
                             "add it to the parameters or drop the ratio_window constraint")
        return (self.fixed[name],) * 2 if name in self.fixed else (p.low, p.high)

    def _checked_ratio_window(self, window: Sequence[float]) -> tuple[float, float]:
        lo, hi = (float(v) for v in window)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
            raise ValueError(f"ratio_window must be two finite numbers 0 < lo < hi, got {list(window)}")
        n_lo, n_hi = self._loading_range(RATIO_NUMERATOR)
        d_lo, d_hi = self._loading_range(RATIO_DENOMINATOR)
        r_lo, r_hi = n_lo / d_hi, n_hi / d_lo
        if hi < r_lo * (1 - _TOL) or lo > r_hi * (1 + _TOL):
            raise ValueError(f"ratio_window [{lo}, {hi}] conflicts with the bounds: {RATIO_NUMERATOR}/"
                             f"{RATIO_DENOMINATOR} can only reach [{r_lo:.4g}, {r_hi:.4g}]; move the window "
                             "into that range or widen the loadings' bounds")
        return lo, hi

    @classmethod
    def default(cls) -> "SearchSpace":
        """All eight virtual-lab conditions over the reactor's full ranges (loadings log-scaled)."""
        return cls.from_config({})

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "SearchSpace":
        """Build a space from ``{"parameters": {...}, "constraints": {...}}`` (a parsed TOML/JSON file).

        Each parameter is a lab condition name mapped to ``{"low", "high"[, "log", "type": "integer"]}``,
        ``[low, high]``, ``{"choices": [...]}``, a list of choices, or ``{}`` for the lab's full range; units
        come from the lab. Without ``"parameters"`` all lab conditions are searched. ``constraints`` may hold
        ``"ratio_window": [lo, hi]`` and ``"fixed": {name: value}`` (a fixed lab condition not listed in
        ``parameters`` is added with its lab range).
        """
        _check_keys("search-space config", config, {"parameters", "constraints"})
        specs = config.get("parameters")
        specs = {name: {} for name in LAB_CONDITION_NAMES} if specs is None else dict(specs)
        constraints = dict(config.get("constraints") or {})
        _check_keys("constraints", constraints, {"ratio_window", "fixed"})
        fixed = dict(constraints.get("fixed") or {})
        for name in fixed:
            specs.setdefault(name, {})
        parameters = [_lab_parameter(name, spec) for name, spec in specs.items()]
        return cls(parameters, ratio_window=constraints.get("ratio_window"), fixed=fixed)

    @classmethod
    def from_file(cls, path: str | Path) -> "SearchSpace":
        """:meth:`from_config` of a ``.toml`` or ``.json`` file."""
        path = Path(path)
        if path.suffix == ".toml":
            return cls.from_config(tomllib.loads(path.read_text()))
        return cls.from_config(json.loads(path.read_text()))

    def to_config(self) -> dict[str, Any]:
        """A JSON-able config that :meth:`from_config` turns back into this space (lab parameters only)."""
        params: dict[str, Any] = {}
        for p in self.parameters:
            if isinstance(p, Categorical):
                params[p.name] = {"choices": list(p.choices)}
            elif isinstance(p, Integer):
                params[p.name] = {"type": "integer", "low": p.low, "high": p.high}
            else:
                params[p.name] = {"low": p.low, "high": p.high, "log": p.log}
        constraints: dict[str, Any] = {"fixed": dict(self.fixed)}
        if self.ratio_window is not None:
            constraints["ratio_window"] = list(self.ratio_window)
        return {"parameters": params, "constraints": constraints}

    def __repr__(self) -> str:
        return f"SearchSpace({[p.name for p in self.parameters]}, dim={self.dim}, ratio_window={self.ratio_window}, " \
               f"fixed={self.fixed})"

    # -- encoding -------------------------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """All parameter names (free and fixed), in order."""
        return tuple(p.name for p in self.parameters)

    @property
    def dim(self) -> int:
        """Number of unit-cube columns ``d``."""
        return sum(p.width for p in self.free)

    @property
    def columns(self) -> tuple[str, ...]:
        """A label per unit-cube column (``name`` or ``name=choice``)."""
        return tuple(c for p in self.free for c in
                     ([f"{p.name}={ch}" for ch in p.choices] if isinstance(p, Categorical) else [p.name]))

    def to_unit(self, conditions: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> np.ndarray:
        """Encode conditions as an ``n x d`` array (values outside the bounds map outside [0, 1], unclipped).

        Keys the space does not search (fixed or extra ones) are ignored; a missing free parameter raises.
        """
        rows = [conditions] if isinstance(conditions, Mapping) else list(conditions)
        blocks = [np.zeros((len(rows), 0))]
        for p in self.free:
            missing = [i for i, c in enumerate(rows) if p.name not in c]
            if missing:
                raise ValueError(f"conditions #{missing[0]} lack parameter {p.name!r}; give every free parameter "
                                 f"of the space: {[q.name for q in self.free]}")
            blocks.append(p.encode([c[p.name] for c in rows]))
        return np.concatenate(blocks, axis=1)

    def from_unit(self, x: np.ndarray, repair: bool = True) -> list[dict[str, Any]]:
        """Decode an ``n x d`` array (clipped to [0, 1]) into condition dicts, fixed values included.

        With ``repair`` (default) points outside the ratio window are projected into it.
        """
        x = np.atleast_2d(np.asarray(x, dtype=float))
        if x.shape[1] != self.dim:
            raise ValueError(f"expected an n x {self.dim} array (columns {list(self.columns)}), got {x.shape}")
        decoded: dict[str, list] = {}
        col = 0
        for p in self.free:
            decoded[p.name] = p.decode(x[:, col:col + p.width])
            col += p.width
        out = []
        for i in range(x.shape[0]):
            c = {p.name: (self.fixed[p.name] if p.name in self.fixed else decoded[p.name][i])
                 for p in self.parameters}
            out.append(self.repair(c) if repair else c)
        return out

    # -- constraints ----------------------------------------------------------------------------------------
    def ratio_ok(self, conditions: Mapping[str, Any]) -> bool:
        """Whether the NaOH/NH4OH ratio of ``conditions`` lies in the window (True without a window)."""
        if self.ratio_window is None:
            return True
        r = float(conditions[RATIO_NUMERATOR]) / float(conditions[RATIO_DENOMINATOR])
        return self.ratio_window[0] * (1 - _TOL) <= r <= self.ratio_window[1] * (1 + _TOL)

    def is_feasible(self, conditions: Mapping[str, Any]) -> bool:
        """Whether ``conditions`` give every parameter a value inside its bounds, honour the fixed values and
        the ratio window."""
        for p in self.parameters:
            if p.name not in conditions or not p.contains(conditions[p.name]):
                return False
            if p.name in self.fixed and conditions[p.name] != self.fixed[p.name]:
                return False
        return self.ratio_ok(conditions)

    def repair(self, conditions: Mapping[str, Any]) -> dict[str, Any]:
        """``conditions`` with the loadings moved the least (in log space) to enter the ratio window."""
        c = dict(conditions)
        if self.ratio_window is None or self.ratio_ok(c):
            return c
        log_lo, log_hi = (math.log(v) for v in self.ratio_window)
        a, b = math.log(c[RATIO_NUMERATOR]), math.log(c[RATIO_DENOMINATOR])
        ba = [math.log(v) for v in self._loading_range(RATIO_NUMERATOR)]
        bb = [math.log(v) for v in self._loading_range(RATIO_DENOMINATOR)]
        margin = 1e-12 * (log_hi - log_lo)
        target = min(max(a - b, log_lo + margin), log_hi - margin)
        a_new = min(max(a - (a - b - target) / 2, ba[0]), ba[1])  # split the move evenly ...
        b_new = min(max(a_new - target, bb[0]), bb[1])            # ... the other loading takes the rest ...
        a_new = min(max(b_new + target, ba[0]), ba[1])            # ... and what its bounds refused
        c[RATIO_NUMERATOR], c[RATIO_DENOMINATOR] = math.exp(a_new), math.exp(b_new)
        return c

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> list[dict[str, Any]]:
        """``n`` feasible conditions drawn uniformly over the unit cube (rejection on the ratio window;
        after 50 rounds the stragglers are repaired)."""
        rng = np.random.default_rng(rng)
        out: list[dict[str, Any]] = []
        for _ in range(50):
            draws = self.from_unit(self._draw_unit(max(4 * (n - len(out)), 8), rng), repair=False)
            out.extend(c for c in draws if self.ratio_ok(c))
            if len(out) >= n:
                return out[:n]
        return out + self.from_unit(self._draw_unit(n - len(out), rng))

    def neighbours(self, centre: Mapping[str, Any], n: int, radius: float | Sequence[float] = 0.1,
                   rng: np.random.Generator | int | None = None, switch: float = 0.25) -> list[dict[str, Any]]:
        """``n`` feasible conditions near ``centre``: a Gaussian step in the unit cube (a trust region).

        Continuous and integer columns move by ``N(0, r^2)`` with ``r`` cycling through ``radius`` (one value or
        several, to mix small and large steps), clipped to ``[0, 1]``; each categorical parameter switches to
        another choice with probability ``switch`` (an atmosphere has no small step: it keeps or it changes).
        Points are repaired into the ratio window.
        """
        rng = np.random.default_rng(rng)
        radii = np.resize(np.atleast_1d(np.asarray(radius, dtype=float)), n)
        if not np.all(np.isfinite(radii) & (radii > 0)):
            raise ValueError(f"radius must be positive, got {radius!r}")
        x = np.repeat(self.to_unit(centre), n, axis=0)
        col = 0
        for p in self.free:
            if not isinstance(p, Categorical):
                x[:, col] = np.clip(x[:, col] + radii * rng.standard_normal(n), 0.0, 1.0)
            elif p.width > 1:
                flip = rng.random(n) < switch
                current = x[:, col:col + p.width].argmax(axis=1)
                other = (current + rng.integers(1, p.width, size=n)) % p.width  # uniform over the others
                x[flip, col:col + p.width] = np.eye(p.width)[other[flip]]
            col += p.width
        return self.from_unit(x)

    def _draw_unit(self, n: int, rng: np.random.Generator) -> np.ndarray:
        x = rng.random((n, self.dim))
        col = 0
        for p in self.free:  # categoricals: an exact one-hot so each choice gets 1/k of the draws
            if isinstance(p, Categorical):
                x[:, col:col + p.width] = np.eye(p.width)[rng.integers(p.width, size=n)]
            col += p.width
        return x


def _check_keys(where: str, mapping: Mapping[str, Any], allowed: set[str]) -> None:
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(mapping).__name__}")
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")


def _lab_parameter(name: str, spec: Any) -> Parameter:
    """A parameter for lab condition ``name`` from its config ``spec``, checked against the lab's range."""
    if name in LAB_CATEGORICAL:
        lab_choices = LAB_CATEGORICAL[name][0]
        if isinstance(spec, Mapping):
            _check_keys(f"parameter {name!r}", spec, {"choices"})
            spec = spec.get("choices", lab_choices)
        bad = [c for c in spec if c not in lab_choices]
        if bad:
            raise ValueError(f"parameter {name!r}: choices {bad} are not lab choices {list(lab_choices)}")
        return Categorical(name, tuple(spec))
    if name not in LAB_CONTINUOUS:
        raise ValueError(f"unknown parameter {name!r}; lab conditions are {list(LAB_CONDITION_NAMES)}")
    unit, lab_low, lab_high, _, lab_log = LAB_CONTINUOUS[name]
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        if len(spec) != 2:
            raise ValueError(f"parameter {name!r}: give [low, high], got {list(spec)}")
        spec = {"low": spec[0], "high": spec[1]}
    _check_keys(f"parameter {name!r}", spec, {"low", "high", "log", "type"})
    low, high = spec.get("low", lab_low), spec.get("high", lab_high)
    check_bounds(name, low, high)
    if low < lab_low or high > lab_high:
        raise ValueError(f"parameter {name!r}: [{low}, {high}] {unit} leaves the reactor's range "
                         f"[{lab_low}, {lab_high}]; narrow the bounds")
    kind = spec.get("type", "continuous")
    if kind == "integer":
        return Integer(name, int(math.ceil(low)), int(math.floor(high)), unit)
    if kind != "continuous":
        raise ValueError(f"parameter {name!r}: type must be 'continuous' or 'integer', got {kind!r}")
    return Continuous(name, float(low), float(high), unit, bool(spec.get("log", lab_log)))
