"""Conditions -> predicted morphology descriptors through the surrogate (generate tiles, then describe them).

This is what the optimisers query (``loop.predictor.MorphologyPredictor`` is the structural interface: any object
with ``predict(conditions, n_images, seed) -> list of predictions`` carrying ``conditions``, ``descriptors``,
``spread`` and ``images``). Fixed noise seeds make a prediction a deterministic function of the conditions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from models.surrogate.calibration import apply_generation_calibration
from models.surrogate.descriptors import DESCRIPTOR_NAMES, describe_high_tiles, describe_low_tiles
from models.surrogate.model import LatentDiffusionSurrogate


@dataclass
class MorphologyPrediction:
    """Predicted descriptors of one condition: means over the generated tiles (``descriptors``, calibrated to the
    scale of full-frame ``describe`` and through the model's generation calibration), their spread across tiles
    (``spread``), the tiles themselves (``images``: ``{"low": k x H x W, "high": k x H x W}``), the pooled
    particle diameters and sphericities, and the descriptors before the generation calibration
    (``uncalibrated``)."""

    conditions: dict
    descriptors: dict[str, float]
    spread: dict[str, float]
    images: dict[str, np.ndarray] = field(default_factory=dict)
    diameters_um: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sphericities: np.ndarray = field(default_factory=lambda: np.zeros(0))
    domain_distance: float = float("nan")
    uncalibrated: dict[str, float] = field(default_factory=dict)


class SurrogatePredictor:
    """Generates ``n_images`` tiles per magnification per condition and describes them."""

    def __init__(self, surrogate: LatentDiffusionSurrogate, steps: int | None = None,
                 guidance_scale: float | None = None, batch_size: int = 64):
        self.surrogate = surrogate
        self.steps, self.guidance_scale, self.batch_size = steps, guidance_scale, batch_size

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs) -> SurrogatePredictor:
        return cls(LatentDiffusionSurrogate.from_pretrained(directory), **kwargs)

    def generate(self, conditions: Sequence[Mapping[str, Any]], n_images: int, seed: int,
                 progress=None) -> dict[str, np.ndarray]:
        """``{"low": n x k x H x W, "high": n x k x H x W}``."""
        return {mag: self.surrogate.generate(conditions, mag, n_images, seed, steps=self.steps,
                                             guidance_scale=self.guidance_scale, batch_size=self.batch_size,
                                             progress=progress)
                for mag in ("low", "high")}

    def describe(self, conditions: Sequence[Mapping[str, Any]], tiles: dict[str, np.ndarray],
                 keep_images: bool = False, distances: np.ndarray | None = None,
                 generation_calibration: bool = True) -> list[MorphologyPrediction]:
        """Descriptors of already generated tiles (one prediction per condition)."""
        cfg = self.surrogate.config
        maps = cfg.generation_calibration if generation_calibration else {}
        out = []
        for i, cond in enumerate(conditions):
            low = describe_low_tiles(tiles["low"][i], cfg.pixel_size_um["low"])
            high = describe_high_tiles(tiles["high"][i], cfg.pixel_size_um["high"], cfg.texture_calibration)
            a, b = cfg.d50_calibration
            d50 = a + b * low["d50_um"]
            raw = {"d50_um": float(d50), "sphericity_mean": float(low["sphericity_mean"]),
                   "sphericity_std": float(low["sphericity_std"]), "texture": float(high["texture"])}
            descriptors = apply_generation_calibration(raw, maps)
            slope = {k: abs(maps[k][1]) if k in maps else 1.0 for k in DESCRIPTOR_NAMES}
            spread = {"d50_um": slope["d50_um"] * abs(b) * low["d50_um_spread"],
                      "texture": slope["texture"] * high["texture_spread"],
                      "sphericity_mean": float("nan"), "sphericity_std": float("nan")}
            images = {m: tiles[m][i] for m in tiles} if keep_images else {}
            out.append(MorphologyPrediction(dict(cond), {k: descriptors[k] for k in DESCRIPTOR_NAMES},
                                            spread, images, low["diameters_um"], low["sphericities"],
                                            float(distances[i]) if distances is not None else float("nan"),
                                            uncalibrated=raw))
        return out

    def predict(self, conditions: Sequence[Mapping[str, Any]], n_images: int = 4, seed: int = 0,
                keep_images: bool = False, generation_calibration: bool = True) -> list[MorphologyPrediction]:
        """Predicted descriptors of each condition (deterministic for a seed)."""
        conditions = [dict(c) for c in conditions]
        distances = self.surrogate.domain_distances(conditions)
        tiles = self.generate(conditions, n_images, seed)
        return self.describe(conditions, tiles, keep_images, distances, generation_calibration)
