"""The hidden "coprecipitation world": synthesis conditions -> precursor morphology.

Hidden truth: the optimiser never reads this. Devices call :class:`CoprecipitationWorld` to decide what a
simulated batch looks like; models and loops only ever see the SEM images rendered from it.

Trends follow paper 000 ("Correlation with experimental variables", SI Figs. S2-S6). Every descriptor is a
smooth latent score ``z`` squashed into its documented range, ``out = lo + (hi - lo) * sigmoid(z)`` (D50 and
the primary aspect ratio in log space), so the ranges hold and monotone trends stay strictly monotone.

Shorthands (``u_*``: a condition scaled to [0, 1] over its range, NaOH/NH4OH on a log scale)::

    x      = log(naoh / nh4oh)                      # log NaOH/NH4OH ratio: 3.33 -> +1.20, 0.15 -> -1.90
    dph    = ph - 10.5
    tau    = time_min * exp(0.03 (temperature_c - 50))   # aging time, hotter ripens faster (T x time)
    ripe   = 1 - exp(-tau / 180)                    # fast early agglomeration (first ~120 min)
    lt     = log(tau / 360)                         # slow coarsening after that
    lt0    = log(time_min / 360)                    # slow Ostwald rounding (not heat-accelerated)
    rpm    = (stir_rpm - 800) / 700
    add    = additive_ppm / 2500
    o2     = {n2: 0, sealed: 0.1, air: 1}           # oxygen exposure (Mn2+ oxidation)

    texture     z = 0.55 + (0.9 - 0.6 dph) x - 2.2 dph - 0.4 lt - 0.25 rpm + 0.15 add - 4.2 o2 + bumps
                  # pH x ratio: the ratio matters twice as much at pH 10 as at pH 11
    sphericity  z = -1.0 + 2.0 ripe + 0.35 lt0 + 0.55 (1 - 0.4 ripe) x + 0.4 dph
                    + 0.9 add exp(1 - add) - 0.25 rpm^2 - 1.6 o2 + bumps
                  # surfactant helps up to ~2500 ppm then hurts; low-ratio particles catch up with time;
                  # heat acts through ripe only, so it matters early and fades once ripening saturates
    sph. std    z = 0.6 - 1.8 ripe - 0.35 lt0 - 0.3 x + 1.7 o2 + 0.2 rpm^2 + bumps
    D50         z = -0.1 + 0.45 lt - 1.2 dph - 0.7 log(nh4oh) - 0.15 x - 0.3 rpm - 0.1 add + 0.2 o2 + bumps
                  # d50 = exp(log 2 + log(9/2) sigmoid(z)) um
    spread      z = 0.1 - 0.8 rpm - 0.3 lt - 0.25 x + 1.0 o2 + 0.3 dph^2 + bumps
    aspect      z = 0.2 + 0.5 x - 0.9 dph - 0.2 lt - 1.2 o2        # log space, [1.5, 8]

``bumps`` are a few small Gaussians in 2-D slices of the ``u`` space (e.g. the sphericity dip near pH 10.4
at high NH4OH of Fig. S6). Each lives in a slice that excludes the condition of the monotone trend it
could spoil, and the world ``seed`` moves their centres by up to +-0.05 and scales their heights by 0.8-1.2.

Batch-to-batch noise (:meth:`CoprecipitationWorld.synthesize`), scaled by ``batch_noise``: lognormal 4 % on
D50, 5 % on spread and aspect, 8 % on sphericity std; additive sd 0.01 on mean sphericity and 0.02 on
texture; results are clipped to the ranges.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from simulators.conditions import CONDITIONS, ContinuousCondition, Morphology, validate_conditions

#: Documented output ranges (the SEM renderer draws anything inside them).
OUTPUT_RANGES: dict[str, tuple[float, float]] = {
    "d50_um": (2.0, 7.0),
    "d50_spread": (0.12, 0.35),
    "sphericity_mean": (0.70, 0.93),
    "sphericity_std": (0.02, 0.08),
    "texture": (0.02, 0.98),
    "primary_aspect": (1.5, 8.0),
}
#: Outputs squashed in log space (multiplicative quantities).
LOG_SPACE_OUTPUTS = frozenset({"d50_um", "primary_aspect"})
#: Oxygen exposure of each atmosphere: a sealed reactor keeps a little headspace O2.
OXYGEN_EXPOSURE = {"n2": 0.0, "sealed": 0.1, "air": 1.0}
#: Conditions whose [0, 1] scaling is logarithmic (loadings span 60x).
LOG_SCALED = frozenset({"naoh_wt_pct", "nh4oh_wt_pct"})
#: Spawn key separating the stream that perturbs hidden constants from the batch-noise streams.
_CONSTANTS_STREAM = 7


@dataclass(frozen=True)
class Bump:
    """A smooth local non-monotonicity: ``height * exp(-|u - centre|^2 / (2 width^2))`` added to one latent.

    ``centre`` maps condition names to scaled [0, 1] coordinates; other conditions do not affect the bump.
    """

    output: str
    centre: dict[str, float]
    width: float
    height: float

    def value(self, scaled: Mapping[str, float]) -> float:
        squared = sum((scaled[name] - c) ** 2 for name, c in self.centre.items())
        return self.height * math.exp(-0.5 * squared / self.width**2)


#: Nominal bumps (seed 0 perturbs them too). Slices avoid each output's tested monotone direction:
#: no time in sphericity/std bumps, no pH/NH4OH in D50 bumps, no NaOH anywhere.
NOMINAL_BUMPS: tuple[Bump, ...] = (
    Bump("sphericity_mean", {"ph": 0.45, "nh4oh_wt_pct": 0.8}, 0.12, -0.3),    # Fig. S6 dip near pH 10.4
    Bump("sphericity_mean", {"temperature_c": 0.3, "stir_rpm": 0.75}, 0.15, 0.2),
    Bump("sphericity_std", {"stir_rpm": 0.7, "additive_ppm": 0.3}, 0.15, 0.25),
    Bump("d50_um", {"temperature_c": 0.7, "stir_rpm": 0.35}, 0.15, 0.3),
    Bump("d50_um", {"additive_ppm": 0.5, "time_min": 0.6}, 0.12, -0.2),
    Bump("texture", {"additive_ppm": 0.6, "temperature_c": 0.4}, 0.15, 0.35),
    Bump("texture", {"ph": 0.3, "stir_rpm": 0.6}, 0.12, -0.3),
    Bump("d50_spread", {"temperature_c": 0.3, "ph": 0.7}, 0.15, 0.3),
)


def sigmoid(z: float) -> float:
    """Logistic function, numerically safe for large ``|z|``."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def squash(name: str, z: float) -> float:
    """Map a latent score onto the documented range of output ``name`` (log space for D50 and aspect)."""
    lo, hi = OUTPUT_RANGES[name]
    if name in LOG_SPACE_OUTPUTS:
        return math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * sigmoid(z))
    return lo + (hi - lo) * sigmoid(z)


def scaled_conditions(conditions: Mapping[str, Any]) -> dict[str, float]:
    """Continuous conditions of a validated set scaled to [0, 1] over their ranges (loadings on a log scale)."""
    scaled = {}
    for name, spec in CONDITIONS.items():
        if not isinstance(spec, ContinuousCondition):
            continue
        value, low, high = float(conditions[name]), spec.low, spec.high
        if name in LOG_SCALED:
            value, low, high = math.log(value), math.log(low), math.log(high)
        scaled[name] = (value - low) / (high - low)
    return scaled


def perturbed_bumps(seed: int) -> tuple[Bump, ...]:
    """The nominal bumps with centres shifted by up to +-0.05 and heights scaled by 0.8-1.2 for ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_CONSTANTS_STREAM,)))
    bumps = []
    for bump in NOMINAL_BUMPS:
        shifts = rng.uniform(-0.05, 0.05, len(bump.centre))
        centre = {name: c + float(s) for (name, c), s in zip(bump.centre.items(), shifts)}
        bumps.append(Bump(bump.output, centre, bump.width, bump.height * float(rng.uniform(0.8, 1.2))))
    return tuple(bumps)


def latent_scores(conditions: Mapping[str, Any], bumps: Iterable[Bump] = ()) -> dict[str, float]:
    """Unbounded latent score of each output for validated ``conditions`` (the formulas of the module doc)."""
    c = conditions
    x = math.log(c["naoh_wt_pct"] / c["nh4oh_wt_pct"])
    dph = c["ph"] - 10.5
    tau = c["time_min"] * math.exp(0.03 * (c["temperature_c"] - 50.0))
    ripe = 1.0 - math.exp(-tau / 180.0)
    lt = math.log(tau / 360.0)
    lt0 = math.log(c["time_min"] / 360.0)
    rpm = (c["stir_rpm"] - 800.0) / 700.0
    add = c["additive_ppm"] / 2500.0
    o2 = OXYGEN_EXPOSURE[c["atmosphere"]]

    z = {
        # Thin platelets need a NaOH-rich start at low pH; high pH deprotonates the surface and thickens them.
        "texture": 0.55 + (0.9 - 0.6 * dph) * x - 2.2 * dph - 0.4 * lt - 0.25 * rpm + 0.15 * add - 4.2 * o2,
        # High NaOH raises nucleation density (spherical growth); low-ratio particles round up later.
        "sphericity_mean": (-1.0 + 2.0 * ripe + 0.35 * lt0 + 0.55 * (1.0 - 0.4 * ripe) * x + 0.4 * dph
                            + 0.9 * add * math.exp(1.0 - add) - 0.25 * rpm**2 - 1.6 * o2),
        "sphericity_std": 0.6 - 1.8 * ripe - 0.35 * lt0 - 0.3 * x + 1.7 * o2 + 0.2 * rpm**2,
        "d50_um": (-0.1 + 0.45 * lt - 1.2 * dph - 0.7 * math.log(c["nh4oh_wt_pct"]) - 0.15 * x
                   - 0.3 * rpm - 0.1 * add + 0.2 * o2),
        "d50_spread": 0.1 - 0.8 * rpm - 0.3 * lt - 0.25 * x + 1.0 * o2 + 0.3 * dph**2,
        "primary_aspect": 0.2 + 0.5 * x - 0.9 * dph - 0.2 * lt - 1.2 * o2,
    }
    scaled = scaled_conditions(c)
    for bump in bumps:
        z[bump.output] += bump.value(scaled)
    return z


class CoprecipitationWorld:
    """A virtual coprecipitation reactor: conditions in, secondary/primary particle morphology out.

    Parameters
    ----------
    seed : int
        Non-negative; moves the hidden local bumps slightly so different worlds differ (trends do not).
    batch_noise : float
        Scale of the batch-to-batch noise of :meth:`synthesize`; 0 makes it equal :meth:`truth`.
    """

    def __init__(self, seed: int = 0, batch_noise: float = 1.0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not math.isfinite(batch_noise) or batch_noise < 0:
            raise ValueError(f"batch_noise must be a finite number >= 0, got {batch_noise!r}")
        self.seed = int(seed)
        self.batch_noise = float(batch_noise)
        self._bumps = perturbed_bumps(self.seed)

    def __repr__(self) -> str:
        return f"CoprecipitationWorld(seed={self.seed}, batch_noise={self.batch_noise})"

    def truth(self, conditions: Mapping[str, Any]) -> Morphology:
        """Noise-free morphology of ``conditions`` (for evaluation only: a real lab never reveals it).

        Raises
        ------
        ConditionError
            Unknown, malformed or out-of-range conditions (missing ones take their defaults).
        """
        z = latent_scores(validate_conditions(conditions), self._bumps)
        return Morphology(**{name: squash(name, z[name]) for name in OUTPUT_RANGES})

    def synthesize(self, conditions: Mapping[str, Any], sample_seed: int) -> Morphology:
        """One batch made at ``conditions``: the truth plus batch-to-batch noise, clipped to the ranges.

        Deterministic for (world seed, ``sample_seed``, ``conditions``); ``sample_seed`` must be >= 0.
        """
        true = self.truth(conditions)
        if isinstance(sample_seed, bool) or not isinstance(sample_seed, (int, np.integer)) or sample_seed < 0:
            raise ValueError(f"sample_seed must be a non-negative integer, got {sample_seed!r}")
        if self.batch_noise == 0.0:
            return true
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(sample_seed)]))
        e = rng.standard_normal(6) * self.batch_noise  # fixed draw order: one normal per output
        noisy = {
            "d50_um": true.d50_um * math.exp(0.04 * e[0]),
            "d50_spread": true.d50_spread * math.exp(0.05 * e[1]),
            "sphericity_mean": true.sphericity_mean + 0.01 * e[2],
            "sphericity_std": true.sphericity_std * math.exp(0.08 * e[3]),
            "texture": true.texture + 0.02 * e[4],
            "primary_aspect": true.primary_aspect * math.exp(0.05 * e[5]),
        }
        return Morphology(**{name: float(np.clip(v, *OUTPUT_RANGES[name])) for name, v in noisy.items()})


def sweep(world: CoprecipitationWorld, base: Mapping[str, Any], name: str, values: Iterable[Any]) -> list[Morphology]:
    """Noise-free morphologies along one condition: ``base`` with ``name`` set to each of ``values``."""
    return [world.truth({**base, name: value}) for value in values]
