"""Descriptor stacking: generated descriptors + a GP on the training set's, weighted by what each knows."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from models.surrogate.calibration import fit_stack_on_training
from models.surrogate.descriptors import DESCRIPTOR_NAMES, TRAINING_DESCRIPTORS_FILE
from models.surrogate.fidelity import r2_score
from models.surrogate.model import LatentDiffusionSurrogate
from models.surrogate.predictor import SurrogatePredictor
from models.surrogate.stacking import (DescriptorStack, TrainingSetGP, cross_validated_gp, fit_descriptor_stack,
                                       fit_stack_weights, nearest_stack)
from tests.models.test_surrogate import CONDS, tiny_config


def _smooth(x: np.ndarray) -> np.ndarray:
    return np.column_stack([3 + 2 * np.sin(2 * x[:, 0]) + x[:, 1], 0.85 + 0.05 * x[:, 1],
                            0.05 + 0.01 * x[:, 0], 0.5 + 0.3 * x[:, 0] * x[:, 1]])


def test_weights_follow_what_each_source_knows():
    rng = np.random.default_rng(0)
    truth = rng.uniform(2, 6, 80)
    blind_images, good_gp = rng.normal(4, 1, 80), truth + rng.normal(0, 0.05, 80)
    a, b, c = fit_stack_weights(blind_images, good_gp, truth)
    assert b < 0.05 and c == pytest.approx(1.0, abs=0.05)
    good_images, blind_gp = 1.2 * truth - 0.5, rng.normal(4, 1, 80)
    a, b, c = fit_stack_weights(good_images, blind_gp, truth)
    assert b == pytest.approx(1 / 1.2, abs=0.02) and c < 0.02 and a == pytest.approx(0.5 / 1.2, abs=0.1)
    # anti-correlated images never get a negative weight (non-negative least squares)
    assert fit_stack_weights(-truth, good_gp, truth)[1] == 0.0
    # too few finite rows: the mean, no weights
    assert fit_stack_weights(np.array([1.0, np.nan, 2.0]), np.ones(3), np.array([1.0, 2.0, 3.0])) == [2.0, 0.0, 0.0]


def test_image_term_is_kept_only_when_it_explains_more_than_chance():
    rng = np.random.default_rng(3)
    gp = rng.uniform(2, 6, 160)
    hidden = rng.normal(0, 1, 160)  # what the GP does not know
    truth = gp + 0.1 * hidden + rng.normal(0, 0.2, 160)
    for seed in range(20):  # noise images that least squares gives a positive weight
        noise = np.random.default_rng(100 + seed).normal(0, 1, 160)
        if fit_stack_weights(noise, gp, truth, alpha=1.0)[1] > 0:
            break
    assert fit_stack_weights(noise, gp, truth, alpha=1.0)[1] > 0
    a, b, c = fit_stack_weights(noise, gp, truth)
    assert b == 0.0
    # [a, c] is then the GP-only least-squares fit
    c_alone, a_alone = np.polyfit(gp, truth, 1)
    assert c == pytest.approx(c_alone) and a == pytest.approx(a_alone)
    # images that see the hidden part keep their weight
    a, b, c = fit_stack_weights(hidden + rng.normal(0, 0.5, 160), gp, truth)
    assert b > 0.05 and c == pytest.approx(1.0, abs=0.05)


def test_cross_validated_gp_is_held_out_and_still_predicts():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (60, 2))
    y = _smooth(x) + rng.normal(0, 0.01, (60, 4))
    rows = np.arange(0, 60, 2)
    cv = cross_validated_gp(x, y, rows, folds=5)
    in_sample = TrainingSetGP(x, y).predict(x[rows])
    for j in (0, 1, 3):
        assert r2_score(y[rows, j], cv[:, j]) > 0.9
        # a GP that saw the rows reproduces them more closely: the cross-validated one did not see them
        assert np.abs(cv[:, j] - y[rows, j]).mean() > np.abs(in_sample[:, j] - y[rows, j]).mean()


def test_gp_fitted_on_a_subset_conditions_on_every_row():
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (60, 2))
    y = _smooth(x) + rng.normal(0, 0.01, (60, 4))
    full, part = TrainingSetGP(x, y), TrainingSetGP(x, y, fit_rows=20)
    for j in (0, 3):
        assert part.models[j].train_inputs[0].shape[0] == 60
        assert not np.allclose(part.state()[f"{j}.covar_module.raw_lengthscale"],
                               full.state()[f"{j}.covar_module.raw_lengthscale"])
        # conditioned on all 60 rows: close to the data at every row, not only the 20 it was fitted on
        assert np.abs(part.predict(x)[:, j] - y[:, j]).max() < 0.1
    assert TrainingSetGP(x, y, fit_rows=100).state().keys() == full.state().keys()


def test_gp_leaves_nan_targets_out_and_reports_nan_without_data():
    x = np.random.default_rng(2).uniform(-1, 1, (20, 2))
    y = _smooth(x)
    y[:5, 0] = np.nan
    y[:, 2] = np.nan
    out = TrainingSetGP(x, y).predict(x[:3])
    assert np.isfinite(out[:, 0]).all() and np.isnan(out[:, 2]).all()


def test_stack_applies_weights_fills_unmeasurable_images_and_round_trips():
    generated = np.array([[4.0, 0.8, 0.05, 0.5], [np.nan, np.nan, 0.05, 0.5]])
    gp = np.array([[3.0, 0.9, 0.06, 0.4], [5.0, 0.99, 0.06, 0.4]])
    stack = DescriptorStack(6, 2, {"d50_um": [0.1, 0.5, 0.5], "sphericity_mean": [0.2, 0.0, 1.0]},
                            {"d50_um": 4.0, "sphericity_mean": 0.85}, 10)
    out = stack.apply(generated, gp)
    assert out[0, 0] == pytest.approx(0.1 + 2.0 + 1.5)
    assert out[1, 0] == pytest.approx(0.1 + 2.0 + 2.5)  # NaN generated D50 -> the generated mean
    assert out[0, 1] == pytest.approx(1.0) and out[1, 1] == 1.0  # 0.2 + 0.9 clipped to a sphericity's range
    assert out[0, 3] == 0.5  # no weights: the generated value
    again = DescriptorStack.from_json(json.loads(json.dumps(stack.to_json())))
    assert np.array_equal(again.apply(generated, gp), out)


def test_fit_descriptor_stack_reports_r2_of_each_source():
    rng = np.random.default_rng(3)
    target = _smooth(rng.uniform(-1, 1, (50, 2)))
    generated = target + rng.normal(0, [1.0, 0.05, 0.02, 0.01], target.shape)  # texture good, sphericity blind
    gp = target + rng.normal(0, [0.1, 0.005, 0.002, 0.1], target.shape)
    stack = fit_descriptor_stack(generated, gp, target, steps=6, n_images=2)
    assert stack.weights["texture"][1] > stack.weights["texture"][2]
    assert stack.weights["sphericity_mean"][2] > 5 * stack.weights["sphericity_mean"][1]
    for k in DESCRIPTOR_NAMES:
        assert stack.r2["stacked"][k] >= max(stack.r2["generated"][k], stack.r2["gp_cv"][k]) - 0.02


def test_nearest_stack_prefers_the_closest_solver_steps():
    stacks = [{"steps": 6, "n_images": 2, "weights": {}, "generated_mean": {}, "n_conditions": 8},
              {"steps": 10, "n_images": 4, "weights": {}, "generated_mean": {}, "n_conditions": 8},
              {"steps": 10, "n_images": 2, "weights": {}, "generated_mean": {}, "n_conditions": 8}]
    assert (nearest_stack(stacks, 6, 4).steps, nearest_stack(stacks, 6, 4).n_images) == (6, 2)
    assert nearest_stack(stacks, 10, 3).n_images in (2, 4) and nearest_stack(stacks, 12, 4).n_images == 4
    assert nearest_stack([], 6, 2) is None


def _training_table(conditions: list[dict]) -> pd.DataFrame:
    x = np.array([[c["ph"] - 10.5, np.log(c["time_min"] / 200)] for c in conditions])
    y = _smooth(x)
    table = pd.DataFrame({f"cond_{k}": [c[k] for c in conditions] for k in conditions[0]})
    for j, k in enumerate(DESCRIPTOR_NAMES):
        table[f"tile_{k}"] = y[:, j]
    return table


def test_predictor_predicts_through_the_stack_and_the_model_keeps_its_training_table(tmp_path):
    conditions = [{"ph": 9.5 + 0.1 * i, "time_min": 30.0 + 50 * (i % 7), "atmosphere": ("n2", "sealed", "air")[i % 3]}
                  for i in range(20)]
    table = _training_table(conditions)
    model = LatentDiffusionSurrogate(tiny_config(), training_descriptors=table)
    predictor = SurrogatePredictor(model)
    stack = fit_stack_on_training(predictor, n_conditions=12, n_images=1, seed=1)
    assert (stack.steps, stack.n_images, stack.n_conditions) == (3, 1, 12)
    # an untrained generator knows nothing about D50: the stack leans on the GP
    assert stack.weights["d50_um"][2] > 0.5
    model.config.descriptor_stacks = [stack.to_json()]
    model.save_pretrained(tmp_path)
    assert (tmp_path / TRAINING_DESCRIPTORS_FILE).is_file()

    loaded = SurrogatePredictor.from_pretrained(tmp_path)
    pd.testing.assert_frame_equal(loaded.surrogate.training_descriptors.reset_index(drop=True), table,
                                  check_dtype=False)
    query = CONDS[:3]
    stacked = loaded.predict(query, n_images=1, seed=0)
    images_only = SurrogatePredictor(loaded.surrogate, stack=False).predict(query, n_images=1, seed=0)
    gp = loaded.training_gp().predict(loaded.surrogate.schema.encode(query))
    for s, g, row in zip(stacked, images_only, gp):
        a, b, c = stack.weights["d50_um"]
        generated = s.uncalibrated["d50_um"] if np.isfinite(s.uncalibrated["d50_um"]) else stack.generated_mean["d50_um"]
        assert s.descriptors["d50_um"] == pytest.approx(a + (b * generated if b else 0.0) + c * row[0])
        same = [list(d.values()) for d in (g.descriptors, g.generated, s.generated)]
        np.testing.assert_array_equal(same[0], same[1])  # without the stack: the images' descriptors
        np.testing.assert_array_equal(same[2], same[1])  # the same images either way
        assert s.uncertainty["d50_um"] > 0 and g.uncertainty == {}  # the GP term's spread, only with a stack
    # a model without training descriptors predicts from its images
    model.training_descriptors = None
    assert SurrogatePredictor(model).descriptor_stack(1) is None


def test_a_shipped_gp_state_predicts_the_same_numbers_without_fitting(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (30, 2))
    y = _smooth(x)
    fitted = TrainingSetGP(x, y)
    import botorch.fit

    def no_fit(*args, **kwargs):
        raise AssertionError("a GP with a state must not be fitted again")

    monkeypatch.setattr(botorch.fit, "fit_gpytorch_mll", no_fit)
    again = TrainingSetGP(x, y, state=fitted.state())
    np.testing.assert_array_equal(again.predict(x[:7]), fitted.predict(x[:7]))

    conditions = [{"ph": 9.5 + 0.1 * i, "time_min": 30.0 + 50 * (i % 7), "atmosphere": "n2"} for i in range(12)]
    model = LatentDiffusionSurrogate(tiny_config(), training_descriptors=_training_table(conditions))
    model.training_gp_state = fitted.state()
    model.save_pretrained(tmp_path)
    loaded = LatentDiffusionSurrogate.from_pretrained(tmp_path)
    assert set(loaded.training_gp_state) == set(model.training_gp_state)
    for k, v in model.training_gp_state.items():
        assert np.array_equal(loaded.training_gp_state[k].numpy(), v.numpy())


def test_gp_is_surest_where_it_has_data_and_the_stack_scales_its_spread_by_the_gp_weight():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (40, 2)) * np.array([1.0, 0.2])  # data only in a band of the second input
    gp = TrainingSetGP(x, _smooth(x) + rng.normal(0, 0.01, (40, 4)))
    mean, std = gp.posterior(np.array([[0.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(mean, gp.predict(np.array([[0.0, 0.0], [0.0, 1.0]])))
    assert np.all(std[0] < std[1]) and np.all(std > 0)
    stack = DescriptorStack(6, 2, {"d50_um": [0.0, 0.0, 1.0], "texture": [0.1, 0.7, 0.3],
                                   "sphericity_mean": [0.2, 0.5, 0.0]}, {}, 10)
    u = stack.uncertainty(std)
    np.testing.assert_allclose(u[:, 0], std[:, 0])
    np.testing.assert_allclose(u[:, 3], 0.3 * std[:, 3])
    assert np.isnan(u[:, 1]).all() and np.isnan(u[:, 2]).all()  # no GP weight (or no weights): unknown


def test_a_prediction_of_some_descriptors_generates_only_the_magnifications_they_use():
    conditions = [{"ph": 9.5 + 0.1 * i, "time_min": 30.0 + 50 * (i % 7), "atmosphere": "n2"} for i in range(12)]
    model = LatentDiffusionSurrogate(tiny_config(), training_descriptors=_training_table(conditions))
    # D50 and mean sphericity from the GP alone, sphericity std and texture also from the images
    stack = DescriptorStack(3, 1, {"d50_um": [0.0, 0.0, 1.0], "sphericity_mean": [0.0, 0.0, 1.0],
                                   "sphericity_std": [0.0, 0.5, 0.5], "texture": [0.0, 0.6, 0.4]},
                            {"sphericity_std": 0.05, "texture": 0.5}, 12)
    model.config.descriptor_stacks = [stack.to_json()]
    predictor = SurrogatePredictor(model)
    asked = []
    generate = model.generate
    model.generate = lambda conds, mag, *a, **k: asked.append(mag) or generate(conds, mag, *a, **k)
    assert predictor.magnifications_for(["d50_um", "sphericity_mean"], 1) == ()
    assert predictor.magnifications_for(["d50_um", "texture"], 1) == ("high",)
    assert predictor.magnifications_for(["sphericity_std"], 1) == ("low",)
    with pytest.raises(ValueError, match="unknown descriptor"):
        predictor.magnifications_for(["d90_um"], 1)

    full = predictor.predict(CONDS[:3], n_images=1, seed=0)
    assert asked == ["low", "high"]
    asked.clear()
    partial = predictor.predict(CONDS[:3], n_images=1, seed=0, descriptors=["d50_um", "sphericity_mean", "texture"])
    assert asked == ["high"]
    for f, p in zip(full, partial):
        for k in ("d50_um", "sphericity_mean", "texture"):
            assert p.descriptors[k] == pytest.approx(f.descriptors[k], rel=1e-12)
    asked.clear()
    gp_only = predictor.predict(CONDS[:3], n_images=1, seed=0, descriptors=["d50_um"])
    assert asked == [] and gp_only[0].descriptors["d50_um"] == pytest.approx(full[0].descriptors["d50_um"])
    # without a stack every descriptor comes from the images
    assert SurrogatePredictor(model, stack=False).magnifications_for(["d50_um"], 1) == ("low",)


def _lab_table(conditions: list[dict], shift: float = 0.0) -> pd.DataFrame:
    x = np.array([[c["ph"] - 10.5, np.log(c["time_min"] / 200)] for c in conditions])
    table = pd.DataFrame({"sample_index": np.arange(len(conditions)),
                          **{f"cond_{k}": [c[k] for c in conditions] for k in conditions[0]}})
    for j, k in enumerate(DESCRIPTOR_NAMES):
        table[f"measured_{k}"] = _smooth(x)[:, j] + shift
    return table


def test_lab_samples_teach_the_gp_where_the_training_set_has_none_and_travel_with_the_model(tmp_path, monkeypatch):
    import models.surrogate.calibration as calibration
    from models.surrogate.descriptors import LAB_DESCRIPTORS_FILE

    # training samples at low pH only; lab samples (measured, no images) at high pH
    training = [{"ph": 9.5 + 0.05 * i, "time_min": 30.0 + 50 * (i % 7), "atmosphere": "n2"} for i in range(12)]
    lab = [{"ph": 10.8 + 0.05 * i, "time_min": 40.0 + 45 * (i % 7), "atmosphere": "n2"} for i in range(12)]
    query = [{"ph": 11.1, "time_min": 150.0, "atmosphere": "n2"}]
    truth = _smooth(np.array([[11.1 - 10.5, np.log(150 / 200)]]))[0]
    alone = SurrogatePredictor(LatentDiffusionSurrogate(tiny_config(), training_descriptors=_training_table(training)))
    model = LatentDiffusionSurrogate(tiny_config(), training_descriptors=_training_table(training),
                                     lab_descriptors=_lab_table(lab))
    taught = SurrogatePredictor(model)
    conditions, values = taught.training_examples()
    assert len(conditions) == 24 and conditions[12]["ph"] == pytest.approx(10.8)  # training first, then lab
    encode = model.schema.encode
    far = abs(alone.training_gp().predict(encode(query))[0, 0] - truth[0])
    near = abs(taught.training_gp().predict(encode(query))[0, 0] - truth[0])
    assert near < 0.1 < far
    assert taught.training_gp().posterior(encode(query))[1][0, 0] < alone.training_gp().posterior(encode(query))[1][0, 0]

    # the stack's cross-validated GP learns from the lab samples too; it is fitted on training conditions only
    seen = []
    monkeypatch.setattr(calibration, "cross_validated_gp",
                        lambda x, y, rows, **kw: seen.append((len(x), list(rows))) or cross_validated_gp(x, y, rows, **kw))
    stack = fit_stack_on_training(taught, n_conditions=12, n_images=1, seed=1)
    assert stack.n_conditions == 12 and seen == [(24, list(range(12)))]
    model.save_pretrained(tmp_path)
    assert (tmp_path / LAB_DESCRIPTORS_FILE).is_file()
    loaded = LatentDiffusionSurrogate.from_pretrained(tmp_path)
    pd.testing.assert_frame_equal(loaded.lab_descriptors, model.lab_descriptors, check_dtype=False)
    # a lab table without measured columns is a named error, not a silent empty GP
    with pytest.raises(ValueError, match="measure-lab"):
        SurrogatePredictor(LatentDiffusionSurrogate(tiny_config(), training_descriptors=_training_table(training),
                                                    lab_descriptors=_lab_table(lab).drop(
                                                        columns="measured_texture"))).training_examples()
