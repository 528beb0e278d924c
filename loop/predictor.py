"""What the inverse-design optimisers call: conditions in, predicted morphology descriptors out.

A predictor is anything with :meth:`MorphologyPredictor.predict` (the diffusion surrogate of
``models/surrogate``, a fake built on the virtual lab in tests and benchmarks). Optimisers send a whole swarm in
one call, so a predictor can batch its work (one GPU batch of images per PSO iteration).

Contract
--------
* Deterministic for a ``seed``: the same conditions, ``n_images`` and ``seed`` give the same prediction, and
  the noise a condition gets does not depend on its position in the batch or on the other conditions. The PSO
  objective is then a deterministic function (common random numbers across particles).
* ``descriptors`` are means over the ``n_images`` generated images (keys :data:`DESCRIPTORS`); a descriptor
  that cannot be measured on the generated images is NaN (the objective penalises it, nothing crashes).
* Optionally ``predict(..., descriptors=[names])``: the caller needs only those (an optimiser passes its
  target's); the predictor may skip work the others need (:func:`accepts_descriptor_subset`).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, is_dataclass, replace
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from loop.config import DESCRIPTORS

__all__ = ["DESCRIPTORS", "Prediction", "MorphologyPredictor", "CachedPredictor", "descriptor_array",
           "conditions_key", "accepts_descriptor_subset"]


@dataclass
class Prediction:
    """The predicted morphology of one set of synthesis conditions.

    Attributes
    ----------
    conditions : dict
        The conditions, with the virtual lab's names (``ph``, ``naoh_wt_pct``, ...).
    descriptors : dict of str to float
        Mean over the ``n`` images of each of :data:`DESCRIPTORS` (NaN when unmeasurable).
    spread : dict of str to float
        Standard deviation of each descriptor across the images / noise seeds.
    images : dict
        Optional generated images, ``{"low": [H x W arrays], "high": [...]}``.
    uncertainty : dict of str to float
        Optional standard deviation of the predictor's error per descriptor (how far the truth may lie from
        ``descriptors``; not the spread across images). Empty when the predictor does not know.
    """

    conditions: dict
    descriptors: dict[str, float]
    spread: dict[str, float]
    images: dict[str, list] = field(default_factory=dict)
    uncertainty: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class MorphologyPredictor(Protocol):
    """Anything that predicts morphology descriptors from synthesis conditions."""

    def predict(self, conditions: Sequence[Mapping[str, Any]], n_images: int = 4,
                seed: int = 0) -> list[Prediction]:
        """One :class:`Prediction` per conditions mapping, in order; deterministic for ``seed``."""
        ...


def accepts_descriptor_subset(predictor: Any) -> bool:
    """Whether ``predictor.predict`` takes ``descriptors=`` (only those are needed)."""
    try:
        return "descriptors" in inspect.signature(predictor.predict).parameters
    except (TypeError, ValueError):
        return False


def conditions_key(conditions: Mapping[str, Any], decimals: int = 6) -> tuple:
    """A hashable key of ``conditions``: sorted items with numbers rounded to ``decimals``."""
    items = []
    for name in sorted(conditions):
        value = conditions[name]
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            value = round(float(value), decimals) + 0.0  # + 0.0 folds -0.0 into 0.0
        items.append((name, value))
    return tuple(items)


def descriptor_array(predictions: Sequence[Prediction | Mapping[str, float]] | Sequence[Any],
                     keys: Sequence[str] = DESCRIPTORS) -> np.ndarray:
    """Descriptors as an ``n x k`` float array (columns ``keys``; missing or None values are NaN).

    ``predictions`` are descriptor dicts or objects with a ``descriptors`` dict (:class:`Prediction` or any
    predictor's own prediction type).
    """
    rows = []
    for p in predictions:
        d = p if isinstance(p, Mapping) else p.descriptors  # duck-typed: any object with .descriptors
        rows.append([math.nan if d.get(k) is None else float(d[k]) for k in keys])
    return np.asarray(rows, dtype=float).reshape(len(rows), len(keys))


class CachedPredictor:
    """Memoise a predictor's answers by (rounded conditions, ``n_images``, ``seed``).

    PSO revisits points (particles stuck at a bound, converged swarms): cached answers cost nothing. Misses of
    one call are deduplicated and sent to the wrapped predictor in a single batched call.

    Parameters
    ----------
    predictor : MorphologyPredictor
        The predictor to wrap.
    decimals : int
        Numbers are rounded to this many decimals to build the cache key.

    Attributes
    ----------
    calls : int
        ``predict`` calls made to this wrapper.
    batches : int
        Calls forwarded to the wrapped predictor (at most one per wrapper call).
    evaluations : int
        Distinct conditions actually sent to the wrapped predictor.
    """

    def __init__(self, predictor: MorphologyPredictor, decimals: int = 6) -> None:
        if not hasattr(predictor, "predict"):
            raise TypeError(f"predictor must have a predict(conditions, n_images, seed) method, got {predictor!r}")
        self.predictor = predictor
        self.decimals = int(decimals)
        self.calls = 0
        self.batches = 0
        self.evaluations = 0
        self._cache: dict[tuple, Prediction] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def predict(self, conditions: Sequence[Mapping[str, Any]], n_images: int = 4,
                seed: int = 0, descriptors: Sequence[str] | None = None) -> list[Prediction]:
        """Predictions for ``conditions`` (cached ones reused, the others computed in one batch).
        ``descriptors`` is passed on when the wrapped predictor takes it (and is part of the cache key)."""
        self.calls += 1
        subset = (tuple(sorted(descriptors)) if descriptors is not None and accepts_descriptor_subset(self.predictor)
                  else None)
        keys = [(conditions_key(c, self.decimals), int(n_images), int(seed), subset) for c in conditions]
        missing: dict[tuple, Mapping[str, Any]] = {}
        for key, c in zip(keys, conditions):
            if key not in self._cache and key not in missing:
                missing[key] = c
        if missing:
            extra = {} if subset is None else {"descriptors": list(subset)}
            fresh = self.predictor.predict([dict(c) for c in missing.values()], n_images=n_images, seed=seed,
                                           **extra)
            if len(fresh) != len(missing):
                raise RuntimeError(f"predictor returned {len(fresh)} predictions for {len(missing)} conditions")
            self._cache.update(zip(missing, fresh))
            self.batches += 1
            self.evaluations += len(missing)
        return [_with_conditions(self._cache[key], c) for key, c in zip(keys, conditions)]


def _with_conditions(prediction: Any, conditions: Mapping[str, Any]) -> Any:
    """``prediction`` carrying the caller's ``conditions`` (a copy when it is a dataclass)."""
    return replace(prediction, conditions=dict(conditions)) if is_dataclass(prediction) else prediction
