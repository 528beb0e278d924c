"""Synthesis conditions -> the surrogate's condition vector, and the MLP that embeds it (paper 000's encoder).

The schema (names, ranges, categories) travels inside the model's ``config.json``: ``models/`` never imports the
virtual lab, and a model trained on other conditions carries its own schema. Continuous values map linearly onto
[-1, 1] over their range (``log=True``: over log-range); categoricals become one-hot blocks. The magnification is
one more one-hot block, so one denoiser serves both magnifications.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class ConditionInputError(ValueError):
    """Conditions the surrogate cannot encode (missing or unknown names, wrong types)."""


class OutOfDomainWarning(UserWarning):
    """Conditions outside the region the surrogate was trained on: its predictions there are extrapolations."""


@dataclass(frozen=True)
class ConditionSpec:
    """One input of the surrogate: ``kind`` is ``"continuous"`` (``low``, ``high``, ``log``) or
    ``"categorical"`` (``choices``)."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    choices: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return len(self.choices) if self.kind == "categorical" else 1


class ConditionSchema:
    """Encodes condition dicts as ``n x d`` arrays; ``d`` = continuous inputs + one-hot widths."""

    def __init__(self, specs: Sequence[ConditionSpec | Mapping[str, Any]]):
        self.specs = tuple(s if isinstance(s, ConditionSpec) else
                           ConditionSpec(**{**s, "choices": tuple(s.get("choices", ()))}) for s in specs)
        for s in self.specs:
            if s.kind not in ("continuous", "categorical"):
                raise ValueError(f"condition {s.name!r}: kind must be 'continuous' or 'categorical', got {s.kind!r}")
            if s.kind == "continuous" and not s.high > s.low:
                raise ValueError(f"condition {s.name!r}: high ({s.high}) must exceed low ({s.low})")
            if s.kind == "continuous" and s.log and s.low <= 0:
                raise ValueError(f"condition {s.name!r}: log scale needs low > 0, got {s.low}")
        self.names = tuple(s.name for s in self.specs)

    @property
    def dim(self) -> int:
        return sum(s.width for s in self.specs)

    def to_config(self) -> list[dict]:
        return [{**asdict(s), "choices": list(s.choices)} for s in self.specs]

    def with_log_scale(self, names: Sequence[str]) -> ConditionSchema:
        """This schema with the continuous conditions ``names`` mapped over their log-range: for positive inputs
        spanning decades whose effects follow their logarithm (an aging time, a reagent loading)."""
        specs = {s.name: s for s in self.specs}
        for name in names:
            if name not in specs or specs[name].kind != "continuous":
                continuous = [s.name for s in self.specs if s.kind == "continuous"]
                raise ValueError(f"log scale: {name!r} is not a continuous condition; choose from "
                                 f"{', '.join(continuous)}")
            if specs[name].low <= 0:
                raise ValueError(f"log scale: {name} must be positive over its range, but it starts at "
                                 f"{specs[name].low}")
        return ConditionSchema([replace(s, log=True) if s.name in names else s for s in self.specs])

    def check(self, conditions: Mapping[str, Any]) -> None:
        """Raise :class:`ConditionInputError` naming missing, unknown or mistyped fields."""
        if not isinstance(conditions, Mapping):
            raise ConditionInputError(f"conditions must be a JSON object of name -> value, got {type(conditions).__name__}")
        missing = [n for n in self.names if n not in conditions]
        unknown = [k for k in conditions if k not in self.names]
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown {', '.join(map(str, unknown))}")
            raise ConditionInputError(f"conditions: {'; '.join(parts)}. The surrogate takes exactly: "
                                      f"{', '.join(self.names)}")
        for s in self.specs:
            value = conditions[s.name]
            if s.kind == "categorical":
                if value not in s.choices:
                    raise ConditionInputError(f"{s.name}: {value!r} is not one of {', '.join(s.choices)}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConditionInputError(f"{s.name}: expected a finite number, got {value!r}")

    def encode(self, conditions: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``n x d`` float32 encoding (values outside a range extrapolate linearly beyond ±1)."""
        out = np.zeros((len(conditions), self.dim), np.float32)
        for i, cond in enumerate(conditions):
            self.check(cond)
            col = 0
            for s in self.specs:
                value = cond[s.name]
                if s.kind == "categorical":
                    out[i, col + s.choices.index(value)] = 1.0
                else:
                    lo, hi, v = (math.log(s.low), math.log(s.high), math.log(max(float(value), 1e-12))) if s.log \
                        else (s.low, s.high, float(value))
                    out[i, col] = 2.0 * (v - lo) / (hi - lo) - 1.0
                col += s.width
        return out

    def encode_log_ratios(self, conditions: Sequence[Mapping[str, Any]],
                          ratios: Sequence[Sequence[str]]) -> np.ndarray:
        """``n x len(ratios)``: ``log(numerator / denominator)`` of each ``[numerator, denominator]`` pair of
        continuous conditions, mapped onto [-1, 1] over the range the two conditions' ranges allow."""
        specs = {s.name: s for s in self.specs}
        ranges = []
        for pair in ratios:
            if len(pair) != 2 or any(n not in specs or specs[n].kind != "continuous" for n in pair):
                raise ValueError(f"a log ratio takes two continuous conditions of {', '.join(self.names)}; "
                                 f"got {list(pair)}")
            num, den = specs[pair[0]], specs[pair[1]]
            if num.low <= 0 or den.low <= 0:
                raise ValueError(f"log ratio {pair[0]}/{pair[1]}: both conditions must be positive")
            ranges.append((math.log(num.low / den.high), math.log(num.high / den.low)))
        out = np.zeros((len(conditions), len(ratios)), np.float32)
        for i, cond in enumerate(conditions):
            self.check(cond)
            for k, ((numerator, denominator), (lo, hi)) in enumerate(zip(ratios, ranges)):
                value = math.log(max(float(cond[numerator]), 1e-12) / max(float(cond[denominator]), 1e-12))
                out[i, k] = 2.0 * (value - lo) / (hi - lo) - 1.0
        return out

    def box_excess(self, conditions: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Per condition, how far (in encoded units; 2 = a whole range) it lies outside the trained ranges."""
        enc = self.encode(conditions)
        excess = np.clip(np.abs(enc) - 1.0, 0.0, None)
        return np.sqrt(np.sum(excess**2, axis=1))


def domain_distance(encoded: np.ndarray, training: np.ndarray) -> np.ndarray:
    """Euclidean distance (encoded units) from each row of ``encoded`` (``n x d``) to the nearest training row."""
    diff = encoded[:, None, :] - training[None, :, :]
    return np.sqrt(np.min(np.sum(diff**2, axis=-1), axis=1))


def warn_if_out_of_domain(schema: ConditionSchema, conditions: Sequence[Mapping[str, Any]],
                          training: np.ndarray | None, typical_spacing: float | None) -> np.ndarray:
    """Warn (:class:`OutOfDomainWarning`) for conditions outside the trained ranges or far from every training
    condition (more than twice the typical nearest-neighbour spacing of the training design). Returns the
    distances to the nearest training condition (NaN without a training design)."""
    excess = schema.box_excess(conditions)
    dist = (domain_distance(schema.encode(conditions), training) if training is not None and len(training)
            else np.full(len(conditions), np.nan))
    for i, cond in enumerate(conditions):
        far = typical_spacing is not None and np.isfinite(dist[i]) and dist[i] > 2.0 * typical_spacing
        if excess[i] > 0 or far:
            outside = [s.name for s in schema.specs if s.kind == "continuous"
                       and not s.low <= float(cond[s.name]) <= s.high]
            where = f"outside the trained range of {', '.join(outside)}; " if outside else ""
            warnings.warn(f"conditions {dict(cond)} are {where}distance {dist[i]:.2f} to the nearest training "
                          f"condition (typical spacing {typical_spacing or float('nan'):.2f}); the prediction "
                          "is an extrapolation", OutOfDomainWarning, stacklevel=3)
    return dist


class ConditionEncoder(ModelMixin, ConfigMixin):
    """MLP: condition vector (``n x in_features``) -> embedding added to the denoiser's time embedding.

    ``null_embedding`` stands for "no condition": training replaces the embedding by it with probability
    ``dropout_prob`` so sampling can use classifier-free guidance.
    """

    @register_to_config
    def __init__(self, in_features: int, embed_dim: int, hidden: int = 128, dropout_prob: float = 0.1):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, embed_dim))
        self.null_embedding = nn.Parameter(torch.zeros(embed_dim))

    def forward(self, cond: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """``n x in_features`` -> ``n x embed_dim``; rows where ``drop`` (``n`` bool) is set get the null token."""
        emb = self.mlp(cond)
        if drop is not None:
            emb = torch.where(drop[:, None], self.null_embedding.expand_as(emb), emb)
        return emb

    def unconditional(self, n: int) -> torch.Tensor:
        return self.null_embedding.expand(n, -1)
