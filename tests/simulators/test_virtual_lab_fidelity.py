"""Acceptance: ``describe`` on the simulated SEM's frames recovers the virtual lab's truth over 30 conditions
(issue: D50 within ±5 %, sphericity mean within ±0.03, texture rank order kept, Spearman ≥ 0.9).

The conditions are a fixed random design over the whole condition space (all eight conditions, the three
atmospheres); each sample is a batch of the world (with batch noise) rendered at 3k× and 15k× at 1024².
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from scipy.stats import spearmanr

from models.describe import Describer
from models.imageio import SEMImage
from simulators.conditions import CONDITIONS, CategoricalCondition
from simulators.coprecipitation import CoprecipitationWorld
from simulators.microscope import MAGNIFICATIONS, render_micrograph

N_CONDITIONS = 30


def random_design(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    design = []
    for _ in range(n):
        design.append({name: str(rng.choice(spec.choices)) if isinstance(spec, CategoricalCondition)
                       else float(rng.uniform(spec.low, spec.high)) for name, spec in CONDITIONS.items()})
    return design


def measure_sample(args: tuple[int, dict]) -> dict:
    index, conditions = args
    morphology = CoprecipitationWorld(seed=5).synthesize(conditions, sample_seed=index)
    describer = Describer()
    low = render_micrograph(morphology, MAGNIFICATIONS["low"], seed=1000 + index)
    high = render_micrograph(morphology, MAGNIFICATIONS["high"], seed=2000 + index)
    particles = describer.describe_array(SEMImage(low.image, low.pixel_size_um, "sim", "low")).descriptors
    texture = describer.describe_array(SEMImage(high.image, high.pixel_size_um, "sim", "high")).descriptors
    return {"truth": morphology.as_dict(), "d50_um": particles["d50_um"],
            "sphericity_mean": particles["sphericity_mean"], "texture": texture["texture"]}


@pytest.fixture(scope="module")
def sweep() -> list[dict]:
    with ProcessPoolExecutor(max_workers=2) as pool:
        return list(pool.map(measure_sample, enumerate(random_design(N_CONDITIONS, seed=2027))))


def test_d50_within_5_percent(sweep):
    errors = [s["d50_um"] / s["truth"]["d50_um"] - 1 for s in sweep]
    assert max(map(abs, errors)) <= 0.05, np.round(errors, 3)


def test_sphericity_mean_within_003(sweep):
    errors = [s["sphericity_mean"] - s["truth"]["sphericity_mean"] for s in sweep]
    assert max(map(abs, errors)) <= 0.03, np.round(errors, 3)


def test_texture_rank_order_kept(sweep):
    truth = [s["truth"]["texture"] for s in sweep]
    assert np.ptp(truth) > 0.5  # the design spans the texture scale
    rho = spearmanr(truth, [s["texture"] for s in sweep]).statistic
    assert rho >= 0.9, rho
