"""Typed search-space parameters and their unit-interval encoding (used by :class:`loop.space.SearchSpace`).

* :class:`Continuous`: one column, ``(v - low) / (high - low)``, on ``log v`` when ``log=True``.
* :class:`Integer`: one column split into ``high - low + 1`` equal bins (each integer gets the same volume, so
  uniform sampling and swarms treat the ends fairly); decoding takes the bin.
* :class:`Categorical`: one column per choice (one-hot); decoding takes the argmax (ties: the first choice).

``encode(values) -> n x width`` and ``decode(u: n x width) -> values`` (``u`` clipped to [0, 1]).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["Continuous", "Integer", "Categorical", "Parameter"]
TOL = 1e-9  # relative slack of feasibility checks (decoded floats sit exactly on bounds)


@dataclass(frozen=True)
class Continuous:
    """A real-valued parameter in ``[low, high]`` (searched on ``log`` scale when ``log=True``)."""

    name: str
    low: float
    high: float
    unit: str = ""
    log: bool = False

    def __post_init__(self) -> None:
        check_bounds(self.name, self.low, self.high)
        if self.log and self.low <= 0:
            raise ValueError(f"parameter {self.name!r}: log=True needs low > 0, got low={self.low}; "
                             "raise low or set log=false")

    width = 1

    def _t(self, v: np.ndarray) -> np.ndarray:
        return np.log(v) if self.log else v

    def encode(self, values: Sequence[Any]) -> np.ndarray:
        v = np.asarray([_number(self.name, x) for x in values], dtype=float)
        if self.log and np.any(v <= 0):
            raise ValueError(f"parameter {self.name!r} is log-scaled: values must be > 0, got {v.min()}")
        lo, hi = self._t(np.array([self.low, self.high]))
        return ((self._t(v) - lo) / (hi - lo))[:, None]

    def decode(self, u: np.ndarray) -> list[float]:
        lo, hi = self._t(np.array([self.low, self.high]))
        t = lo + np.clip(u[:, 0], 0.0, 1.0) * (hi - lo)
        v = np.exp(t) if self.log else t
        return [float(x) for x in np.clip(v, self.low, self.high)]

    def contains(self, value: Any) -> bool:
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        slack = TOL * max(1.0, abs(self.high - self.low))
        return ok and math.isfinite(value) and self.low - slack <= value <= self.high + slack


@dataclass(frozen=True)
class Integer:
    """An integer parameter in ``[low, high]`` (both included)."""

    name: str
    low: int
    high: int
    unit: str = ""

    def __post_init__(self) -> None:
        check_bounds(self.name, self.low, self.high)
        if int(self.low) != self.low or int(self.high) != self.high:
            raise ValueError(f"parameter {self.name!r}: integer bounds must be whole numbers, "
                             f"got [{self.low}, {self.high}]")

    width = 1

    def encode(self, values: Sequence[Any]) -> np.ndarray:
        v = np.asarray([_number(self.name, x) for x in values], dtype=float)
        return ((v - self.low + 0.5) / (self.high - self.low + 1))[:, None]

    def decode(self, u: np.ndarray) -> list[int]:
        n_bins = self.high - self.low + 1
        bins = np.minimum(np.floor(np.clip(u[:, 0], 0.0, 1.0) * n_bins), n_bins - 1)
        return [int(self.low + b) for b in bins]

    def contains(self, value: Any) -> bool:
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        return ok and float(value).is_integer() and self.low <= value <= self.high


@dataclass(frozen=True)
class Categorical:
    """A parameter taking one of ``choices`` (encoded one-hot, decoded by argmax)."""

    name: str
    choices: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(self.choices))
        if not self.choices or len(set(self.choices)) != len(self.choices):
            raise ValueError(f"parameter {self.name!r}: choices must be a non-empty list of distinct values, "
                             f"got {list(self.choices)}")

    @property
    def width(self) -> int:
        return len(self.choices)

    def encode(self, values: Sequence[Any]) -> np.ndarray:
        out = np.zeros((len(values), self.width))
        for i, v in enumerate(values):
            if v not in self.choices:
                raise ValueError(f"parameter {self.name!r}: {v!r} is not one of {list(self.choices)}")
            out[i, self.choices.index(v)] = 1.0
        return out

    def decode(self, u: np.ndarray) -> list[str]:
        return [self.choices[int(i)] for i in np.argmax(u, axis=1)]

    def contains(self, value: Any) -> bool:
        return value in self.choices


Parameter = Continuous | Integer | Categorical


def check_bounds(name: str, low: float, high: float) -> None:
    if not (isinstance(name, str) and name):
        raise ValueError(f"parameter name must be a non-empty string, got {name!r}")
    for key, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"parameter {name!r}: {key} must be a finite number, got {v!r}")
    if low >= high:
        raise ValueError(f"parameter {name!r}: low={low} must be < high={high}; swap them, or fix the value "
                         "with constraints.fixed")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"parameter {name!r} must be a number, got {value!r}")
    return float(value)
