"""Generation calibration: affine maps from generated to simulated descriptors, fitted on training conditions."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from models.surrogate.calibration import (MIN_CALIBRATION_CONDITIONS, apply_generation_calibration,
                                          fit_generation_calibration, training_measured_descriptors,
                                          training_tile_descriptors)
from models.surrogate.descriptors import DESCRIPTOR_NAMES, TRAINING_DESCRIPTORS_FILE
from models.surrogate.model import SurrogateConfig
from models.surrogate.predictor import MorphologyPrediction


def _training_table(n: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame({"cond_ph": rng.uniform(9.5, 11.5, n), "tile_d50_um": rng.uniform(2, 6, n),
                         "tile_sphericity_mean": rng.uniform(0.8, 0.95, n),
                         "tile_sphericity_std": rng.uniform(0.02, 0.08, n), "tile_texture": rng.uniform(0.1, 0.9, n)})


class DistortingPredictor:
    """Stands in for a surrogate whose generated descriptors are a known affine distortion of the simulated ones
    (``generated = 1.3 * simulated - 0.4`` for D50, etc.), looked up by the condition's pH."""

    def __init__(self, table: pd.DataFrame, config: SurrogateConfig):
        self.surrogate = SimpleNamespace(config=config)
        _, simulated = training_tile_descriptors(table, config)
        self.ph, self.simulated = table["cond_ph"].to_numpy(float), simulated
        self.calls = []

    def predict(self, conditions, n_images, seed, generation_calibration=True):
        self.calls.append((len(conditions), n_images, seed, generation_calibration))
        out = []
        for c in conditions:
            d50, psi, psi_std, texture = self.simulated[np.argmin(np.abs(self.ph - c["ph"]))]
            generated = {"d50_um": 1.3 * d50 - 0.4, "sphericity_mean": psi - 0.04,
                         "sphericity_std": 2 * psi_std, "texture": 0.8 * texture + 0.1}
            out.append(MorphologyPrediction(c, generated, {}))
        return out


def test_fit_recovers_the_inverse_of_the_generators_distortion(tmp_path):
    rng = np.random.default_rng(0)
    _training_table(40, rng).to_json(tmp_path / TRAINING_DESCRIPTORS_FILE, orient="records")
    table = pd.read_json(tmp_path / TRAINING_DESCRIPTORS_FILE, orient="records")  # as the fit reads it
    config = SurrogateConfig(conditions=[], d50_calibration=[0.1, 1.05], texture_calibration=[0.0, 1.0])
    predictor = DistortingPredictor(table, config)
    fit = fit_generation_calibration(predictor, tmp_path, n_conditions=24, n_images=3, seed=5)
    assert predictor.calls == [(24, 3, 5, False)]  # fitted on uncalibrated predictions
    maps = fit["generation_calibration"]
    assert maps["d50_um"] == pytest.approx([0.4 / 1.3, 1 / 1.3])
    assert maps["sphericity_mean"] == pytest.approx([0.04, 1.0])
    assert maps["texture"] == pytest.approx([-0.125, 1.25])
    assert fit["r2_after"]["d50_um"] == pytest.approx(1.0) and fit["r2_before"]["d50_um"] < 0.9
    generated = {"d50_um": 1.3 * 4.0 - 0.4, "sphericity_mean": 0.86, "sphericity_std": 0.1, "texture": 0.5}
    calibrated = apply_generation_calibration(generated, maps)
    assert calibrated["d50_um"] == pytest.approx(4.0) and calibrated["texture"] == pytest.approx(0.5)


def test_too_few_training_conditions_leave_the_identity(tmp_path):
    table = _training_table(MIN_CALIBRATION_CONDITIONS - 1, np.random.default_rng(1))
    table.to_json(tmp_path / TRAINING_DESCRIPTORS_FILE, orient="records")
    predictor = DistortingPredictor(table, SurrogateConfig(conditions=[]))
    fit = fit_generation_calibration(predictor, tmp_path)
    assert fit["generation_calibration"] == {} and predictor.calls == []


def test_calibrated_values_stay_in_their_ranges_and_unknown_descriptors_pass():
    maps = {"texture": [0.5, 2.0], "sphericity_mean": [0.0, 1.5]}
    out = apply_generation_calibration({"texture": 0.9, "sphericity_mean": 0.9, "d50_um": 3.0}, maps)
    assert out == {"texture": 1.0, "sphericity_mean": 1.0, "d50_um": 3.0}


def test_the_shipped_model_carries_a_fitted_calibration_and_reports_both_figures():
    from models.surrogate.model import DEFAULT_MODEL_DIR

    config = json.loads((DEFAULT_MODEL_DIR / "surrogate.json").read_text())
    assert set(config["generation_calibration"]) == set(DESCRIPTOR_NAMES)
    report = json.loads((DEFAULT_MODEL_DIR / "report" / "report.json").read_text())
    assert report["generation_calibration"] == config["generation_calibration"]
    assert {"surrogate", "surrogate before generation calibration"} <= set(report["r2"])


def test_measured_descriptors_are_preferred_to_tile_descriptors_when_a_model_has_them():
    config = SurrogateConfig(conditions=[{"name": "ph", "kind": "continuous", "low": 9.5, "high": 11.5}])
    table = _training_table(5, np.random.default_rng(3))
    conditions, tile = training_tile_descriptors(table, config)
    assert training_measured_descriptors(table, config)[1].tolist() == tile.tolist()  # nothing measured yet
    measured = np.arange(20, dtype=float).reshape(5, 4)
    measured[2, 3] = np.nan  # an unmeasurable texture stays NaN (the GP leaves it out)
    for j, k in enumerate(DESCRIPTOR_NAMES):
        table[f"measured_{k}"] = measured[:, j]
    again, values = training_measured_descriptors(table, config)
    assert again == conditions
    np.testing.assert_array_equal(values, measured)
