"""Objective (paper 000 eq. 3, range-normalised), Target validation, tolerances and describe targets."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from botorch.acquisition.objective import GenericMCObjective

from loop.config import DESCRIPTORS
from loop.objective import NAN_PENALTY, Objective, Target, target_from_description
from loop.predictor import Prediction

TARGET = Target(d50_um=4.0, sphericity_mean=0.85, texture=0.6, sphericity_std=0.04)
AT_TARGET = {"d50_um": 4.0, "sphericity_mean": 0.85, "sphericity_std": 0.04, "texture": 0.6}


def test_zero_at_target_and_increasing_away_along_each_descriptor():
    obj = Objective(TARGET)
    assert obj(AT_TARGET)[0] == 0.0
    for k in DESCRIPTORS:
        steps = np.linspace(0.0, 0.2, 6) * AT_TARGET[k]
        f = obj([{**AT_TARGET, k: AT_TARGET[k] + s} for s in steps])
        assert np.all(np.diff(f) > 0), k
        f_below = obj([{**AT_TARGET, k: AT_TARGET[k] - s} for s in steps])
        assert np.all(np.diff(f_below) > 0), k


def test_by_default_a_term_reaches_its_weight_exactly_at_the_tolerance():
    """Tolerance normalisation: F and target_met agree on what "close" means, descriptor by descriptor."""
    obj = Objective(TARGET, weights=(1, 2, 3, 4))
    weights = {"d50_um": 1, "sphericity_mean": 2, "sphericity_std": 4, "texture": 3}
    for k, w in weights.items():
        edge = {**AT_TARGET, k: AT_TARGET[k] * 1.05}
        assert obj(edge)[0] == pytest.approx(w)
        assert obj.target_met({**AT_TARGET, k: AT_TARGET[k] * 1.049})
        assert obj({**AT_TARGET, k: AT_TARGET[k] * 0.90})[0] == pytest.approx(4 * w)  # twice the band: 4x
    # the floor of the tolerance is the floor of the scale: a texture target of 0.02 has a band of 0.005
    low_texture = Objective(Target(4.0, 0.85, 0.02))
    assert low_texture({**AT_TARGET, "texture": 0.025})[0] == pytest.approx(1.0)


def test_range_normalisation_weighs_sphericity_far_above_d50_at_their_tolerances():
    """Why tolerance is the default: by ranges, a 5 % sphericity miss costs ~30x a 5 % D50 miss."""
    by_range = Objective(Target(3.44, 0.89, 0.57), normalise="range")
    d50 = by_range({**AT_TARGET, "d50_um": 3.44 * 1.05, "sphericity_mean": 0.89, "texture": 0.57})[0]
    sph = by_range({**AT_TARGET, "d50_um": 3.44, "sphericity_mean": 0.89 * 1.05, "texture": 0.57})[0]
    assert sph > 25 * d50
    with pytest.raises(ValueError, match="normalise must be one of"):
        Objective(TARGET, normalise="zscore")


def test_range_normalisation_divides_errors_by_descriptor_ranges():
    """10 % of each descriptor's range costs the same: the weights compare like with like."""
    obj = Objective(TARGET, weights=(1, 1, 1, 1), normalise="range")
    ranges = {"d50_um": 5.0, "sphericity_mean": 0.23, "sphericity_std": 0.06, "texture": 1.0}
    terms = [obj({**AT_TARGET, k: AT_TARGET[k] + 0.1 * r})[0] for k, r in ranges.items()]
    np.testing.assert_allclose(terms, 0.01)


def test_weights_scale_their_terms_and_std_term_defaults_to_w2():
    off = {**AT_TARGET, "d50_um": 4.5}
    assert Objective(TARGET, weights=(2, 1, 1))(off)[0] == pytest.approx(2 * Objective(TARGET)(off)[0])
    off_std = {**AT_TARGET, "sphericity_std": 0.046}
    assert Objective(TARGET, weights=(1, 3, 1))(off_std)[0] == pytest.approx(3 * Objective(TARGET)(off_std)[0])
    assert Objective(TARGET, weights=(1, 3, 1, 0))(off_std)[0] == 0.0


def test_std_is_ignored_when_the_target_does_not_set_it():
    target = Target(4.0, 0.85, 0.6)
    assert target.keys == ("d50_um", "sphericity_mean", "texture")
    assert Objective(target)({**AT_TARGET, "sphericity_std": 0.08})[0] == 0.0
    assert Objective(target).target_met({**AT_TARGET, "sphericity_std": math.nan})


def test_input_forms_agree():
    obj = Objective(TARGET)
    rows = [{**AT_TARGET, "d50_um": 4.4}, {**AT_TARGET, "texture": 0.5}]
    arr = np.array([[r[k] for k in DESCRIPTORS] for r in rows])
    preds = [Prediction({}, r, {}) for r in rows]
    expected = obj(rows)
    assert expected.shape == (2,)
    np.testing.assert_allclose(obj(arr), expected)
    np.testing.assert_allclose(obj(preds), expected)
    assert obj(rows[0])[0] == expected[0]
    with pytest.raises(ValueError, match="n x 4"):
        obj(np.zeros((2, 3)))


def test_torch_and_numpy_agree_and_fit_botorch_shapes():
    obj = Objective(TARGET, weights=(1.0, 2.0, 0.5, 1.5))
    rng = np.random.default_rng(0)
    lo, hi = np.array([2, 0.7, 0.02, 0]), np.array([7, 0.93, 0.08, 1])
    samples = lo + (hi - lo) * rng.random((16, 3, 2, 4))  # sample x batch x q x m
    samples[0, 0, 0, 3] = np.nan
    y = torch.tensor(samples, dtype=torch.float64, requires_grad=True)
    f_torch = obj.torch(y)
    assert f_torch.shape == (16, 3, 2)
    np.testing.assert_allclose(f_torch.detach().numpy(), obj(samples.reshape(-1, 4)).reshape(16, 3, 2),
                               rtol=1e-12)
    (-f_torch.sum()).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0 and y.grad[0, 0, 0, 3] == 0
    mc = GenericMCObjective(lambda Y, X=None: -obj.torch(Y))
    assert mc(y.detach()).shape == (16, 3, 2)


def test_nan_descriptor_is_a_large_finite_penalty():
    obj = Objective(TARGET)
    worst_measurable = obj({"d50_um": 7.0, "sphericity_mean": 0.70, "sphericity_std": 0.08, "texture": 0.0})[0]
    f = obj({**AT_TARGET, "texture": math.nan})[0]
    assert math.isfinite(f) and f == obj.nan_penalty and f > 10 * worst_measurable
    assert not obj.target_met({**AT_TARGET, "texture": math.nan})
    assert not obj.target_met({k: v for k, v in AT_TARGET.items() if k != "texture"})
    assert obj.torch(torch.tensor([[4.0, 0.85, 0.04, math.nan]])).item() == obj.nan_penalty
    assert Objective(TARGET, normalise="range")({**AT_TARGET, "texture": math.nan})[0] == NAN_PENALTY


def test_target_met_uses_relative_tolerance_with_a_floor():
    obj = Objective(TARGET)
    assert obj.target_met({**AT_TARGET, "d50_um": 4.0 * 1.049})
    assert not obj.target_met({**AT_TARGET, "d50_um": 4.0 * 1.051})
    assert obj.residuals({**AT_TARGET, "d50_um": 3.8})["d50_um"] == pytest.approx(-0.05)
    low_texture = Objective(Target(4.0, 0.85, 0.02))  # floor: 5 % of max(0.02, 0.1 x range 1) = 0.005
    assert low_texture.target_met({**AT_TARGET, "texture": 0.024})
    assert not low_texture.target_met({**AT_TARGET, "texture": 0.026})
    loose = Objective(Target(4.0, 0.85, 0.6, tolerance={"d50_um": 0.2}))
    assert loose.target_met({**AT_TARGET, "d50_um": 4.7}) and not loose.target_met({**AT_TARGET, "texture": 0.64})


@pytest.mark.parametrize("kwargs, match", [
    ({"d50_um": math.nan}, "d50_um must be finite"),
    ({"d50_um": -1.0}, "d50_um=-1.0 is negative"),
    ({"sphericity_mean": 1.2}, "sphericity_mean=1.2 exceeds 1"),
    ({"texture": 1.5}, r"texture=1.5 is outside describe's \[0, 1\]"),
    ({"texture": -0.1}, "texture=-0.1 is negative"),
    ({"sphericity_std": -0.01}, "sphericity_std=-0.01 is negative"),
    ({"texture": "high"}, "texture must be a number"),
    ({"tolerance": 0.0}, "positive fraction"),
    ({"tolerance": {"porosity": 0.1}}, "unknown descriptor"),
])
def test_target_validation(kwargs, match):
    values = {"d50_um": 4.0, "sphericity_mean": 0.85, "texture": 0.6, **kwargs}
    with pytest.raises(ValueError, match=match):
        Target(**values)


def test_objective_validation():
    with pytest.raises(ValueError, match=r"\(w1, w2, w3\)"):
        Objective(TARGET, weights=(1, 1))
    with pytest.raises(ValueError, match="not all zero"):
        Objective(TARGET, weights=(0, 0, 0))
    with pytest.raises(ValueError, match="scale of texture"):
        Objective(TARGET, scales={"texture": 0.0})


def test_target_from_description_merges_low_and_high_magnification_records():
    low = {"image": "a_low.tif", "d50_um": 4.2, "sphericity_mean": 0.86, "sphericity_std": 0.05, "texture": None}
    high = {"image": "a_high.tif", "d50_um": None, "sphericity_mean": float("nan"), "sphericity_std": None,
            "texture": 0.7}
    target = target_from_description([low, high], tolerance=0.1)
    assert target.as_dict() == {"d50_um": 4.2, "sphericity_mean": 0.86, "sphericity_std": 0.05, "texture": 0.7}
    assert target.tolerances["texture"] == 0.1
    assert target_from_description([low, high], use_std=False).sphericity_std is None
    with pytest.raises(ValueError, match="no texture.*high-magnification"):
        target_from_description(low)
    with pytest.raises(ValueError, match="no d50_um.*low-magnification"):
        target_from_description(high)


def test_uncertainty_cost_is_what_gaussian_errors_add_to_the_expected_objective():
    objective = Objective(TARGET, weights=(1.0, 2.0, 0.5, 1.0))
    mean = {"d50_um": 4.1, "sphericity_mean": 0.84, "sphericity_std": 0.05, "texture": 0.58}
    sigma = {"d50_um": 0.15, "sphericity_mean": 0.01, "sphericity_std": 0.004, "texture": 0.03}
    prediction = Prediction({}, mean, {}, uncertainty=sigma)
    rng = np.random.default_rng(0)
    draws = np.array([[mean[k] + sigma[k] * rng.standard_normal() for k in DESCRIPTORS] for _ in range(40000)])
    expected = objective(draws).mean()
    cost = objective.uncertainty_cost([prediction])[0]
    assert cost > 0.5  # not negligible at these spreads
    assert objective(mean)[0] + cost == pytest.approx(expected, rel=0.03)
    # no uncertainty (or an unknown one) adds nothing
    assert objective.uncertainty_cost([Prediction({}, mean, {})])[0] == 0.0
    prediction.uncertainty = {**sigma, "texture": float("nan"), "d50_um": None}
    partial = objective.uncertainty_cost([prediction])[0]
    assert 0 < partial < cost
