"""PSO inverse design on a fake predictor (the virtual lab's truth + seeded noise), and its baseline."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from loop.objective import Objective, Target
from loop.parameters import Categorical
from loop.predictor import CachedPredictor, Prediction
from loop.pso import (PSOResult, best_known_conditions, inverse_design, known_starts, pattern_search,
                      rerank_over_seeds, run_pso, run_random_search)
from loop.space import SearchSpace

SPACE = SearchSpace.default()
#: Paper 000's optimum-like conditions (sealed reactor, 0.3/0.3 wt%, 4000 ppm additive).
KNOWN = {"ph": 10.5, "naoh_wt_pct": 0.3, "nh4oh_wt_pct": 0.3, "time_min": 720.0, "temperature_c": 50.0,
         "stir_rpm": 800.0, "atmosphere": "sealed", "additive_ppm": 4000.0}


def reachable_objective(predictor, conditions=KNOWN) -> Objective:
    truth = predictor.truth(conditions)
    return Objective(Target(truth["d50_um"], truth["sphericity_mean"], truth["texture"]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pso_finds_conditions_within_5_percent_of_a_reachable_target(truth_predictor, seed):
    predictor = truth_predictor()
    objective = reachable_objective(predictor)
    result = run_pso(predictor, SPACE, objective, n_particles=20, iters=20, seed=seed)
    assert result.met and result.stopped == "target_met" and result.iterations < 20
    assert all(abs(r) <= 0.05 for r in result.residuals.values())
    assert result.evaluations_to_target == result.evaluations == 20 * result.iterations
    truth = predictor.truth(result.best.conditions)  # the prediction noise is small: the truth is close too
    assert all(abs(truth[k] / v - 1) < 0.1 for k, v in objective.target.as_dict().items())
    assert SPACE.is_feasible(result.best.conditions)


def test_pso_is_deterministic_for_a_seed_and_restores_numpy_global_state(truth_predictor):
    objective = reachable_objective(truth_predictor())
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    a = run_pso(truth_predictor(), SPACE, objective, n_particles=10, iters=6, seed=7, stop_when_met=False)
    assert np.random.random() == expected_next  # the caller's global stream is untouched
    b = run_pso(truth_predictor(), SPACE, objective, n_particles=10, iters=6, seed=7, stop_when_met=False)
    c = run_pso(truth_predictor(), SPACE, objective, n_particles=10, iters=6, seed=8, stop_when_met=False)
    assert a.history == b.history
    assert [x.conditions for x in a.candidates] == [x.conditions for x in b.candidates]
    assert a.history != c.history


def test_one_batched_predict_call_per_iteration_with_a_fixed_noise_seed(truth_predictor):
    predictor = truth_predictor()
    objective = reachable_objective(predictor)
    result = run_pso(predictor, SPACE, objective, n_particles=12, iters=5, seed=3, stop_when_met=False)
    assert predictor.batch_sizes == [12] * 5 == [12] * result.iterations
    assert result.predict_calls == 5 and result.evaluations == 60
    assert set(predictor.seeds) == {3}
    unbatched_predictor = truth_predictor()
    unbatched = run_pso(unbatched_predictor, SPACE, objective, n_particles=12, iters=5, seed=3, batch=False,
                        stop_when_met=False)
    assert unbatched_predictor.batch_sizes == [1] * 60 and unbatched.predict_calls == 60
    assert unbatched.history == result.history  # batching changes the cost, not the answer
    noise_fixed = truth_predictor()
    run_pso(noise_fixed, SPACE, objective, n_particles=4, iters=2, seed=3, noise_seed=5, stop_when_met=False)
    assert noise_fixed.seeds == [5, 5]


def test_result_bookkeeping(truth_predictor):
    calls = []
    objective = reachable_objective(truth_predictor())
    result = run_pso(truth_predictor(), SPACE, objective, n_particles=10, iters=8, seed=0, stop_when_met=False,
                     progress=lambda i, best: calls.append((i, best.objective)), top_k=5)
    assert isinstance(result, PSOResult) and result.method == "pso" and result.stopped == "budget"
    assert len(result.history) == 8 and all(np.diff(result.history) <= 0)
    assert [c[0] for c in calls] == list(range(1, 9)) and [c[1] for c in calls] == result.history
    scores = [c.objective for c in result.candidates]
    assert len(result.candidates) == 5 and scores == sorted(scores) and scores[0] == result.history[-1]
    assert len({tuple(sorted(c.conditions.items())) for c in result.candidates}) == 5
    summary = result.to_dict()
    assert summary["candidates"][0]["objective"] == scores[0] and summary["met"] == result.met
    assert result.wall_time_s > 0


def test_unreachable_target_returns_met_false_with_residuals(truth_predictor):
    # The virtual lab's sphericity tops out at 0.93 and its texture at 0.98: no condition reaches both 0.99.
    objective = Objective(Target(d50_um=3.0, sphericity_mean=0.99, texture=0.99))
    result = run_pso(truth_predictor(), SPACE, objective, n_particles=10, iters=10, seed=0, patience=4)
    assert not result.met and result.stopped in ("budget", "patience")
    assert set(result.residuals) == {"d50_um", "sphericity_mean", "texture"}
    assert result.residuals["sphericity_mean"] < -0.05
    assert result.best.objective > 0 and not any(c.met for c in result.candidates)


def test_patience_stops_a_stalled_search(truth_predictor):
    objective = Objective(Target(d50_um=3.0, sphericity_mean=0.99, texture=0.99))
    result = run_pso(truth_predictor(), SPACE, objective, n_particles=5, iters=200, seed=0, patience=3)
    assert result.stopped == "patience" and result.iterations < 200
    assert result.history[-1] == result.history[-4]


def test_random_search_baseline_is_worse_or_equal_on_average(truth_predictor):
    rng = np.random.default_rng(11)
    pso_f, random_f = [], []
    for i, conditions in enumerate(SPACE.sample(5, rng)):
        objective = reachable_objective(truth_predictor(), conditions)
        kwargs = dict(n_particles=15, iters=15, seed=i, stop_when_met=False)
        pso_f.append(run_pso(truth_predictor(), SPACE, objective, **kwargs).best.objective)
        baseline = run_random_search(truth_predictor(), SPACE, objective, **kwargs)
        assert baseline.method == "random" and baseline.evaluations == 225
        random_f.append(baseline.best.objective)
    assert np.mean(np.log10(pso_f)) < np.mean(np.log10(random_f))


def test_constraints_hold_for_every_candidate(truth_predictor):
    space = SearchSpace.from_config({"constraints": {"ratio_window": [0.8, 1.25], "fixed": {"atmosphere": "n2"}}})
    result = run_pso(truth_predictor(), space, reachable_objective(truth_predictor()), n_particles=10, iters=5,
                     seed=0, stop_when_met=False, top_k=50)
    assert len(result.candidates) == 50
    assert all(space.is_feasible(c.conditions) for c in result.candidates)


class PartlyBlindPredictor:
    """Texture unmeasurable (NaN) in air: the objective must penalise, not crash."""

    def __init__(self, inner):
        self.inner = inner

    def predict(self, conditions, n_images=4, seed=0):
        out = []
        for p in self.inner.predict(conditions, n_images, seed):
            if p.conditions["atmosphere"] == "air":
                p = Prediction(p.conditions, {**p.descriptors, "texture": math.nan}, p.spread)
            out.append(p)
        return out


def test_nan_descriptors_are_penalised_not_fatal(truth_predictor):
    objective = reachable_objective(truth_predictor())
    result = run_pso(PartlyBlindPredictor(truth_predictor()), SPACE, objective, n_particles=10, iters=5, seed=0,
                     stop_when_met=False, top_k=50)
    air = [c for c in result.candidates if c.conditions["atmosphere"] == "air"]
    assert air and all(c.objective >= 100 and not c.met for c in air)
    assert result.best.conditions["atmosphere"] != "air"
    assert result.to_dict()["candidates"][-1]["descriptors"]["texture"] is None  # NaN -> null in JSON


def test_cached_predictor_counts_distinct_evaluations(truth_predictor):
    inner = truth_predictor()
    cached = CachedPredictor(inner, decimals=6)
    a, b = dict(KNOWN), {**KNOWN, "ph": 10.6}
    first = cached.predict([a, b, {**a, "ph": 10.5 + 1e-9}], seed=1)
    assert inner.batch_sizes == [2] and cached.evaluations == 2 and cached.calls == 1
    assert first[0].descriptors == first[2].descriptors
    again = cached.predict([b, a], seed=1)
    assert inner.batch_sizes == [2] and cached.calls == 2 and cached.batches == 1
    assert again[1].descriptors == first[0].descriptors
    cached.predict([a], seed=2)  # another noise seed is another evaluation
    assert cached.evaluations == 3 and inner.batch_sizes == [2, 1]
    result = run_pso(cached, SPACE, reachable_objective(inner), n_particles=8, iters=4, seed=0,
                     stop_when_met=False)
    assert cached.evaluations <= 3 + result.evaluations and len(cached) == cached.evaluations


def test_pso_leaves_logging_alone(truth_predictor, tmp_path, monkeypatch):
    """pyswarms' Reporter would reconfigure the root logger and open ./report.log."""
    monkeypatch.chdir(tmp_path)
    handlers = list(logging.getLogger().handlers)
    run_pso(truth_predictor(), SPACE, reachable_objective(truth_predictor()), n_particles=5, iters=2, seed=0)
    assert logging.getLogger().handlers == handlers
    assert not Path("report.log").exists()


def test_budget_errors(truth_predictor):
    objective = reachable_objective(truth_predictor())
    with pytest.raises(ValueError, match="n_particles must be a positive integer"):
        run_pso(truth_predictor(), SPACE, objective, n_particles=0)
    with pytest.raises(ValueError, match="no free parameter"):
        fixed_all = SearchSpace.from_config({"parameters": {"ph": [10, 11]}, "constraints": {"fixed": {"ph": 10.5}}})
        run_pso(truth_predictor(), fixed_all, objective)


class ForeignPredictor:
    """A predictor with its own prediction type (as ``models.surrogate`` has): only ``.descriptors``,
    ``.spread`` and ``.conditions`` are relied on."""

    def __init__(self, inner):
        self.inner = inner

    def predict(self, conditions, n_images=4, seed=0, keep_images=False):
        from types import SimpleNamespace

        return [SimpleNamespace(conditions=p.conditions, descriptors=p.descriptors, spread=p.spread)
                for p in self.inner.predict(conditions, n_images, seed)]


def test_duck_typed_predictions_are_accepted(truth_predictor):
    from loop.predictor import MorphologyPredictor

    predictor = CachedPredictor(ForeignPredictor(truth_predictor()))
    assert isinstance(predictor.predictor, MorphologyPredictor)
    objective = reachable_objective(truth_predictor())
    reference = run_pso(truth_predictor(), SPACE, objective, n_particles=8, iters=3, seed=0, stop_when_met=False)
    result = run_pso(predictor, SPACE, objective, n_particles=8, iters=3, seed=0, stop_when_met=False)
    assert result.history == reference.history


class RecordingPredictor:
    """Every asked condition, in order; the predictions come from ``inner``."""

    def __init__(self, inner) -> None:
        self.inner, self.asked = inner, []

    def predict(self, conditions, n_images=4, seed=0):
        self.asked.append([dict(c) for c in conditions])
        return self.inner.predict(conditions, n_images=n_images, seed=seed)


def test_known_morphologies_rank_by_the_objective_and_seed_the_swarm(truth_predictor):
    inner = truth_predictor()
    objective = reachable_objective(inner)
    pool = SPACE.sample(30, np.random.default_rng(4)) + [dict(KNOWN)]
    known = np.array([[inner.truth(c)[k] for k in ("d50_um", "sphericity_mean", "sphericity_std", "texture")]
                      for c in pool])
    known[0] = np.nan  # an unmeasurable example ranks last
    best = best_known_conditions(pool, known, objective, 3)
    assert best[0] == KNOWN and pool[0] not in best
    assert best_known_conditions(pool, known, objective, len(pool))[-1] == pool[0]
    with pytest.raises(ValueError, match="one descriptor row per condition"):
        best_known_conditions(pool, known[:3], objective, 2)

    recorder = RecordingPredictor(inner)
    seeded = run_pso(recorder, SPACE, objective, n_particles=8, iters=3, seed=0, stop_when_met=False,
                     init_conditions=best)
    first = recorder.asked[0]
    assert [SPACE.to_unit(c).round(6).tolist() for c in first[:3]] == [SPACE.to_unit(c).round(6).tolist()
                                                                      for c in best]
    # the swarm starting at the known optimum ends at least as close as one started at random points
    unseeded = run_pso(truth_predictor(), SPACE, objective, n_particles=8, iters=3, seed=0, stop_when_met=False)
    assert seeded.best.objective <= unseeded.best.objective
    at_known = objective(np.array([[inner.predict([KNOWN])[0].descriptors[k] for k in
                                    ("d50_um", "sphericity_mean", "sphericity_std", "texture")]]))[0]
    assert seeded.best.objective <= at_known + 1e-12


def test_known_starts_come_from_a_predictors_training_examples_through_the_cache(truth_predictor):
    inner = truth_predictor()
    objective = reachable_objective(inner)
    assert known_starts(inner, objective, 3) == []  # a predictor without training examples: no starts
    pool = SPACE.sample(12, np.random.default_rng(5)) + [dict(KNOWN)]
    descriptors = np.array([[inner.truth(c)[k] for k in ("d50_um", "sphericity_mean", "sphericity_std", "texture")]
                            for c in pool])
    inner.training_examples = lambda: (pool, descriptors)
    starts = known_starts(CachedPredictor(inner), objective, 2, fixed={"stir_rpm": 900.0})
    assert len(starts) == 2 and starts[0] == {**KNOWN, "stir_rpm": 900.0}


class UncertainPredictor:
    """Every condition predicted exactly at ``target``, with an uncertainty growing away from pH 11."""

    def __init__(self, target: dict) -> None:
        self.target = target

    def predict(self, conditions, n_images=4, seed=0):
        out = []
        for c in conditions:
            out.append(Prediction(dict(c), dict(self.target), {},
                                  uncertainty={k: 0.5 * abs(c["ph"] - 11.0) * v for k, v in self.target.items()}))
        return out


def test_uncertainty_weight_prefers_conditions_the_predictor_is_sure_of():
    target = {"d50_um": 4.0, "sphericity_mean": 0.85, "sphericity_std": 0.05, "texture": 0.5}
    objective = Objective(Target(4.0, 0.85, 0.5))
    kwargs = dict(n_particles=10, iters=15, seed=3, stop_when_met=False)
    sure = run_pso(UncertainPredictor(target), SPACE, objective, uncertainty_weight=1.0, **kwargs)
    blind = run_pso(UncertainPredictor(target), SPACE, objective, **kwargs)
    assert abs(sure.best.conditions["ph"] - 11.0) < 0.05
    assert sure.best.score == pytest.approx(sure.best.uncertainty_cost) and sure.best.uncertainty_cost > 0
    assert sure.best.uncertainty["d50_um"] == pytest.approx(2.0 * abs(sure.best.conditions["ph"] - 11.0))
    # without the weight every candidate scores F = 0 and the search has no reason to move toward pH 11
    assert blind.best.uncertainty_cost == 0.0 and blind.best.score == blind.best.objective == 0.0
    assert abs(blind.best.conditions["ph"] - 11.0) > abs(sure.best.conditions["ph"] - 11.0)
    with pytest.raises(ValueError, match="uncertainty_weight"):
        run_pso(UncertainPredictor(target), SPACE, objective, uncertainty_weight=-1.0, **kwargs)


class SubsetPredictor:
    """Records which descriptors each call asked for; NaN for the others."""

    def __init__(self, inner) -> None:
        self.inner, self.asked = inner, []

    def predict(self, conditions, n_images=4, seed=0, descriptors=None):
        self.asked.append(None if descriptors is None else sorted(descriptors))
        out = self.inner.predict(conditions, n_images, seed)
        for p in out:
            p.descriptors = {k: (v if descriptors is None or k in descriptors else math.nan)
                             for k, v in p.descriptors.items()}
        return out


def test_the_swarm_asks_for_its_targets_descriptors_only_and_design_completes_the_best(truth_predictor):
    inner = truth_predictor()
    objective = reachable_objective(inner)
    subset = SubsetPredictor(inner)
    result = inverse_design(CachedPredictor(subset), objective, SPACE, n_particles=6, iters=3, seed=0)
    wanted = sorted(objective.target.keys)
    # three swarm iterations, two re-ranking seeds, then the best one predicted in full
    assert subset.asked == [wanted] * 5 + [None]
    subset.asked.clear()
    inverse_design(CachedPredictor(subset), objective, SPACE, n_particles=6, iters=3, seed=0, polish_starts=3,
                   polish_evaluations=60)
    assert len(subset.asked) > 6 and subset.asked[:-1] == [wanted] * (len(subset.asked) - 1)  # polls too
    assert math.isfinite(result.best.descriptors["sphericity_std"])
    assert all(math.isnan(c.descriptors["sphericity_std"]) for c in result.candidates[1:])
    # a predictor without the keyword is called as before
    plain = run_pso(inner, SPACE, objective, n_particles=4, iters=2, seed=0, stop_when_met=False)
    assert plain.evaluations == 8


def test_reranking_over_seeds_averages_out_a_lucky_draw(truth_predictor):
    inner = truth_predictor(noise=3.0)
    objective = reachable_objective(inner)
    pool = SPACE.sample(40, np.random.default_rng(6)) + [dict(KNOWN)]
    one_seed = run_pso(inner, SPACE, objective, n_particles=len(pool), iters=1, n_images=2, seed=0, top_k=10,
                       stop_when_met=False, init_conditions=pool)
    seeds = [11, 12, 13, 14]
    ranked = rerank_over_seeds(inner, objective, one_seed.candidates, 2, seeds)
    assert sorted(c.score for c in ranked) == [c.score for c in ranked]
    for c in ranked:  # the mean over the original and the new seeds, re-scored
        draws = [inner.predict([c.conditions], 2, s)[0].descriptors["texture"] for s in (0, *seeds)]
        assert c.descriptors["texture"] == pytest.approx(np.mean(draws))
        assert c.spread["texture"] == pytest.approx(np.std(draws))
        assert c.objective == pytest.approx(objective(c.descriptors)[0])
    # averaged predictions are closer to the noise-free truth than the single draw the swarm ranked on
    error = lambda cands: np.mean([abs(c.descriptors["texture"] - inner.truth(c.conditions)["texture"])  # noqa: E731
                                   for c in cands])
    assert error(ranked) < error(one_seed.candidates)
    assert rerank_over_seeds(inner, objective, [], 2, seeds) == []


class QuadraticPredictor:
    """Noise-free descriptors, each linear in one of pH, NaOH and temperature, equal to the target (4.0, 0.85, 0.5)
    at ``OPTIMUM`` only: F is a quadratic bowl a pattern search can walk down."""

    OPTIMUM = {"ph": 10.8, "naoh_wt_pct": 0.5, "temperature_c": 45.0}

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def predict(self, conditions, n_images=4, seed=0):
        self.batch_sizes.append(len(conditions))
        out = []
        for c in conditions:
            u = {k: (c[k] - v) / {"ph": 3.0, "naoh_wt_pct": 2.0, "temperature_c": 40.0}[k]
                 for k, v in self.OPTIMUM.items()}
            descriptors = {"d50_um": 4.0 * (1 + u["ph"]), "sphericity_mean": 0.85 * (1 - u["naoh_wt_pct"]),
                           "sphericity_std": 0.05, "texture": 0.5 * (1 + u["temperature_c"])}
            out.append(Prediction(dict(c), descriptors, {}))
        return out


def test_pattern_search_walks_down_a_basin_in_polls_and_keeps_categoricals():
    predictor = QuadraticPredictor()
    objective = Objective(Target(4.0, 0.85, 0.5))
    start = {**KNOWN, "ph": 9.6, "naoh_wt_pct": 1.5, "temperature_c": 30.0, "atmosphere": "air"}
    result = pattern_search(predictor, objective, SPACE, [start], max_evaluations=400)
    first = objective(QuadraticPredictor().predict([start])[0].descriptors)[0]
    assert first > 1.0 and result.best.objective < 0.01 * first and result.best.met
    best = result.best.conditions
    assert abs(best["ph"] - 10.8) < 0.05 and abs(best["temperature_c"] - 45.0) < 1.0
    assert best["atmosphere"] == "air" and all(c.conditions["atmosphere"] == "air" for c in result.candidates)
    # one start evaluation, then polls of two points per continuous/integer column, within the budget
    columns = sum(1 for p in SPACE.free if not isinstance(p, Categorical))
    assert predictor.batch_sizes[0] == 1 and set(predictor.batch_sizes[1:]) == {2 * columns}
    assert result.evaluations == 1 + 2 * columns * (len(predictor.batch_sizes) - 1) <= 400
    assert all(SPACE.is_feasible(c.conditions) for c in result.candidates)
    # the budget is shared by the starts; none at all evaluates nothing
    two = pattern_search(QuadraticPredictor(), objective, SPACE, [start, KNOWN], max_evaluations=100, top_k=100)
    assert two.evaluations <= 100 and len({c.conditions["atmosphere"] for c in two.candidates}) == 2
    one = pattern_search(QuadraticPredictor(), objective, SPACE, [start, KNOWN], max_evaluations=2 * columns + 1,
                         top_k=100)
    assert {c.conditions["atmosphere"] for c in one.candidates} == {"air"}  # no budget for a poll of the second
    assert pattern_search(QuadraticPredictor(), objective, SPACE, [start], max_evaluations=0).candidates == []
    with pytest.raises(ValueError, match="max_evaluations"):
        pattern_search(predictor, objective, SPACE, [start], max_evaluations=-1)


def test_design_polishes_the_swarms_best_candidates():
    objective = Objective(Target(4.0, 0.85, 0.5))
    swarm_only = inverse_design(QuadraticPredictor(), objective, SPACE, n_particles=6, iters=3, seed=1,
                                rerank_seeds=0)  # polish_starts=0 by default
    polished = inverse_design(QuadraticPredictor(), objective, SPACE, n_particles=6, iters=3, seed=1,
                              rerank_seeds=0, polish_starts=3, polish_evaluations=300)
    assert polished.best.objective < 0.2 * swarm_only.best.objective
    assert 0 < polished.extra["polish_evaluations"] <= 300
    assert polished.evaluations == swarm_only.evaluations + polished.extra["polish_evaluations"]
    with pytest.raises(ValueError, match="polish_starts"):
        inverse_design(QuadraticPredictor(), objective, SPACE, n_particles=6, iters=3, polish_starts=-1)
