"""A fake morphology predictor for the loop tests: the virtual lab's noise-free truth plus seeded image noise.

Tests may read the hidden world (``simulators/``); ``loop/`` itself never does.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pytest

from loop.predictor import DESCRIPTORS, Prediction
from simulators.coprecipitation import CoprecipitationWorld

#: Per-image noise: lognormal on D50, additive on the others (the mean over n images has it / sqrt(n)).
IMAGE_NOISE = {"d50_um": 0.04, "sphericity_mean": 0.01, "sphericity_std": 0.004, "texture": 0.02}


class TruthPredictor:
    """Conditions -> truth of ``CoprecipitationWorld(world_seed)`` + per-image noise drawn from ``seed`` only
    (every condition of a call gets the same draws, so results do not depend on batch composition).

    Records each call's batch size and seed.
    """

    def __init__(self, world_seed: int = 0, noise: float = 1.0) -> None:
        self.world = CoprecipitationWorld(seed=world_seed)
        self.noise = noise
        self.batch_sizes: list[int] = []
        self.seeds: list[int] = []

    @property
    def calls(self) -> int:
        return len(self.batch_sizes)

    def truth(self, conditions: Mapping[str, Any]) -> dict[str, float]:
        m = self.world.truth(conditions).as_dict()
        return {k: m[k] for k in DESCRIPTORS}

    def predict(self, conditions: Sequence[Mapping[str, Any]], n_images: int = 4, seed: int = 0) -> list[Prediction]:
        self.batch_sizes.append(len(conditions))
        self.seeds.append(seed)
        e = np.random.default_rng(seed).standard_normal((n_images, len(DESCRIPTORS))) * self.noise
        out = []
        for c in conditions:
            truth = self.truth(c)
            per = {k: (truth[k] * np.exp(IMAGE_NOISE[k] * e[:, j]) if k == "d50_um"
                       else truth[k] + IMAGE_NOISE[k] * e[:, j]) for j, k in enumerate(DESCRIPTORS)}
            out.append(Prediction(dict(c), {k: float(v.mean()) for k, v in per.items()},
                                  {k: float(v.std()) for k, v in per.items()}))
        return out


@pytest.fixture
def truth_predictor():
    """Factory: ``truth_predictor(world_seed=0, noise=1.0) -> TruthPredictor``."""
    return TruthPredictor
