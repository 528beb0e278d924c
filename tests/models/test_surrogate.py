"""The diffusion surrogate's parts on tiny configurations: encoding, sampling, persistence, training, metrics."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from models.surrogate.conditioning import ConditionInputError, ConditionSchema, OutOfDomainWarning
from models.surrogate.descriptors import describe_high_tiles, describe_low_tiles, fit_affine
from models.surrogate.fidelity import gp_predict, nearest_neighbour_rms, r2_score
from models.surrogate.model import LatentDiffusionSurrogate, SurrogateConfig, SurrogateModelError
from models.surrogate.training import TileSet, TrainingBudget, fine_tune, train_from_scratch

SCHEMA = [{"name": "ph", "kind": "continuous", "low": 9.5, "high": 11.5},
          {"name": "time_min", "kind": "continuous", "low": 30.0, "high": 1440.0, "log": True},
          {"name": "atmosphere", "kind": "categorical", "choices": ["n2", "sealed", "air"]}]
CONDS = [{"ph": 9.5 + 0.25 * i, "time_min": 30.0 * (1 + i), "atmosphere": ("n2", "sealed", "air")[i % 3]}
         for i in range(8)]


def tiny_config(**kw) -> SurrogateConfig:
    return SurrogateConfig(conditions=SCHEMA, tile_px=32, vae_channels=[8, 16], unet_channels=[16, 32],
                           embed_hidden=16, sampling_steps=3, **kw)


def tiny_tiles(n: int = 16, seed: int = 0) -> TileSet:
    """Discs whose radius grows with pH: a conditional structure a model can learn."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    tiles, conds, mags = [], [], []
    for i in range(n):
        c = CONDS[i % len(CONDS)]
        r = 4 + 4 * (c["ph"] - 9.5)
        tiles.append(((yy - 16) ** 2 + (xx - 16) ** 2 < r**2).astype(np.float32) * 0.8 + rng.normal(0, 0.02, (32, 32)))
        conds.append(c)
        mags.append("low" if i % 2 == 0 else "high")
    return TileSet(np.clip(np.stack(tiles), 0, 1).astype(np.float32), conds, mags)


def test_schema_encodes_ranges_to_unit_interval_and_one_hot():
    schema = ConditionSchema(SCHEMA)
    enc = schema.encode([{"ph": 9.5, "time_min": 1440.0, "atmosphere": "air"}, {"ph": 10.5, "time_min": 30.0,
                                                                                 "atmosphere": "n2"}])
    assert schema.dim == 5
    np.testing.assert_allclose(enc[0], [-1, 1, 0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(enc[1], [0, -1, 1, 0, 0], atol=1e-6)


def test_schema_encodes_log_ratios_over_the_range_their_conditions_allow():
    schema = ConditionSchema(SCHEMA)
    extremes = [{"ph": 9.5, "time_min": 1440.0, "atmosphere": "n2"}, {"ph": 11.5, "time_min": 30.0, "atmosphere": "n2"},
                {"ph": 10.0, "time_min": 100.0, "atmosphere": "n2"}]
    out = schema.encode_log_ratios(extremes, [["ph", "time_min"]])
    assert out.shape == (3, 1)
    lo, hi = np.log(9.5 / 1440), np.log(11.5 / 30)
    np.testing.assert_allclose(out[:, 0], [-1, 1, 2 * (np.log(10 / 100) - lo) / (hi - lo) - 1], atol=1e-6)
    for pair in (["ph"], ["ph", "atmosphere"], ["ph", "colour"]):
        with pytest.raises(ValueError, match="two continuous conditions"):
            schema.encode_log_ratios(extremes, [pair])
    model = LatentDiffusionSurrogate(tiny_config(gp_log_ratios={"texture": [["ph", "time_min"]],
                                                                "d50_um": [["ph", "time_min"]]}))
    np.testing.assert_allclose(model.gp_inputs(extremes), np.column_stack([schema.encode(extremes), out]))
    columns = model.gp_input_columns()  # DESCRIPTOR_NAMES order: d50, sphericity mean and std, texture
    assert columns == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5]]


def test_gp_reads_log_conditions_over_their_log_range_while_the_denoiser_keeps_the_linear_scale():
    linear = [{**spec, "log": False} for spec in SCHEMA]
    schema = ConditionSchema(linear)
    conditions = [{"ph": 10.0, "time_min": t, "atmosphere": "n2"} for t in (30.0, float(np.sqrt(30 * 1440)), 1440.0)]
    logged = schema.with_log_scale(["time_min"]).encode(conditions)
    np.testing.assert_allclose(logged[:, 1], [-1, 0, 1], atol=1e-6)  # the geometric mid-range maps to 0
    np.testing.assert_allclose(np.delete(logged, 1, axis=1), np.delete(schema.encode(conditions), 1, axis=1))
    model = LatentDiffusionSurrogate(SurrogateConfig(**{**vars(tiny_config()), "conditions": linear,
                                                        "gp_log_conditions": ["time_min"]}))
    np.testing.assert_allclose(model.gp_inputs(conditions), logged)
    np.testing.assert_allclose(model.condition_vectors(conditions, "low")[:, :schema.dim], schema.encode(conditions))
    with pytest.raises(ValueError, match="not a continuous condition; choose from ph, time_min"):
        schema.with_log_scale(["atmosphere"])
    with pytest.raises(ValueError, match="must be positive"):
        ConditionSchema([{"name": "additive", "kind": "continuous", "low": 0.0, "high": 5.0}]).with_log_scale(
            ["additive"])


@pytest.mark.parametrize("bad, words", [
    ({"ph": 10.0, "atmosphere": "n2"}, ["missing", "time_min"]),
    ({"ph": 10.0, "time_min": 60.0, "atmosphere": "n2", "colour": 1}, ["unknown", "colour"]),
    ({"ph": "high", "time_min": 60.0, "atmosphere": "n2"}, ["ph", "finite number"]),
    ({"ph": 10.0, "time_min": 60.0, "atmosphere": "argon"}, ["atmosphere", "argon"]),
])
def test_schema_errors_name_the_field(bad, words):
    with pytest.raises(ConditionInputError) as info:
        ConditionSchema(SCHEMA).encode([bad])
    for word in words:
        assert word in str(info.value)


def test_out_of_domain_conditions_warn_with_the_distance():
    model = LatentDiffusionSurrogate(tiny_config(training_design=ConditionSchema(SCHEMA).encode(CONDS).tolist()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.domain_distances([CONDS[1]])
        assert not [w for w in caught if issubclass(w.category, OutOfDomainWarning)]
        dist = model.domain_distances([{"ph": 13.0, "time_min": 60.0, "atmosphere": "n2"}])
    messages = [str(w.message) for w in caught if issubclass(w.category, OutOfDomainWarning)]
    assert messages and "ph" in messages[0] and "distance" in messages[0]
    assert dist[0] > 0.5


def test_generation_is_deterministic_per_seed_and_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = LatentDiffusionSurrogate(tiny_config())
    a = model.generate(CONDS[:3], "low", 2, seed=5)
    assert a.shape == (3, 2, 32, 32) and a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, model.generate(CONDS[:3], "low", 2, seed=5))
    assert np.abs(a - model.generate(CONDS[:3], "low", 2, seed=6)).max() > 1e-3
    # the same noise for every condition: image k differs between conditions only through the condition
    assert np.abs(a[0, 0] - model.generate(CONDS[:1], "low", 1, seed=5)[0, 0]).max() < 1e-5
    model.save_pretrained(tmp_path / "m")
    loaded = LatentDiffusionSurrogate.from_pretrained(tmp_path / "m")
    np.testing.assert_array_equal(a, loaded.generate(CONDS[:3], "low", 2, seed=5))
    assert not list((tmp_path / "m").rglob("*.bin")) and not list((tmp_path / "m").rglob("*.pt"))


def test_bfloat16_sampling_is_deterministic_close_to_float32_and_auto_follows_the_cpu(monkeypatch):
    from models import precision
    from models.surrogate.predictor import SurrogatePredictor

    torch.manual_seed(0)
    model = LatentDiffusionSurrogate(tiny_config())
    full = model.generate(CONDS[:3], "high", 2, seed=5, precision="float32")
    fast = model.generate(CONDS[:3], "high", 2, seed=5, precision="bfloat16")
    assert fast.dtype == np.float32 and fast.shape == full.shape and fast.min() >= 0 and fast.max() <= 1
    np.testing.assert_array_equal(fast, model.generate(CONDS[:3], "high", 2, seed=5, precision="bfloat16"))
    assert 0 < np.abs(fast - full).mean() < 0.02  # bfloat16 kernels ran, and they are close
    for native, expected in ((True, fast), (False, full)):  # auto: bfloat16 only where the CPU has it
        monkeypatch.setattr(precision, "native_bfloat16", lambda native=native: native)
        np.testing.assert_array_equal(model.generate(CONDS[:3], "high", 2, seed=5), expected)
    asked = []
    generate = model.generate
    model.generate = lambda *a, **k: asked.append(k["precision"]) or generate(*a, **k)
    SurrogatePredictor(model, precision="bfloat16").generate(CONDS[:1], 1, 0, magnifications=("high",))
    SurrogatePredictor(model).generate(CONDS[:1], 1, 0, magnifications=("high",))
    assert asked == ["bfloat16", "auto"]
    with pytest.raises(ValueError, match="precision must be one of"):
        SurrogatePredictor(model, precision="half")


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_decoding_in_smaller_calls_gives_the_same_tiles(precision):
    from models.surrogate.predictor import SurrogatePredictor

    torch.manual_seed(0)
    model = LatentDiffusionSurrogate(tiny_config())
    calls = []
    decode = model.vae.decode
    model.vae.decode = lambda z, **k: calls.append(len(z)) or decode(z, **k)
    whole = model.generate(CONDS[:5], "low", 2, seed=3, precision=precision, decode_batch=64)
    assert calls == [10]
    calls.clear()
    chunked = model.generate(CONDS[:5], "low", 2, seed=3, precision=precision, decode_batch=4)
    assert calls == [4, 4, 2]
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    calls.clear()
    model.generate(CONDS[:5], "low", 2, seed=3, precision=precision, decode_batch=4, batch_size=6)
    assert calls == [4, 2, 4]  # chunks of each denoiser batch (6, then 4)
    with pytest.raises(ValueError, match="decode_batch must be >= 1"):
        model.generate(CONDS[:1], "low", 1, decode_batch=0)
    with pytest.raises(ValueError, match="decode_batch must be >= 1"):
        SurrogatePredictor(model, decode_batch=0)


def test_high_magnification_tiles_can_take_their_own_steps_and_count():
    from models.surrogate.predictor import SurrogatePredictor

    torch.manual_seed(0)
    model = LatentDiffusionSurrogate(tiny_config())
    default = SurrogatePredictor(model, steps=3).generate(CONDS[:2], 2, seed=4)
    tiles = SurrogatePredictor(model, steps=3, high_steps=2, high_images=1).generate(CONDS[:2], 2, seed=4)
    assert tiles["low"].shape == (2, 2, 32, 32) and tiles["high"].shape == (2, 1, 32, 32)
    np.testing.assert_array_equal(tiles["low"], default["low"])  # 3k× untouched
    np.testing.assert_array_equal(tiles["high"], model.generate(CONDS[:2], "high", 1, seed=4, steps=2))
    assert np.abs(tiles["high"][:, 0] - default["high"][:, 0]).max() > 1e-3  # fewer steps: other tiles
    predictions = SurrogatePredictor(model, steps=3, high_images=1, stack=False).predict(CONDS[:2], n_images=2)
    assert [np.isnan(p.spread["texture"]) for p in predictions] == [True, True]  # one tile: no spread across tiles
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="high_images must be a whole number >= 1"):
            SurrogatePredictor(model, high_images=bad)
    with pytest.raises(ValueError, match="high_steps must be a whole number >= 1"):
        SurrogatePredictor(model, high_steps=-2)


def test_loading_a_folder_that_is_not_a_model_says_how_to_make_one(tmp_path):
    with pytest.raises(SurrogateModelError, match="surrogate train"):
        LatentDiffusionSurrogate.from_pretrained(tmp_path)


def test_training_lowers_the_losses_and_resume_continues_from_the_checkpoint(tmp_path):
    data = tiny_tiles(32)
    budget = TrainingBudget(vae_minutes=5, unet_minutes=5, vae_steps=40, unet_steps=4, batch_size=8,
                            checkpoint_every=2, vae_lr=3e-3)
    model, summary = train_from_scratch(tiny_config(), data, budget, checkpoint_dir=tmp_path / "ckpt")
    assert summary["autoencoder"]["steps"] == 40 and summary["denoiser"]["steps"] == 4
    assert model.config.latent_scale > 0
    state = (tmp_path / "ckpt" / "training_state.json").read_text()
    assert '"unet-done"' in state
    # resuming a finished run trains nothing more
    again, summary2 = train_from_scratch(tiny_config(), data, budget, checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert "denoiser" not in summary2 and "autoencoder" not in summary2
    # the autoencoder learned: reconstructions beat a constant image
    with torch.no_grad():
        x = torch.from_numpy(data.tiles[:8] * 2 - 1)[:, None]
        recon = model.vae.decode(model.vae.encode(x).latent_dist.mean).sample
    assert float((recon - x).abs().mean()) < float((x - x.mean()).abs().mean())


def test_resume_of_an_interrupted_denoiser_phase_keeps_its_step_count(tmp_path):
    data = tiny_tiles(16)
    first = TrainingBudget(vae_steps=2, unet_steps=3, batch_size=4, checkpoint_every=2)
    train_from_scratch(tiny_config(), data, first, checkpoint_dir=tmp_path / "ckpt")
    # simulate a kill after the step-2 checkpoint of the denoiser: rewrite the phase as unfinished
    import json
    path = tmp_path / "ckpt" / "training_state.json"
    state = json.loads(path.read_text())
    state.update(phase="unet", step=2, losses=state["losses"][:2])
    path.write_text(json.dumps(state))
    _, summary = train_from_scratch(tiny_config(), data, TrainingBudget(vae_steps=2, unet_steps=5, batch_size=4,
                                                                        checkpoint_every=2),
                                    checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert "autoencoder" not in summary          # the finished autoencoder is not retrained
    assert summary["denoiser"]["steps"] == 5     # 2 restored + 3 new


def test_fine_tune_moves_the_denoiser_and_keeps_the_autoencoder():
    data = tiny_tiles(16)
    model, _ = train_from_scratch(tiny_config(), data, TrainingBudget(vae_steps=2, unet_steps=2, batch_size=4))
    vae_before = {k: v.clone() for k, v in model.vae.state_dict().items()}
    unet_before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    losses = fine_tune(model, tiny_tiles(4, seed=1), replay=data, max_steps=3, minutes=5)
    assert len(losses) == 3
    assert all(torch.equal(vae_before[k], v) for k, v in model.vae.state_dict().items())
    assert any(not torch.equal(unet_before[k], v) for k, v in model.unet.state_dict().items())


def test_tile_descriptors_follow_the_virtual_lab():
    from flows.surrogate_data import render_condition_tiles
    from simulators.conditions import DEFAULT_CONDITIONS

    small = {**DEFAULT_CONDITIONS, "ph": 11.3, "time_min": 60.0}
    large = {**DEFAULT_CONDITIONS, "ph": 9.7, "time_min": 1400.0}
    d50 = {}
    for name, cond in (("small", small), ("large", large)):
        tiles, px, truth = render_condition_tiles(cond, sample_seed=3)
        low = describe_low_tiles(tiles["low"], px["low"])
        d50[name] = (low["d50_um"], truth["d50_um"])
        assert low["n_particles"] >= 5
        assert 0.5 < low["sphericity_mean"] <= 1.0
        tex = describe_high_tiles(tiles["high"], px["high"])["texture"]
        assert abs(tex - truth["texture"]) < 0.25
    assert d50["large"][1] > d50["small"][1]
    assert d50["large"][0] > d50["small"][0]


def test_metrics():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert r2_score(y, y) == pytest.approx(1.0)
    assert r2_score(y, np.full(4, y.mean())) == pytest.approx(0.0)
    assert fit_affine(np.array([1.0, 2.0, 3.0]), np.array([3.0, 5.0, 7.0])) == pytest.approx([1.0, 2.0])
    tiles = np.random.default_rng(0).random((5, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(nearest_neighbour_rms(tiles, tiles), 0.0, atol=1e-3)
    assert nearest_neighbour_rms(tiles + 0.5, tiles).min() > 0.4
    x = np.linspace(0, 1, 12)[:, None]
    pred = gp_predict(x, np.column_stack([2 * x[:, 0] + 1]), np.array([[0.5]]))
    assert pred[0, 0] == pytest.approx(2.0, abs=0.1)


def test_warm_start_keeps_the_autoencoder_and_trains_the_denoiser_for_the_whole_budget(tmp_path):
    data = tiny_tiles(16)
    model, _ = train_from_scratch(tiny_config(), data, TrainingBudget(vae_steps=2, unet_steps=2, batch_size=4))
    # what the first model had fitted: a stack and a calibration on its images, a GP state, lab samples
    model.config.descriptor_stacks = [{"steps": 6, "n_images": 2, "weights": {}}]
    model.config.generation_calibration = {"d50_um": [0.1, 1.0]}
    model.training_gp_state = {"0.covar_module.raw_lengthscale": torch.tensor([[0.3]]),
                               "0.outcome_transform.means": torch.tensor([[2.0]])}
    model.training_descriptors = pd.DataFrame({"condition_id": [0], "measured_d50_um": [3.0]})
    model.lab_descriptors = pd.DataFrame({"sample_index": [0], "measured_d50_um": [3.1]})
    model.save_pretrained(tmp_path / "first")
    budget = TrainingBudget(vae_steps=50, unet_steps=3, batch_size=4, checkpoint_every=2)
    warm, summary = train_from_scratch(tiny_config(), data, budget, checkpoint_dir=tmp_path / "ckpt",
                                       init_from=tmp_path / "first")
    assert summary["initialised_from"] == str(tmp_path / "first")
    assert "autoencoder" not in summary and summary["denoiser"]["steps"] == 3
    first = LatentDiffusionSurrogate.from_pretrained(tmp_path / "first")
    assert all(torch.equal(first.vae.state_dict()[k], v) for k, v in warm.vae.state_dict().items())
    assert any(not torch.equal(first.unet.state_dict()[k], v) for k, v in warm.unet.state_dict().items())
    assert warm.config.latent_scale == first.config.latent_scale
    # fits on the old denoiser's images and the old rows' scaling are dropped; the lab's measurements stay
    assert warm.config.descriptor_stacks == [] and warm.config.generation_calibration == {}
    assert set(warm.training_gp_state) == {"0.covar_module.raw_lengthscale"}
    assert warm.lab_descriptors["measured_d50_um"].tolist() == [3.1]


@pytest.mark.parametrize("weight, low_share", [(1.0, (0.35, 0.65)), (9.0, (0.8, 1.0))])
def test_low_magnification_weight_sets_how_often_low_tiles_are_drawn(monkeypatch, weight, low_share):
    import models.surrogate.training as training

    data = tiny_tiles(16)  # half low, half high
    model, _ = train_from_scratch(tiny_config(), data, TrainingBudget(vae_steps=1, unet_steps=1, batch_size=4))
    drawn = []
    real_step = training._denoiser_step

    def recording_step(model, latents, cond, *args):
        drawn.extend(cond[:, -2].tolist())  # the magnification one-hot's "low" column
        return real_step(model, latents, cond, *args)

    monkeypatch.setattr(training, "_denoiser_step", recording_step)
    training.train_denoiser(model, data, TrainingBudget(unet_steps=20, batch_size=8, low_magnification_weight=weight),
                            phase="weighted")
    assert len(drawn) == 160
    assert low_share[0] <= np.mean(drawn) <= low_share[1]


def test_guidance_can_differ_per_magnification_and_old_configs_still_load(tmp_path):
    torch.manual_seed(0)
    model = LatentDiffusionSurrogate(tiny_config(guidance_scale={"low": 5.0, "high": 1.5}))
    assert model.config.guidance_for("low") == 5.0 and model.config.guidance_for("high") == 1.5
    default = model.generate(CONDS[:2], "low", 1, seed=3)
    np.testing.assert_array_equal(default, model.generate(CONDS[:2], "low", 1, seed=3, guidance_scale=5.0))
    assert np.abs(default - model.generate(CONDS[:2], "low", 1, seed=3, guidance_scale=1.5)).max() > 1e-4
    model.save_pretrained(tmp_path / "m")
    assert LatentDiffusionSurrogate.from_pretrained(tmp_path / "m").config.guidance_for("low") == 5.0
    old = SurrogateConfig.from_json({**tiny_config().to_json(), "guidance_scale": 2.0})
    assert old.guidance_for("low") == old.guidance_for("high") == 2.0


def test_guidance_interval_guides_only_the_first_steps_with_one_denoiser_pass_after(tmp_path):
    from models.surrogate.model import guided_steps

    assert [guided_steps(s, 0.4) for s in (1, 4, 6, 10)] == [1, 1, 2, 4] and guided_steps(6, 1.0) == 6
    torch.manual_seed(0)
    config = tiny_config(guidance_scale={"low": 4.0, "high": 1.0}, guidance_interval={"low": 0.4, "high": 1.0})
    config.sampling_steps = 5
    model = LatentDiffusionSurrogate(config)
    batches = []
    unet_forward = model.unet.forward
    model.unet.forward = lambda x, *a, **k: batches.append(len(x)) or unet_forward(x, *a, **k)
    limited = model.generate(CONDS[:3], "low", 2, seed=4)
    assert batches == [12, 12, 6, 6, 6]  # 3 conditions x 2 tiles: guided steps run them with the null condition
    assert model.denoiser_passes("low") == sum(batches) / 6 == 7  # what the screening FLOP budget counts
    batches.clear()
    every = model.generate(CONDS[:3], "low", 2, seed=4, guidance_interval=1.0)
    assert batches == [12] * 5 and np.abs(limited - every).max() > 1e-4
    assert model.denoiser_passes("low", guidance_interval=1.0) == 10
    batches.clear()
    model.generate(CONDS[:3], "high", 2, seed=4)  # guidance 1: a single pass whatever the interval
    assert batches == [6] * 5 and model.denoiser_passes("high") == 5
    assert model.denoiser_passes("low", steps=10, guidance_scale=1.0) == 10
    np.testing.assert_array_equal(limited, model.generate(CONDS[:3], "low", 2, seed=4, guidance_interval=0.4))
    model.save_pretrained(tmp_path / "m")
    loaded = LatentDiffusionSurrogate.from_pretrained(tmp_path / "m")
    assert loaded.config.guidance_interval_for("low") == 0.4
    np.testing.assert_array_equal(limited, loaded.generate(CONDS[:3], "low", 2, seed=4))
    assert SurrogateConfig.from_json({k: v for k, v in tiny_config().to_json().items()
                                      if k != "guidance_interval"}).guidance_interval_for("low") == 1.0
    # a lone tile in an unguided pass gets the same bfloat16 kernels as one in a batch
    single = model.generate(CONDS[:1], "low", 1, seed=4, precision="bfloat16")
    batched = model.generate(CONDS[:3], "low", 2, seed=4, precision="bfloat16")
    assert np.abs(single[0, 0] - batched[0, 0]).max() < 1e-5  # 0.011 without the padding
    for bad in (0.0, 1.5, float("nan"), "half"):
        with pytest.raises(ValueError, match=r"guidance_interval must be a share of the solver steps in \(0, 1\]"):
            model.generate(CONDS[:1], "low", 1, seed=0, guidance_interval=bad)
