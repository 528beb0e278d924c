"""``morphloop surrogate build-data | train | generate | report`` end to end (the shipped model for generate and
report; a tiny freshly rendered training set for build-data and train)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from cli_runner import invoke
from models.surrogate.descriptors import DESCRIPTOR_NAMES
from models.surrogate.model import DEFAULT_MODEL_DIR, LatentDiffusionSurrogate
from simulators.conditions import DEFAULT_CONDITIONS


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdata") / "set"
    result = invoke("surrogate", "build-data", "--out", folder, "--interior", 2, "--faces", 1, "--heldout", 1,
                    "--workers", 1)
    assert result.exit_code == 0, result.stderr
    return folder


def test_build_data_writes_tiles_and_a_table_and_refuses_to_overwrite(tiny_data):
    import pandas as pd

    table = pd.read_parquet(tiny_data / "tiles.parquet")
    assert len(table) == 4 * 8  # 4 conditions x (4 low + 4 high) tiles
    assert set(table["split"]) == {"train", "heldout"}
    assert set(table["magnification"]) == {"low", "high"}
    tile = tifffile.imread(tiny_data / table["path"].iloc[0])
    assert tile.shape == (128, 128)
    result = invoke("surrogate", "build-data", "--out", tiny_data, "--interior", 2, "--faces", 1, "--heldout", 1)
    assert result.exit_code == 2 and "already there" in result.stderr


def test_log_uniform_conditions_extend_the_design_and_fill_the_low_decades(tmp_path):
    from flows.surrogate_data import LOG_UNIFORM, design_conditions

    assert LOG_UNIFORM == ("naoh_wt_pct", "nh4oh_wt_pct", "time_min")
    plain, extended = design_conditions(), design_conditions(n_log_uniform=64)
    assert extended["train"][:320] == plain["train"] and extended["heldout"] == plain["heldout"]
    extra = extended["train"][320:]
    assert len(extra) == 64 and not any(c in plain["train"] + plain["heldout"] for c in extra)
    for name, low, high in (("nh4oh_wt_pct", 0.05, 3.0), ("time_min", 30.0, 1440.0)):
        values = np.array([c[name] for c in extra])
        linear = np.array([c[name] for c in plain["train"]])
        assert low <= values.min() and values.max() <= high
        # half the log-uniform points lie below the geometric middle of the range, a tenth of the linear ones
        middle = np.sqrt(low * high)
        assert 0.4 < np.mean(values < middle) < 0.6 and np.mean(linear < middle) < 0.15
    assert np.ptp([c["ph"] for c in extra]) > 1.5  # the other conditions stay linear over their whole range
    for flag in ("--log-uniform", "--interior"):
        result = invoke("surrogate", "build-data", "--out", tmp_path / "s", flag, -1)
        assert result.exit_code == 2 and flag in result.stderr and not (tmp_path / "s").exists()


def test_train_writes_a_loadable_model_with_its_training_descriptors(tiny_data, tmp_path, prefect_harness):
    result = invoke("surrogate", "train", "--data", tiny_data, "--out", tmp_path / "m", "--minutes", 0.02)
    assert result.exit_code == 0, result.stderr
    for part in ("vae", "unet", "condition_encoder"):
        assert (tmp_path / "m" / part / "config.json").is_file()
        assert (tmp_path / "m" / part / "diffusion_pytorch_model.safetensors").is_file()
    rows = json.loads((tmp_path / "m" / "training_descriptors.json").read_text())
    assert len(rows) == 3 and all("tile_d50_um" in r and "true_texture" in r for r in rows)
    model = LatentDiffusionSurrogate.from_pretrained(tmp_path / "m")
    assert len(model.config.training_design) == 3


def test_train_without_a_training_set_is_a_clear_error(tmp_path, prefect_harness):
    result = invoke("surrogate", "train", "--data", tmp_path, "--out", tmp_path / "m", "--minutes", 0.02)
    assert result.exit_code == 2 and "build-data" in result.stderr


def _generate(tmp_path, conditions, seed=0, n=2):
    result = invoke("surrogate", "generate", "--conditions", json.dumps(conditions), "--n", n, "--out", tmp_path,
                    "--seed", seed, "--json")
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()], result


def test_generate_json_contract_and_seeds(tmp_path):
    unseen = [{**DEFAULT_CONDITIONS, "ph": 10.93, "time_min": 777.0, "temperature_c": 41.0},
              {**DEFAULT_CONDITIONS, "ph": 9.91, "naoh_wt_pct": 2.2, "atmosphere": "air"}]
    records, _ = _generate(tmp_path / "a", unseen)
    assert len(records) == 2
    for rec, cond in zip(records, unseen):
        assert rec["conditions"] == cond
        assert set(rec["images"]) == {"low", "high"} and all(len(v) == 2 for v in rec["images"].values())
        assert rec["pixel_size_um"] == {"low": pytest.approx(0.2), "high": pytest.approx(0.01)}
        assert set(rec["descriptors"]) == {"d50_um", "sphericity_mean", "sphericity_std", "texture"}
        # the shipped model has a descriptor stack: its screening prediction differs from the images' own values
        assert set(rec["predicted"]) == set(rec["descriptors"]) and rec["predicted"] != rec["descriptors"]
        tile = tifffile.imread(rec["images"]["low"][0])
        assert tile.shape == (128, 128)
    again, _ = _generate(tmp_path / "b", unseen)
    assert [r["descriptors"] for r in again] == [r["descriptors"] for r in records]
    np.testing.assert_array_equal(tifffile.imread(again[0]["images"]["high"][1]),
                                  tifffile.imread(records[0]["images"]["high"][1]))
    other, _ = _generate(tmp_path / "c", unseen, seed=1)
    assert not np.array_equal(tifffile.imread(other[0]["images"]["low"][0]),
                              tifffile.imread(records[0]["images"]["low"][0]))


@pytest.mark.parametrize("conditions, words", [
    ('{"ph": 10.5}', ["missing", "naoh_wt_pct"]),
    ('{"ph": 10.5,', ["not valid JSON"]),
    ("no/such/file.json", ["neither JSON nor an existing file"]),
])
def test_generate_bad_conditions_exit_2_with_the_reason(tmp_path, conditions, words):
    result = invoke("surrogate", "generate", "--conditions", conditions, "--out", tmp_path, "--json")
    assert result.exit_code == 2
    assert result.stdout == ""
    for word in words:
        assert word in result.stderr


def test_generate_warns_outside_the_trained_domain(tmp_path):
    records, result = _generate(tmp_path, [{**DEFAULT_CONDITIONS, "ph": 12.5}], n=1)
    assert "outside the trained range of ph" in result.stderr
    assert records[0]["domain_distance"] > 0


def test_generate_reads_a_jsonl_file(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(DEFAULT_CONDITIONS) + "\n" + json.dumps({**DEFAULT_CONDITIONS, "ph": 11.0}) + "\n")
    result = invoke("surrogate", "generate", "--conditions", path, "--n", 1, "--out", tmp_path / "o", "--json")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2


def test_report_json_has_the_figures_and_baselines(tmp_path):
    result = invoke("surrogate", "report", "--out", tmp_path, "--heldout", 3, "--unseen", 2, "--n", 2, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    # the generated images against the simulated tiles; the stack predicts full-frame measurements: not here
    assert set(report["r2"]) == {"surrogate", "surrogate before generation calibration",
                                 "nearest training condition", "GP conditions->descriptors"}
    assert set(report["r2"]["surrogate"]) == {"d50_um", "sphericity_mean", "sphericity_std", "texture"}
    assert report["n_conditions"] == 5
    # three noise seeds by default: the first gives every figure, the goals judge the mean over all three
    assert report["seeds"] == [0, 1, 2]
    assert report["r2_surrogate_by_seed"]["0"] == report["r2"]["surrogate"]
    d50 = [report["r2_surrogate_by_seed"][s]["d50_um"] for s in ("0", "1", "2")]
    assert len(set(d50)) == 3  # other noise, other tiles
    over = report["r2_surrogate_over_seeds"]["d50_um"]
    assert over["mean"] == pytest.approx(np.mean(d50)) and over["min"] == min(d50) and over["max"] == max(d50)
    assert report["goals_met"]["d50_um"] == (over["mean"] >= 0.91)
    assert report["distribution"]["diameter_wasserstein_um"] >= 0
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    assert (tmp_path / "report.md").read_text().startswith("# Surrogate fidelity")


def test_report_refuses_a_negative_noise_seed(tmp_path):
    result = invoke("surrogate", "report", "--out", tmp_path, "--heldout", 1, "--unseen", 1, "--seed", -3)
    assert result.exit_code == 2
    assert "--seed must be >= 0" in result.stderr
    assert not (tmp_path / "report.json").exists()


def test_calibrate_rewrites_only_the_config_and_refuses_a_folder_without_training_descriptors(tmp_path):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(DEFAULT_MODEL_DIR, model, ignore=shutil.ignore_patterns("report"))
    weights = (model / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    result = invoke("surrogate", "calibrate", "--model", model, "--conditions", 8, "--n", 1, "--json")
    assert result.exit_code == 0, result.stderr
    fit = json.loads(result.stdout)
    assert fit["n_conditions"] == 8 and set(fit["generation_calibration"]) == {
        "d50_um", "sphericity_mean", "sphericity_std", "texture"}
    saved = json.loads((model / "surrogate.json").read_text())["generation_calibration"]
    assert saved == fit["generation_calibration"]
    assert (model / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == weights
    (model / "training_descriptors.json").unlink()
    result = invoke("surrogate", "calibrate", "--model", model)
    assert result.exit_code == 2 and "training_descriptors.json" in result.stderr


def test_stack_adds_one_stack_per_setting_and_refuses_a_folder_without_training_descriptors(tmp_path):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(DEFAULT_MODEL_DIR, model, ignore=shutil.ignore_patterns("report"))
    before = json.loads((model / "surrogate.json").read_text())
    result = invoke("surrogate", "stack", "--model", model, "--conditions", 8, "--n", 1, "--steps", 2, "--json")
    assert result.exit_code == 0, result.stderr
    fit = json.loads(result.stdout)
    assert (fit["steps"], fit["n_images"], fit["n_conditions"]) == (2, 1, 8)
    assert all(len(w) == 3 and w[1] >= 0 and w[2] >= 0 for w in fit["weights"].values())
    saved = json.loads((model / "surrogate.json").read_text())
    settings = [(s["steps"], s["n_images"]) for s in saved["descriptor_stacks"]]
    assert settings == [(s["steps"], s["n_images"]) for s in before["descriptor_stacks"]] + [(2, 1)]
    assert saved["generation_calibration"] == before["generation_calibration"]
    result = invoke("surrogate", "stack", "--model", model, "--conditions", 8, "--n", 1, "--steps", 2, "--json")
    assert [(s["steps"], s["n_images"]) for s in json.loads((model / "surrogate.json").read_text())
            ["descriptor_stacks"]].count((2, 1)) == 1  # refitting a setting replaces its stack
    (model / "training_descriptors.json").unlink()
    result = invoke("surrogate", "stack", "--model", model)
    assert result.exit_code == 2 and "training_descriptors.json" in result.stderr


def test_shipped_model_is_small_and_pickle_free():
    files = [p for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]


def _small_copy_of_shipped_model(tmp_path, n_training: int):
    """The shipped model copied to ``tmp_path / "m"`` without its lab samples and with its first ``n_training``
    training samples (the GP refits on those in seconds, not on thousands in minutes); also returns the shipped
    training rows."""
    import shutil

    model = tmp_path / "m"
    shutil.copytree(DEFAULT_MODEL_DIR, model, ignore=shutil.ignore_patterns("report", "lab_descriptors.json"))
    shipped = json.loads((model / "training_descriptors.json").read_text())
    (model / "training_descriptors.json").write_text(json.dumps(shipped[:n_training]))
    return model, shipped


def test_measure_training_reproduces_the_samples_and_measures_them_as_the_lab_does(tmp_path):
    model, shipped = _small_copy_of_shipped_model(tmp_path, 3)
    gp_before = (model / "training_gp.safetensors").read_bytes()
    result = invoke("surrogate", "measure-training", "--model", model, "--workers", 1, "--no-restack", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n_conditions"] == 3 and summary["stacks"] == []
    rows = json.loads((model / "training_descriptors.json").read_text())
    for row, before in zip(rows, shipped[:3]):
        # the same sample as the training set's (its true D50), measured on full frames close to its truth
        assert row["true_d50_um"] == before["true_d50_um"]
        assert row["measured_d50_um"] == pytest.approx(row["true_d50_um"], rel=0.2)
        assert 0 <= row["measured_texture"] <= 1
        if "measured_d50_um" in before:  # the shipped values are reproduced exactly
            assert row["measured_d50_um"] == pytest.approx(before["measured_d50_um"], rel=1e-9)
    assert (model / "training_gp.safetensors").read_bytes() != gp_before  # refitted on 3 measured samples
    result = invoke("surrogate", "measure-training", "--model", model, "--workers", 1, "--no-restack",
                    "--data-seed", 4)
    assert result.exit_code == 2 and "another --seed" in result.stderr


def test_reuse_from_takes_the_same_samples_measurements_and_makes_only_the_others(tmp_path):
    import torch
    from safetensors.torch import load_file

    model, shipped = _small_copy_of_shipped_model(tmp_path, 4)
    rows = [{k: v for k, v in row.items() if not k.startswith("measured_")} for row in shipped[:4]]
    rows[1]["true_d50_um"] += 0.5  # not the sample the donor measured: made and measured again
    (model / "training_descriptors.json").write_text(json.dumps(rows))
    result = invoke("surrogate", "measure-training", "--model", model, "--workers", 1, "--no-restack",
                    "--reuse-from", DEFAULT_MODEL_DIR, "--json")
    # the lab makes condition 1's sample with its real D50, which no longer matches the edited truth
    assert result.exit_code == 2 and "another --seed" in result.stderr
    rows[1]["true_d50_um"] -= 0.5
    (model / "training_descriptors.json").write_text(json.dumps(rows))  # all the donor's samples
    fitted = load_file(str(model / "training_gp.safetensors"))
    result = invoke("surrogate", "measure-training", "--model", model, "--workers", 1, "--no-restack",
                    "--reuse-from", DEFAULT_MODEL_DIR, "--keep-hyperparameters", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["n_reused"] == 4
    kept = load_file(str(model / "training_gp.safetensors"))  # conditioned again, its length scales kept
    hyper = [k for k in kept if "raw_lengthscale" in k or "raw_noise" in k]
    assert len(hyper) >= 8 and all(torch.equal(kept[k], fitted[k]) for k in hyper)
    measured = json.loads((model / "training_descriptors.json").read_text())
    for row, before in zip(measured, shipped[:4]):
        assert {k: v for k, v in row.items() if k.startswith("measured_")} == \
            {k: v for k, v in before.items() if k.startswith("measured_")}

    # lab samples: the donor's first two are the same experiments; the third is made
    lab = json.loads((DEFAULT_MODEL_DIR / "lab_descriptors.json").read_text())
    donor = tmp_path / "donor"
    donor.mkdir()
    (donor / "lab_descriptors.json").write_text(json.dumps(lab[:2]))
    result = invoke("surrogate", "measure-lab", "--model", model, "--n", 3, "--workers", 1, "--no-restack",
                    "--reuse-from", donor, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["n_new"], summary["n_reused"]) == (3, 2)
    made = json.loads((model / "lab_descriptors.json").read_text())
    assert [r["sample_index"] for r in made] == [0, 1, 2]
    for row, before in zip(made, lab[:3]):  # taken or made, the same numbers as the shipped lab samples
        assert row["sample_seed"] == before["sample_seed"]
        assert row["measured_d50_um"] == pytest.approx(before["measured_d50_um"], rel=1e-9)
        assert row["measured_texture"] == pytest.approx(before["measured_texture"], rel=1e-9)

    result = invoke("surrogate", "measure-lab", "--model", model, "--n", 1, "--reuse-from", tmp_path / "none")
    assert result.exit_code == 2 and "--reuse-from needs a model folder" in result.stderr
    assert len(json.loads((model / "lab_descriptors.json").read_text())) == 3


def test_fit_gp_fits_new_hyperparameters_with_a_log_ratio_input(tmp_path):
    from safetensors.torch import load_file

    from models.surrogate.predictor import SurrogatePredictor

    model, _ = _small_copy_of_shipped_model(tmp_path, 40)
    config_before = (model / "surrogate.json").read_text()
    for bad, words in ((["texture:ph"], "DESCRIPTOR:NUMERATOR/DENOMINATOR"), (["ph/time_min"], "DESCRIPTOR:"),
                       (["texture:atmosphere/ph"], "two continuous conditions"),
                       (["colour:ph/time_min"], "unknown descriptor")):
        result = invoke("surrogate", "fit-gp", "--model", model, "--log-ratio", *bad)
        assert result.exit_code == 2 and words in result.stderr
    assert (model / "surrogate.json").read_text() == config_before  # refused before anything was rewritten

    result = invoke("surrogate", "fit-gp", "--model", model, "--fit-rows", 20, "--log-ratio",
                    "texture:naoh_wt_pct/nh4oh_wt_pct", "--no-restack", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n_samples"] == 40 and summary["fit_rows"] == 20 and summary["stacks"] == []
    assert summary["gp_log_ratios"] == {"texture": [["naoh_wt_pct", "nh4oh_wt_pct"]]}
    assert set(summary["gp_cv_r2"]) == set(DESCRIPTOR_NAMES)
    loaded = LatentDiffusionSurrogate.from_pretrained(model)
    assert loaded.config.gp_log_ratios == {"texture": [["naoh_wt_pct", "nh4oh_wt_pct"]]}
    state = load_file(str(model / "training_gp.safetensors"))
    texture = DESCRIPTOR_NAMES.index("texture")  # only texture's GP reads the ratio
    assert state[f"{texture}.covar_module.raw_lengthscale"].shape[-1] == loaded.schema.dim + 1
    assert state["0.covar_module.raw_lengthscale"].shape[-1] == loaded.schema.dim
    # a fresh process predicts with the saved GP on the new inputs
    predictor = SurrogatePredictor(loaded)
    gp = predictor.training_gp()
    assert gp.input_columns[texture] == list(range(loaded.schema.dim + 1))
    mean, _ = gp.posterior(loaded.gp_inputs([dict(DEFAULT_CONDITIONS)]))
    assert 2.0 <= mean[0, 0] <= 7.5 and 0.0 <= mean[0, texture] <= 1.0

    result = invoke("surrogate", "fit-gp", "--model", model, "--fit-rows", 20, "--log-ratio", "none",
                    "--no-restack")
    assert result.exit_code == 0, result.stderr
    assert LatentDiffusionSurrogate.from_pretrained(model).config.gp_log_ratios == {}
    state = load_file(str(model / "training_gp.safetensors"))
    assert state[f"{texture}.covar_module.raw_lengthscale"].shape[-1] == loaded.schema.dim


def test_fit_gp_reads_log_conditions_and_refuses_ones_without_a_log_scale(tmp_path):
    from models.surrogate.predictor import SurrogatePredictor

    model, _ = _small_copy_of_shipped_model(tmp_path, 40)
    config_before = (model / "surrogate.json").read_text()
    for bad, words in (("atmosphere", "not a continuous condition"), ("colour", "not a continuous condition"),
                       ("additive_ppm", "must be positive")):
        result = invoke("surrogate", "fit-gp", "--model", model, "--log-condition", bad, "--no-restack")
        assert result.exit_code == 2 and words in result.stderr, result.stderr
    assert (model / "surrogate.json").read_text() == config_before

    result = invoke("surrogate", "fit-gp", "--model", model, "--fit-rows", 20, "--log-condition", "time_min",
                    "--log-condition", "nh4oh_wt_pct", "--no-restack", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["gp_log_conditions"] == ["time_min", "nh4oh_wt_pct"]
    loaded = LatentDiffusionSurrogate.from_pretrained(model)
    assert loaded.config.gp_log_conditions == ["time_min", "nh4oh_wt_pct"]
    geometric = {**DEFAULT_CONDITIONS, "time_min": float(np.sqrt(30.0 * 1440.0))}
    time_column = loaded.schema.names.index("time_min")  # continuous conditions precede the one-hot block
    assert abs(loaded.gp_inputs([geometric])[0, time_column]) < 1e-6
    mean, _ = SurrogatePredictor(loaded).training_gp().posterior(loaded.gp_inputs([dict(DEFAULT_CONDITIONS)]))
    assert 2.0 <= mean[0, 0] <= 7.5

    result = invoke("surrogate", "fit-gp", "--model", model, "--fit-rows", 20, "--log-condition", "none",
                    "--no-restack")
    assert result.exit_code == 0, result.stderr
    assert LatentDiffusionSurrogate.from_pretrained(model).config.gp_log_conditions == []


def test_measure_lab_adds_samples_that_continue_its_design_and_the_gp_learns_from_them(tmp_path):
    from flows.surrogate_data import lab_design, lab_sample_seed
    from models.surrogate.predictor import SurrogatePredictor

    model, _ = _small_copy_of_shipped_model(tmp_path, 10)
    shipped = json.loads((DEFAULT_MODEL_DIR / "lab_descriptors.json").read_text())
    assert len(shipped) >= 960
    gp_before = (model / "training_gp.safetensors").read_bytes()
    result = invoke("surrogate", "measure-lab", "--model", model, "--n", 2, "--workers", 1, "--no-restack", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["n_new"], summary["n_lab_samples"], summary["n_training_samples"]) == (2, 2, 10)
    assert summary["stacks"] == [] and set(summary["gp_cv_r2"]) == set(DESCRIPTOR_NAMES)
    result = invoke("surrogate", "measure-lab", "--model", model, "--n", 1, "--workers", 1, "--no-restack", "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads((model / "lab_descriptors.json").read_text())
    assert [r["sample_index"] for r in rows] == [0, 1, 2]  # the second call continued the design
    for row, conditions in zip(rows, lab_design(0, 3)):
        assert {k: row[f"cond_{k}"] for k in conditions} == conditions
        assert row["sample_seed"] == lab_sample_seed(row["sample_index"])
        assert 2.0 <= row["measured_d50_um"] <= 7.5 and 0 <= row["measured_texture"] <= 1
    for row, before in zip(rows, shipped):  # the shipped lab samples are reproduced exactly
        assert row["measured_d50_um"] == pytest.approx(before["measured_d50_um"], rel=1e-9)
        assert row["measured_texture"] == pytest.approx(before["measured_texture"], rel=1e-9)
    assert (model / "training_gp.safetensors").read_bytes() != gp_before
    conditions, values = SurrogatePredictor.from_pretrained(model).training_examples()
    assert len(conditions) == 13
    np.testing.assert_allclose(values[10:], [[r[f"measured_{k}"] for k in DESCRIPTOR_NAMES] for r in rows], rtol=1e-12)

    # --keep-hyperparameters: the GP conditions on the fourth sample with the length scales and noise it had
    import torch
    from safetensors.torch import load_file

    fitted = load_file(str(model / "training_gp.safetensors"))
    result = invoke("surrogate", "measure-lab", "--model", model, "--n", 1, "--workers", 1, "--no-restack",
                    "--keep-hyperparameters", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["n_lab_samples"] == 4
    kept = load_file(str(model / "training_gp.safetensors"))
    assert kept.keys() == fitted.keys()
    hyper = [k for k in kept if "raw_lengthscale" in k or "raw_noise" in k]
    assert len(hyper) >= 8 and all(torch.equal(kept[k], fitted[k]) for k in hyper)
    assert any(not torch.equal(kept[k], fitted[k]) for k in kept if "outcome_transform.means" in k)  # 14 samples
    assert len(SurrogatePredictor.from_pretrained(model).training_examples()[0]) == 14
    (model / "training_gp.safetensors").unlink()
    result = invoke("surrogate", "measure-lab", "--model", model, "--n", 1, "--keep-hyperparameters")
    assert result.exit_code == 2 and "without --keep-hyperparameters" in result.stderr
    assert len(json.loads((model / "lab_descriptors.json").read_text())) == 4  # refused before making samples

    result = invoke("surrogate", "measure-lab", "--model", model, "--n", 0)
    assert result.exit_code == 2 and "--n must be at least 1" in result.stderr
    (model / "training_descriptors.json").unlink()
    result = invoke("surrogate", "measure-lab", "--model", model, "--n", 1)
    assert result.exit_code == 2 and "training_descriptors.json" in result.stderr
