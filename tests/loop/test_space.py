"""SearchSpace: the lab contract copy, the unit-cube encoding, constraints and config errors."""
from __future__ import annotations

import math
import tomllib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from loop.config import DESCRIPTOR_RANGES, LAB_CATEGORICAL, LAB_CONDITION_NAMES, LAB_CONTINUOUS, LAB_DEFAULTS
from loop.space import Categorical, Continuous, Integer, SearchSpace
from simulators.conditions import CONDITIONS, DEFAULT_CONDITIONS, CategoricalCondition, validate_conditions
from simulators.coprecipitation import LOG_SCALED, OUTPUT_RANGES

DEFAULT = SearchSpace.default()


def test_lab_contract_copy_matches_the_virtual_lab():
    assert LAB_CONDITION_NAMES == tuple(CONDITIONS)
    assert LAB_DEFAULTS == DEFAULT_CONDITIONS
    for name, spec in CONDITIONS.items():
        if isinstance(spec, CategoricalCondition):
            assert LAB_CATEGORICAL[name] == (spec.choices, spec.default)
        else:
            unit, low, high, default, log = LAB_CONTINUOUS[name]
            assert (unit, low, high, default, log) == (spec.unit, spec.low, spec.high, spec.default,
                                                        name in LOG_SCALED)
    for name in ("d50_um", "sphericity_mean", "sphericity_std"):
        assert DESCRIPTOR_RANGES[name] == OUTPUT_RANGES[name]


def test_default_space_layout():
    assert DEFAULT.names == LAB_CONDITION_NAMES
    assert DEFAULT.dim == 10  # 7 continuous + one-hot atmosphere (3)
    assert DEFAULT.columns[6:9] == ("atmosphere=n2", "atmosphere=sealed", "atmosphere=air")
    assert DEFAULT.ratio_window is None and DEFAULT.fixed == {}


def test_round_trip_conditions_unit_conditions():
    conditions = DEFAULT.sample(64, np.random.default_rng(0))
    x = DEFAULT.to_unit(conditions)
    assert x.shape == (64, DEFAULT.dim) and x.min() >= 0 and x.max() <= 1
    back = DEFAULT.from_unit(x)
    for a, b in zip(conditions, back):
        assert a["atmosphere"] == b["atmosphere"]
        for name in LAB_CONTINUOUS:
            assert b[name] == pytest.approx(a[name], rel=1e-9, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, (5, 10), elements=st.floats(-0.5, 1.5)))
def test_any_unit_point_decodes_to_valid_lab_conditions(x):
    for c in DEFAULT.from_unit(x):
        assert DEFAULT.is_feasible(c)
        validate_conditions(c)  # the lab accepts every decoded point
    again = DEFAULT.from_unit(DEFAULT.to_unit(DEFAULT.from_unit(x)))
    np.testing.assert_allclose(DEFAULT.to_unit(again), DEFAULT.to_unit(DEFAULT.from_unit(x)), atol=1e-12)


def test_log_scaled_loadings_put_the_geometric_mean_at_the_centre():
    mid = math.sqrt(0.05 * 3.0)
    x = DEFAULT.to_unit({**LAB_DEFAULTS, "naoh_wt_pct": mid})
    assert x[0, DEFAULT.columns.index("naoh_wt_pct")] == pytest.approx(0.5)
    assert x[0, DEFAULT.columns.index("ph")] == pytest.approx(0.5)


def test_categorical_one_hot_and_argmax():
    x = DEFAULT.to_unit({**LAB_DEFAULTS, "atmosphere": "sealed"})
    assert list(x[0, 6:9]) == [0.0, 1.0, 0.0]
    x[0, 6:9] = [0.2, 0.3, 0.9]
    assert DEFAULT.from_unit(x)[0]["atmosphere"] == "air"


def test_integer_parameter_gets_equal_bins():
    space = SearchSpace([Integer("stir_rpm", 1, 3)])
    assert [c["stir_rpm"] for c in space.from_unit(np.array([[0.0], [0.33], [0.34], [0.66], [0.67], [1.0]]))] \
        == [1, 1, 2, 2, 3, 3]
    for v in (1, 2, 3):
        assert space.from_unit(space.to_unit({"stir_rpm": v}))[0]["stir_rpm"] == v
    counts = np.bincount([c["stir_rpm"] for c in space.sample(3000, 0)], minlength=4)[1:]
    assert counts.min() > 900


def test_ratio_window_is_respected_by_sampling_and_decoding():
    space = SearchSpace.from_config({"constraints": {"ratio_window": [0.8, 1.25]}})
    for c in space.sample(200, np.random.default_rng(1)):
        assert 0.8 * (1 - 1e-9) <= c["naoh_wt_pct"] / c["nh4oh_wt_pct"] <= 1.25 * (1 + 1e-9)
        assert space.is_feasible(c)
    decoded = space.from_unit(np.random.default_rng(2).random((200, space.dim)))
    assert all(space.is_feasible(c) for c in decoded)
    raw = space.from_unit(np.random.default_rng(2).random((200, space.dim)), repair=False)
    assert not all(space.is_feasible(c) for c in raw)  # the window does cut the box: repair did work


def test_repair_leaves_feasible_points_alone_and_respects_bounds():
    space = SearchSpace.from_config({"parameters": {"naoh_wt_pct": [0.05, 3.0], "nh4oh_wt_pct": [1.0, 3.0]},
                                     "constraints": {"ratio_window": [2.0, 3.0]}})
    ok = {"naoh_wt_pct": 2.5, "nh4oh_wt_pct": 1.0}
    assert space.repair(ok) == ok
    fixed_up = space.repair({"naoh_wt_pct": 0.05, "nh4oh_wt_pct": 3.0})  # ratio 0.017: far below the window
    assert space.is_feasible(fixed_up)
    assert fixed_up["naoh_wt_pct"] / fixed_up["nh4oh_wt_pct"] == pytest.approx(2.0)


def test_fixed_values_take_no_column_and_come_back_decoded():
    space = SearchSpace.from_config({"parameters": {"ph": [10, 11]},
                                     "constraints": {"fixed": {"atmosphere": "sealed", "additive_ppm": 4000}}})
    assert space.dim == 1 and space.columns == ("ph",)
    c = space.from_unit(np.array([[0.5]]))[0]
    assert c == {"ph": 10.5, "atmosphere": "sealed", "additive_ppm": 4000.0}
    assert not space.is_feasible({**c, "atmosphere": "air"})


def test_from_toml_config_and_to_config_round_trip():
    text = """
    [parameters]
    ph = [10.0, 11.0]
    time_min = {low = 60, high = 600}
    stir_rpm = {type = "integer", low = 400, high = 1200}
    atmosphere = ["n2", "sealed"]
    naoh_wt_pct = {}
    nh4oh_wt_pct = {}
    [constraints]
    ratio_window = [0.5, 2.0]
    """
    space = SearchSpace.from_config(tomllib.loads(text))
    assert space.names == ("ph", "time_min", "stir_rpm", "atmosphere", "naoh_wt_pct", "nh4oh_wt_pct")
    assert isinstance(space.parameters[2], Integer) and space.parameters[3].choices == ("n2", "sealed")
    assert space.parameters[4].log and space.dim == 7
    again = SearchSpace.from_config(space.to_config())
    assert again.parameters == space.parameters and again.ratio_window == (0.5, 2.0)


@pytest.mark.parametrize("config, match", [
    ({"parameters": {"ph": [11, 10]}}, "'ph'.*low=11 must be < high=10"),
    ({"parameters": {"ph": [10, 10]}}, "low=10 must be < high=10"),
    ({"parameters": {"viscosity": [1, 2]}}, "unknown parameter 'viscosity'"),
    ({"parameters": {"ph": [9.0, 11.0]}}, "'ph'.*leaves the reactor's range"),
    ({"parameters": {"atmosphere": ["argon"]}}, "'atmosphere'.*not lab choices"),
    ({"parameters": {"ph": {"low": 10, "hi": 11}}}, r"unknown key\(s\) \['hi'\]"),
    ({"constraints": {"ratio_window": [5.0, 10.0]}, "parameters": {"naoh_wt_pct": [0.05, 0.5],
                                                                   "nh4oh_wt_pct": [0.5, 3]}},
     r"ratio_window \[5.0, 10.0\] conflicts.*\[0.01667, 1\]"),
    ({"constraints": {"ratio_window": [2.0, 1.0]}}, "0 < lo < hi"),
    ({"parameters": {"ph": [10, 11]}, "constraints": {"ratio_window": [0.5, 2]}}, "needs 'naoh_wt_pct'"),
    ({"parameters": {"ph": [10, 11]}, "constraints": {"fixed": {"ph": 11.5}}}, r"fixed ph=11.5 is outside"),
    ({"constraints": {"fixed": {"atmosphere": "argon"}}}, "fixed atmosphere='argon' is outside"),
    ({"constraints": {"fixed": {"bogus": 1}}}, "unknown parameter 'bogus'"),
    ({"constraints": {"max_ratio": 3}}, r"unknown key\(s\) \['max_ratio'\] in constraints"),
])
def test_config_errors_name_the_field_and_the_fix(config, match):
    with pytest.raises(ValueError, match=match):
        SearchSpace.from_config(config)


def test_direct_construction_errors():
    with pytest.raises(ValueError, match="log=True needs low > 0"):
        Continuous("additive_ppm", 0.0, 10.0, log=True)
    with pytest.raises(ValueError, match="distinct"):
        SearchSpace([Continuous("ph", 9.5, 11), Continuous("ph", 10, 11)])
    with pytest.raises(ValueError, match="distinct values"):
        Categorical("atmosphere", ("n2", "n2"))
    with pytest.raises(ValueError, match="lack parameter 'naoh_wt_pct'"):
        DEFAULT.to_unit({"ph": 10.5})
    with pytest.raises(ValueError, match="'atmosphere'.*not one of"):
        DEFAULT.to_unit({**LAB_DEFAULTS, "atmosphere": "argon"})
    with pytest.raises(ValueError, match=r"n x 10"):
        DEFAULT.from_unit(np.zeros((2, 3)))


def test_is_feasible_rejects_out_of_bounds_and_missing():
    assert DEFAULT.is_feasible(dict(LAB_DEFAULTS))
    assert not DEFAULT.is_feasible({**LAB_DEFAULTS, "ph": 12.0})
    assert not DEFAULT.is_feasible({k: v for k, v in LAB_DEFAULTS.items() if k != "ph"})
    assert not DEFAULT.is_feasible({**LAB_DEFAULTS, "ph": float("nan")})
