"""The hidden coprecipitation world: determinism, ranges, validation and the paper-000 trends."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from simulators.conditions import CONDITIONS, DEFAULT_CONDITIONS, ConditionError, Morphology
from simulators.coprecipitation import OUTPUT_RANGES, CoprecipitationWorld, sweep

SEEDS = [0, 1, 7, 12345]  # trends must hold in every world, not just one
HIGH_TEXTURE = {"naoh_wt_pct": 2.0, "nh4oh_wt_pct": 0.6, "ph": 10.0, "atmosphere": "n2"}  # ratio 3.33
LOW_TEXTURE = {"naoh_wt_pct": 0.3, "nh4oh_wt_pct": 2.0, "ph": 11.0}  # ratio 0.15


def random_conditions(rng: np.random.Generator) -> dict:
    """Uniform over each range (loadings log-uniform), atmosphere uniform over its choices."""
    conditions = {}
    for name, spec in CONDITIONS.items():
        if hasattr(spec, "choices"):
            conditions[name] = str(rng.choice(spec.choices))
        elif name in ("naoh_wt_pct", "nh4oh_wt_pct"):
            conditions[name] = float(np.exp(rng.uniform(np.log(spec.low), np.log(spec.high))))
        else:
            conditions[name] = float(rng.uniform(spec.low, spec.high))
    return conditions


def strictly_increasing(values) -> bool:
    return all(b > a for a, b in zip(values, values[1:]))


def strictly_decreasing(values) -> bool:
    return all(b < a for a, b in zip(values, values[1:]))


# --- determinism, noise, ranges, validation --------------------------------------------------------------


def test_same_seeds_same_batch_other_sample_seed_other_batch():
    conditions = random_conditions(np.random.default_rng(3))
    a = CoprecipitationWorld(seed=5).synthesize(conditions, sample_seed=11)
    b = CoprecipitationWorld(seed=5).synthesize(conditions, sample_seed=11)
    c = CoprecipitationWorld(seed=5).synthesize(conditions, sample_seed=12)
    assert a == b
    assert a != c
    assert all(isinstance(v, float) for v in a.as_dict().values())


def test_worlds_with_different_seeds_differ_somewhere_but_share_the_trends():
    rng = np.random.default_rng(0)
    draws = [random_conditions(rng) for _ in range(50)]
    w0, w1 = CoprecipitationWorld(0), CoprecipitationWorld(1)
    assert any(w0.truth(c) != w1.truth(c) for c in draws)
    assert w0.truth(HIGH_TEXTURE).texture == pytest.approx(w1.truth(HIGH_TEXTURE).texture, abs=0.05)


def test_zero_batch_noise_synthesizes_the_truth():
    world = CoprecipitationWorld(seed=2, batch_noise=0.0)
    for c in (HIGH_TEXTURE, LOW_TEXTURE, {}):
        assert world.synthesize(c, sample_seed=9) == world.truth(c)


def test_batch_noise_has_the_documented_size():
    world = CoprecipitationWorld(seed=0)
    truth = world.truth({})
    batches = [world.synthesize({}, sample_seed=s) for s in range(400)]
    log_d50 = np.log([m.d50_um for m in batches]) - np.log(truth.d50_um)
    sphericity = np.array([m.sphericity_mean for m in batches]) - truth.sphericity_mean
    texture = np.array([m.texture for m in batches]) - truth.texture
    assert 0.03 < log_d50.std() < 0.05 and abs(log_d50.mean()) < 0.01
    assert 0.007 < sphericity.std() < 0.013
    assert 0.015 < texture.std() < 0.025


def test_outputs_stay_in_the_documented_ranges_over_random_conditions():
    rng = np.random.default_rng(42)
    world = CoprecipitationWorld(seed=3, batch_noise=3.0)  # heavy noise: clipping must hold too
    for i in range(200):
        conditions = random_conditions(rng)
        for morphology in (world.truth(conditions), world.synthesize(conditions, sample_seed=i)):
            for name, value in morphology.as_dict().items():
                lo, hi = OUTPUT_RANGES[name]
                assert lo <= value <= hi, (name, value, conditions)


def test_output_ranges_cover_every_morphology_field():
    assert set(OUTPUT_RANGES) == {f.name for f in dataclasses.fields(Morphology)}


def test_missing_conditions_take_the_defaults():
    world = CoprecipitationWorld()
    assert world.truth({}) == world.truth(DEFAULT_CONDITIONS)
    assert world.truth({"ph": 11.0}) == world.truth({**DEFAULT_CONDITIONS, "ph": 11.0})


@pytest.mark.parametrize("bad", [
    {"ph": 12.5},                 # out of range
    {"naoh_wt_pct": 0.0},         # out of range (would be log(0))
    {"temperature": 50.0},        # unknown key
    {"time_min": "long"},         # not a number
    {"stir_rpm": float("nan")},   # not finite
    {"atmosphere": "argon"},      # not a choice
])
def test_bad_conditions_raise_condition_error(bad):
    world = CoprecipitationWorld()
    with pytest.raises(ConditionError):
        world.truth(bad)
    with pytest.raises(ConditionError):
        world.synthesize(bad, sample_seed=0)


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"seed": 1.5}, {"batch_noise": -0.1}])
def test_bad_world_parameters_raise(kwargs):
    with pytest.raises(ValueError):
        CoprecipitationWorld(**kwargs)


def test_negative_sample_seed_raises():
    with pytest.raises(ValueError, match="sample_seed"):
        CoprecipitationWorld().synthesize({}, sample_seed=-3)


# --- trends (paper 000, "Correlation with experimental variables", Figs. S2-S6) --------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_texture_corners_ratio_3_33_at_ph_10_high_ratio_0_15_at_ph_11_low(seed):
    world = CoprecipitationWorld(seed)
    assert world.truth(HIGH_TEXTURE).texture >= 0.7
    assert world.truth(LOW_TEXTURE).texture < 0.3


@pytest.mark.parametrize("seed", SEEDS)
def test_oxygen_collapses_texture_and_sealed_sits_between(seed):
    world = CoprecipitationWorld(seed)
    n2, sealed, air = (world.truth({**HIGH_TEXTURE, "atmosphere": a}) for a in ("n2", "sealed", "air"))
    assert air.texture < 0.3
    assert air.texture < sealed.texture < n2.texture
    assert n2.texture - sealed.texture < 0.1  # only slightly lower


@pytest.mark.parametrize("seed", SEEDS)
def test_sphericity_rises_and_its_spread_falls_with_time(seed):
    world = CoprecipitationWorld(seed)
    for base in ({}, HIGH_TEXTURE, LOW_TEXTURE):
        series = sweep(world, base, "time_min", np.linspace(30, 1440, 8))
        assert strictly_increasing([m.sphericity_mean for m in series])
        assert strictly_decreasing([m.sphericity_std for m in series])
        assert series[-1].sphericity_mean - series[0].sphericity_mean > 0.1


@pytest.mark.parametrize("seed", SEEDS)
def test_higher_naoh_nh4oh_ratio_gives_more_spherical_particles(seed):
    world = CoprecipitationWorld(seed)
    series = sweep(world, {"nh4oh_wt_pct": 1.0}, "naoh_wt_pct", np.geomspace(0.1, 3.0, 7))
    assert strictly_increasing([m.sphericity_mean for m in series])
    assert series[-1].sphericity_mean - series[0].sphericity_mean > 0.05


@pytest.mark.parametrize("seed", SEEDS)
def test_d50_falls_with_ph(seed):
    series = sweep(CoprecipitationWorld(seed), {}, "ph", np.linspace(9.5, 11.5, 9))
    d50 = [m.d50_um for m in series]
    assert strictly_decreasing(d50)
    assert d50[0] / d50[-1] > 1.8


@pytest.mark.parametrize("seed", SEEDS)
def test_d50_falls_with_nh4oh(seed):
    world = CoprecipitationWorld(seed)
    for ph in (10.0, 11.0):
        series = sweep(world, {"ph": ph}, "nh4oh_wt_pct", np.linspace(0.2, 3.0, 8))
        d50 = [m.d50_um for m in series]
        assert strictly_decreasing(d50)
        assert d50[0] / d50[-1] > 1.35  # a clear effect within the 2-7 µm output range


@pytest.mark.parametrize("seed", SEEDS)
def test_oxygen_distorts_secondary_particles(seed):
    world = CoprecipitationWorld(seed)
    for base in ({}, HIGH_TEXTURE, {"time_min": 1200.0}):
        n2 = world.truth({**base, "atmosphere": "n2"})
        air = world.truth({**base, "atmosphere": "air"})
        assert air.sphericity_mean < n2.sphericity_mean - 0.05
        assert air.sphericity_std > n2.sphericity_std + 0.02


@pytest.mark.parametrize("seed", SEEDS)
def test_stirring_narrows_the_size_distribution_and_trims_d50(seed):
    series = sweep(CoprecipitationWorld(seed), {}, "stir_rpm", np.linspace(300, 1500, 7))
    assert strictly_decreasing([m.d50_spread for m in series])
    assert 0.6 < series[-1].d50_um / series[0].d50_um < 0.95  # moderate


@pytest.mark.parametrize("seed", SEEDS)
def test_additive_helps_sphericity_up_to_a_point_then_not(seed):
    series = sweep(CoprecipitationWorld(seed), {}, "additive_ppm", np.linspace(0, 5000, 11))
    sphericity = [m.sphericity_mean for m in series]
    peak = int(np.argmax(sphericity))
    assert 0 < peak < len(series) - 1
    assert sphericity[peak] - sphericity[0] > 0.02
    assert sphericity[peak] - sphericity[-1] > 0.005


@pytest.mark.parametrize("seed", SEEDS)
def test_temperature_has_a_moderate_effect(seed):
    cold, hot = (CoprecipitationWorld(seed).truth({"temperature_c": t}) for t in (20.0, 60.0))
    assert 0.02 < hot.sphericity_mean - cold.sphericity_mean < 0.15
    assert 0.02 < cold.texture - hot.texture < 0.3


# --- interactions and local structure ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_texture_gain_from_ratio_depends_on_ph(seed):
    """pH x ratio: going from ratio 0.15 to 3.33 lifts texture much more at pH 10 than at pH 11."""
    world = CoprecipitationWorld(seed)

    def ratio_gain(ph: float) -> float:
        low, high = (world.truth({"naoh_wt_pct": n, "nh4oh_wt_pct": a, "ph": ph}).texture
                     for n, a in ((0.3, 2.0), (2.0, 0.6)))
        return high - low

    assert ratio_gain(10.0) - ratio_gain(11.0) > 0.15


@pytest.mark.parametrize("seed", SEEDS)
def test_temperature_matters_more_early_than_late_for_sphericity(seed):
    """temperature x time: heat speeds the early ripening, which has saturated by 1440 min."""
    world = CoprecipitationWorld(seed)

    def heat_gain(time_min: float) -> float:
        cold, hot = (world.truth({"time_min": time_min, "temperature_c": t}) for t in (20.0, 60.0))
        return hot.sphericity_mean - cold.sphericity_mean

    early, late = heat_gain(240.0), heat_gain(1440.0)
    assert early - late > 0.03 and early > 3 * abs(late)


def test_some_response_is_locally_non_monotone():
    """Smooth bumps: at least one one-factor sweep in the world turns back somewhere."""
    world = CoprecipitationWorld(0)
    turns = 0
    for name, values in (("stir_rpm", np.linspace(300, 1500, 25)), ("temperature_c", np.linspace(20, 60, 25)),
                         ("ph", np.linspace(9.5, 11.5, 25))):
        for field in ("d50_um", "sphericity_mean", "texture"):
            series = np.array([getattr(m, field) for m in sweep(world, {"nh4oh_wt_pct": 1.8}, name, values)])
            steps = np.sign(np.diff(series))
            turns += int(np.any(steps != steps[0]))
    assert turns >= 2


def test_sweep_returns_one_truth_per_value_in_order():
    world = CoprecipitationWorld(0)
    values = [9.6, 10.4, 11.2]
    assert sweep(world, {"time_min": 120.0}, "ph", values) == [
        world.truth({"time_min": 120.0, "ph": v}) for v in values]
