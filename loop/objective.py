"""The inverse-design objective: paper 000, SI §1.2.4, eq. 3, with normalised descriptors.

    F = w1 ((D_t - D) / s_D)^2 + w2 ((M_t - M) / s_M)^2 [+ w4 ((S_t - S) / s_S)^2] + w3 ((T_t - T) / s_T)^2

``D``: D50 (µm), ``M``: mean sphericity, ``S``: sphericity standard deviation (only when the target sets it),
``T``: texture. Eq. 3 sums raw squared differences, which would weigh a 1-µm D50 error 400 times more than a
0.05 sphericity error, so each error is divided by a scale ``s`` chosen by ``normalise``:

* ``"tolerance"`` (default): ``s`` is the descriptor's tolerance band, ``tol * max(|t|, 0.1 range)``. Each term
  is then ``w (residual / tol)^2``: a term is at most ``w`` exactly when that descriptor meets its target, so
  minimising ``F`` pursues the same thing as :meth:`Objective.target_met` ("every descriptor within 5 %").
* ``"range"``: ``s`` is the descriptor's range over the virtual lab (D50 5 µm, sphericity 0.23, its std 0.06,
  texture 1; :data:`loop.config.DESCRIPTOR_RANGES`). Measured against the 5 % bands of the dry run's target
  (D50 3.44 µm, Ψ 0.89, texture 0.57), this weighs a sphericity miss at its tolerance 30-45x more than a D50 or
  texture miss at theirs, so an optimiser chases Ψ and lets D50 and texture drift.

Explicit ``scales`` override either. The optimisers minimise ``F``; BoTorch maximises ``-F``
(:meth:`Objective.torch`).

A NaN descriptor (unmeasurable on generated images) costs :data:`NAN_PENALTY` times its weight (times
:data:`NAN_PENALTY_TOLERANCE_FACTOR` under tolerance normalisation, whose terms are larger): far worse than any
measurable point, but finite so optimisers keep working.

A descriptor meets its target when ``|x - t| <= tol * max(|t|, 0.1 s)``: a relative tolerance (default 5 %,
paper 000's "discrepancies <= 5 % across all metrics"), with a floor at a tenth of the range so that a target
near zero (texture) does not demand an exact hit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from loop.config import DESCRIPTOR_RANGES, DESCRIPTORS
from loop.predictor import Prediction, descriptor_array

__all__ = ["Target", "Objective", "target_from_description", "NAN_PENALTY", "DEFAULT_SCALES", "NORMALISATIONS"]

NAN_PENALTY = 100.0
#: Under tolerance normalisation a measurable term can reach ~(range / band)^2 ~ 1e3: the NaN penalty scales up.
NAN_PENALTY_TOLERANCE_FACTOR = 1.0e3
#: How errors are scaled before squaring (see the module doc).
NORMALISATIONS = ("tolerance", "range")
#: Default normalising scale of each descriptor: the width of its range in the virtual lab.
DEFAULT_SCALES: dict[str, float] = {k: hi - lo for k, (lo, hi) in DESCRIPTOR_RANGES.items()}
_FLOOR = 0.1  # tolerance floor, as a fraction of the scale


@dataclass(frozen=True)
class Target:
    """A target morphology and how close is close enough.

    Parameters
    ----------
    d50_um : float
        Median secondary-particle diameter, µm (> 0).
    sphericity_mean : float
        Mean sphericity Ψ, in (0, 1].
    texture : float
        Primary-particle texture on ``describe``'s [0, 1] scale.
    sphericity_std : float, optional
        Standard deviation of Ψ (>= 0); ``None`` leaves it out of the objective.
    tolerance : float or mapping
        Relative tolerance of each descriptor (one number for all, or per descriptor); default 0.05.
    """

    d50_um: float
    sphericity_mean: float
    texture: float
    sphericity_std: float | None = None
    tolerance: float | Mapping[str, float] = 0.05
    tolerances: dict[str, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key in self.keys:
            _check_value(key, getattr(self, key))
        tol = self.tolerance
        tols = {k: tol for k in self.keys} if not isinstance(tol, Mapping) else dict(tol)
        unknown = sorted(set(tols) - set(DESCRIPTORS))
        if unknown:
            raise ValueError(f"tolerance given for unknown descriptor(s) {unknown}; known: {list(DESCRIPTORS)}")
        for key in self.keys:
            t = tols.setdefault(key, 0.05)
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
                raise ValueError(f"tolerance of {key} must be a positive fraction (0.05 = 5 %), got {t!r}")
        object.__setattr__(self, "tolerances", {k: float(tols[k]) for k in self.keys})

    @property
    def keys(self) -> tuple[str, ...]:
        """The descriptors this target sets, in :data:`DESCRIPTORS` order."""
        return tuple(k for k in DESCRIPTORS if getattr(self, k) is not None)

    def as_dict(self) -> dict[str, float]:
        """``{descriptor: target value}`` for the descriptors set."""
        return {k: float(getattr(self, k)) for k in self.keys}


def _check_value(key: str, value: Any) -> None:
    """Raise a ValueError naming ``key`` when ``value`` is not a physically possible descriptor value."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"target {key} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"target {key} must be finite, got {value!r}")
    if value < 0 or (key == "d50_um" and value == 0):
        raise ValueError(f"target {key}={value} is negative or zero; descriptors are positive quantities")
    if key == "sphericity_mean" and value > 1:
        raise ValueError(f"target sphericity_mean={value} exceeds 1 (Ψ = 4πA/P² is at most 1 for a disc)")
    if key == "texture" and value > 1:
        raise ValueError(f"target texture={value} is outside describe's [0, 1] texture scale")


class Objective:
    """Eq. 3 of paper 000 with range-normalised descriptors; lower is better, 0 at the target.

    Parameters
    ----------
    target : Target
    weights : (w1, w2, w3) or (w1, w2, w3, w4)
        Weights of D50, mean sphericity, texture and (if the target sets it) sphericity std. Without ``w4``
        the std term takes ``w2`` (both describe the secondary-particle shape).
    scales : mapping, optional
        Normalising scale per descriptor; overrides ``normalise`` for the descriptors it names.
    normalise : {"tolerance", "range"}
        Scale each error by the descriptor's tolerance band (default: a term is at most its weight exactly when
        the descriptor meets the target) or by its range over the virtual lab (:data:`DEFAULT_SCALES`).
    """

    def __init__(self, target: Target, weights: Sequence[float] = (1.0, 1.0, 1.0),
                 scales: Mapping[str, float] | None = None, normalise: str = "tolerance") -> None:
        if normalise not in NORMALISATIONS:
            raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
        if len(weights) not in (3, 4):
            raise ValueError(f"weights must be (w1, w2, w3) or (w1, w2, w3, w4), got {tuple(weights)}")
        w = [float(v) for v in weights]
        if not all(math.isfinite(v) and v >= 0 for v in w) or sum(w) == 0:
            raise ValueError(f"weights must be finite, >= 0 and not all zero, got {tuple(weights)}")
        self.target = target
        by_name = {"d50_um": w[0], "sphericity_mean": w[1], "texture": w[2],
                   "sphericity_std": w[3] if len(w) == 4 else w[1]}
        base = dict(DEFAULT_SCALES)
        if normalise == "tolerance":
            base.update({k: target.tolerances[k] * max(abs(float(getattr(target, k))), _FLOOR * DEFAULT_SCALES[k])
                         for k in target.keys})
        scales = {**base, **dict(scales or {})}
        for k in DESCRIPTORS:
            if not (math.isfinite(scales[k]) and scales[k] > 0):
                raise ValueError(f"scale of {k} must be a positive number, got {scales[k]!r}")
        self.scales = scales
        # The tolerance floor is a tenth of the descriptor's range, whatever the normalisation.
        self._floor_scales = scales if normalise == "range" else dict(DEFAULT_SCALES)
        self.normalise = normalise
        self.nan_penalty = NAN_PENALTY * (NAN_PENALTY_TOLERANCE_FACTOR if normalise == "tolerance" else 1.0)
        # Per-column (DESCRIPTORS order) target, weight and scale; unused descriptors get weight 0.
        self._t = np.array([float(getattr(target, k)) if k in target.keys else 0.0 for k in DESCRIPTORS])
        self._w = np.array([by_name[k] if k in target.keys else 0.0 for k in DESCRIPTORS])
        self._s = np.array([scales[k] for k in DESCRIPTORS])
        self.weights = {k: float(by_name[k]) for k in target.keys}

    def __repr__(self) -> str:
        return f"Objective(target={self.target.as_dict()}, weights={self.weights}, normalise={self.normalise!r})"

    def _as_array(self, descriptors: Any) -> np.ndarray:
        if isinstance(descriptors, Mapping) or hasattr(descriptors, "descriptors"):
            descriptors = [descriptors]
        first = descriptors[0] if len(descriptors) else None
        if isinstance(descriptors, np.ndarray) or not (first is None or isinstance(first, Mapping)
                                                       or hasattr(first, "descriptors")):
            y = np.atleast_2d(np.asarray(descriptors, dtype=float))
            if y.shape[-1] != len(DESCRIPTORS):
                raise ValueError(f"descriptor arrays must be n x {len(DESCRIPTORS)} with columns {DESCRIPTORS}, "
                                 f"got shape {y.shape}")
            return y
        return descriptor_array(descriptors)

    def __call__(self, descriptors: Any) -> np.ndarray:
        """``F`` of each row: ``descriptors`` is an ``n x 4`` array (columns :data:`DESCRIPTORS`), a dict, a
        prediction (anything with a ``descriptors`` dict) or a list of them. Returns an ``n`` array."""
        y = self._as_array(descriptors)
        z = ((self._t - y) / self._s) ** 2
        z = np.where(np.isnan(z), self.nan_penalty, z)
        return (z * self._w).sum(axis=-1)

    def torch(self, samples: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
        """``F`` of ``... x q x m`` descriptor samples (``m = 4``, columns :data:`DESCRIPTORS`) -> ``... x q``.

        Differentiable; use ``GenericMCObjective(lambda Y, X: -objective.torch(Y))`` to maximise ``-F``.
        """
        import torch

        if samples.shape[-1] != len(DESCRIPTORS):
            raise ValueError(f"samples must end in m={len(DESCRIPTORS)} outputs {DESCRIPTORS}, got {samples.shape}")
        t, w, s = (torch.as_tensor(a, dtype=samples.dtype, device=samples.device) for a in (self._t, self._w, self._s))
        nan = torch.isnan(samples)
        # Replace NaN before the arithmetic: a NaN in torch.where's unused branch still poisons the gradient.
        z = ((t - torch.where(nan, t.expand_as(samples), samples)) / s) ** 2
        z = torch.where(nan, torch.full_like(z, self.nan_penalty), z)
        return (z * w).sum(dim=-1)

    def uncertainty_cost(self, predictions: Sequence[Any]) -> np.ndarray:
        """``sum_k w_k (sigma_k / s_k)^2`` per prediction: what the predictions' uncertainty adds to the expected
        ``F`` (for a Gaussian error with standard deviation ``sigma`` around the predicted mean,
        ``E[F] = F(mean) + this``). ``sigma`` comes from a prediction's ``uncertainty`` dict; a prediction or
        descriptor without one adds 0."""
        out = np.zeros(len(predictions))
        for i, p in enumerate(predictions):
            u = getattr(p, "uncertainty", None) or {}
            sigma = np.array([math.nan if u.get(k) is None else float(u[k]) for k in DESCRIPTORS])
            out[i] = float((np.where(np.isfinite(sigma), (sigma / self._s) ** 2, 0.0) * self._w).sum())
        return out

    def residuals(self, descriptors: Mapping[str, float] | Prediction) -> dict[str, float]:
        """Signed relative error ``(x - t) / max(|t|, 0.1 s)`` of each target descriptor (NaN stays NaN)."""
        d = descriptors if isinstance(descriptors, Mapping) else descriptors.descriptors
        out = {}
        for k in self.target.keys:
            t = float(getattr(self.target, k))
            x = d.get(k)
            x = math.nan if x is None else float(x)
            out[k] = (x - t) / max(abs(t), _FLOOR * self._floor_scales[k])
        return out

    def target_met(self, descriptors: Mapping[str, float] | Prediction) -> bool:
        """Whether every target descriptor is within its tolerance (a NaN descriptor never is)."""
        res = self.residuals(descriptors)
        return all(math.isfinite(r) and abs(r) <= self.target.tolerances[k] for k, r in res.items())


def target_from_description(record: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                            tolerance: float | Mapping[str, float] = 0.05, use_std: bool = True) -> Target:
    """A :class:`Target` from ``morphloop describe --json`` record(s) of a reference sample.

    ``describe`` measures D50 and sphericity on low-magnification images and texture on high-magnification
    ones, so a reference usually takes two records: pass a list and each descriptor is averaged over the
    records where it is not null (nor NaN).

    Raises
    ------
    ValueError
        A descriptor no record measured (naming the image kind that measures it), or an impossible value.
    """
    records = [record] if isinstance(record, Mapping) else list(record)
    values: dict[str, float | None] = {}
    for key in DESCRIPTORS:
        found = [float(r[key]) for r in records if r.get(key) is not None and math.isfinite(float(r[key]))]
        values[key] = float(np.mean(found)) if found else None
    hint = {"texture": "a high-magnification (--kind texture) image"}
    for key in ("d50_um", "sphericity_mean", "texture"):
        if values[key] is None:
            raise ValueError(f"the describe record(s) have no {key}; add the record of "
                             f"{hint.get(key, 'a low-magnification (--kind particles) image')} of the reference")
    std = values["sphericity_std"] if use_std else None
    return Target(values["d50_um"], values["sphericity_mean"], values["texture"], std, tolerance)
