"""Acceptance of the particle descriptors on synthetic fields with exact ground truth (issue: D50 ±4 %,
sphericity mean ±0.03, std ±0.03), through the same pipeline as ``morphloop describe``."""
from __future__ import annotations

import pytest

from models.describe import Describer
from models.imageio import SEMImage
from simulators.fields import make_particle_field

CASES = {
    "separate": dict(touching=0.0),
    "touching": dict(touching=0.5),
    "irregular-touching": dict(touching=0.5, irregularity=0.15),
    "uneven-illumination": dict(touching=0.3, uneven_illumination=0.8),
    "small-many": dict(touching=0.3, d50_px=30.0, n_particles=150),
}


@pytest.fixture(scope="module")
def describer() -> Describer:
    return Describer()


@pytest.mark.parametrize("seed", [11, 12])
@pytest.mark.parametrize("case", sorted(CASES))
def test_particle_descriptors_match_truth(describer, case, seed):
    field = make_particle_field(seed * 31 + len(case), **CASES[case])
    assert field.info_bar_rows > 0  # every field carries an instrument bar with a scale bar
    truth = field.summary()
    result = describer.describe_array(SEMImage(field.image, field.pixel_size_um, "test", case))
    d = result.descriptors
    assert d["d50_um"] == pytest.approx(truth["d50_um"], rel=0.04)
    assert d["sphericity_mean"] == pytest.approx(truth["sphericity_mean"], abs=0.03)
    assert d["sphericity_std"] == pytest.approx(truth["sphericity_std"], abs=0.03)
    assert abs(d["n_particles"] - truth["n_particles"]) <= max(2, 0.1 * truth["n_particles"])
    assert d["d10_um"] <= d["d50_um"] <= d["d90_um"]
    assert result.info_bar.side == "bottom"
