"""``morphloop design`` (flows/cli_design.py): the JSON contract, reference-image targets and bad input.

A tiny swarm (2 particles, 1 iteration, 1 tile, 2 solver steps) over the shipped surrogate keeps each run to
seconds; what the swarm finds is measured in ``benchmarks/bench_campaign.py --methods design``.
"""
from __future__ import annotations

import json
import math

import pytest

from cli_runner import invoke
from simulators.conditions import CONDITIONS

TINY = ("--particles", 2, "--iters", 1, "--n-images", 1, "--steps", 2, "--seed", 3)
NUMBERS = ("--target-d50-um", 3.5, "--target-sphericity", 0.88, "--target-texture", 0.55)


def run_design(*args):
    result = invoke("design", *args, *TINY, "--json")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1  # one object, nothing else on stdout
    return json.loads(lines[0])


def test_numeric_target_gives_lab_conditions_predictions_and_the_best_candidates_tiles(tmp_path):
    record = run_design(*NUMBERS, "--out", tmp_path / "best")
    assert set(record["conditions"]) == set(CONDITIONS)  # ready for `morphloop simulate`
    assert all(CONDITIONS[k].low <= v <= CONDITIONS[k].high for k, v in record["conditions"].items()
               if k != "atmosphere")
    assert record["conditions"]["atmosphere"] in CONDITIONS["atmosphere"].choices
    assert record["target"] == {"d50_um": 3.5, "sphericity_mean": 0.88, "texture": 0.55}
    assert {"d50_um", "sphericity_mean", "sphericity_std", "texture"} <= set(record["predicted"])
    assert math.isfinite(record["objective"]) and record["objective"] >= 0
    assert record["evaluations"] == 2 + 2 * 2 and isinstance(record["met"], bool)  # swarm, then 2 re-ranking seeds
    assert set(record["residuals"]) == {"d50_um", "sphericity_mean", "texture"}
    # the shipped model predicts through its stack: the GP term's uncertainty comes with the prediction
    assert record["uncertainty"]["d50_um"] > 0 and record["uncertainty_cost"] > 0
    for mag in ("low", "high"):
        assert len(record["images"][mag]) == 1
        assert (tmp_path / "best" / f"{mag}_0.tif").is_file()
    assert run_design(*NUMBERS)["conditions"] == record["conditions"]  # same seed, same answer


def test_polish_refines_the_swarms_best_candidate_within_the_swarms_budget():
    args = (*NUMBERS, "--particles", 2, "--iters", 8, "--n-images", 1, "--steps", 2, "--seed", 3, "--json")
    runs = {}
    for polish in (0, 1):
        result = invoke("design", *args, "--polish", polish)
        assert result.exit_code == 0, result.stderr
        runs[polish] = json.loads(result.stdout)
    assert runs[0]["polish_evaluations"] == 0
    assert 15 <= runs[1]["polish_evaluations"] <= 16  # the start, then polls of 2 x 7 continuous columns
    score = {k: r["objective"] + r["uncertainty_cost"] for k, r in runs.items()}
    assert score[1] < score[0]


def test_float32_and_bfloat16_designs_answer_with_the_same_contract():
    full, fast = run_design(*NUMBERS, "--precision", "float32"), run_design(*NUMBERS, "--precision", "bfloat16")
    assert set(fast) == set(full) and set(fast["conditions"]) == set(CONDITIONS)
    assert all(math.isfinite(fast["predicted"][k]) for k in ("d50_um", "sphericity_mean", "texture"))
    assert fast["evaluations"] == full["evaluations"] and math.isfinite(fast["objective"])
    result = invoke("design", *NUMBERS, *TINY, "--precision", "fp16")
    assert result.exit_code == 2 and "--precision must be one of auto, float32, bfloat16" in result.stderr


def test_reference_image_target_is_described_from_a_low_and_a_high_magnification_image(tmp_path):
    sim = invoke("simulate", "--conditions", "{}", "--out", tmp_path / "ref", "--seed", 1, "--json")
    assert sim.exit_code == 0, sim.stderr
    images = json.loads(sim.stdout)["images"]
    record = run_design("--target-image", images["low"], "--target-image", images["high"])
    truth = json.loads(sim.stdout)["truth"]
    # the target is what describe measures on the reference, close to the simulator's truth
    assert record["target"]["d50_um"] == pytest.approx(truth["d50_um"], rel=0.08)
    assert record["target"]["texture"] == pytest.approx(truth["texture"], abs=0.08)


@pytest.mark.parametrize("args, message", [
    (("--target-d50-um", 3.5, "--target-texture", 0.5), "give --target-sphericity"),
    (("--target-d50-um", "nan", "--target-sphericity", 0.9, "--target-texture", 0.5), "d50_um must be finite"),
    (("--target-d50-um", -2, "--target-sphericity", 0.9, "--target-texture", 0.5), "negative"),
    (("--target-d50-um", 3, "--target-sphericity", 1.3, "--target-texture", 0.5), "exceeds 1"),
    ((*NUMBERS, "--particles", 0), "--particles must be at least 1"),
    ((*NUMBERS, "--uncertainty-weight", -1), "--uncertainty-weight must be a finite number >= 0"),
    ((*NUMBERS, "--polish", -1), "--polish must be a number of candidates >= 0"),
])
def test_bad_targets_and_budgets_exit_2_with_the_fix(args, message):
    result = invoke("design", *args, "--json")
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_a_missing_model_folder_is_a_clear_error(tmp_path):
    result = invoke("design", *NUMBERS, "--model", tmp_path / "nowhere", "--json")
    assert result.exit_code == 2
    assert "nowhere" in result.stderr and result.stdout == ""
