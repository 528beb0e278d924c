"""The ControlNet surrogate on a tiny randomly initialised Stable Diffusion base saved in the diffusers layout."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from models.surrogate.controlnet import (ConditionControlMap, ConditionTokens, ControlNetSurrogate,
                                         ControlNetSurrogateConfig)
from models.surrogate.model import SurrogateModelError

SCHEMA = [{"name": "ph", "kind": "continuous", "low": 9.5, "high": 11.5},
          {"name": "atmosphere", "kind": "categorical", "choices": ["n2", "air"]}]
CONDS = [{"ph": 10.0, "atmosphere": "n2"}, {"ph": 11.0, "atmosphere": "air"}]
TINY = {"n_tokens": 2, "hidden": 16, "sampling_steps": 3, "guidance_scale": 2.0}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny networks are many tiny ops: on 2 busy cores one thread was ~40x faster than two (measured)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    """A tiny SD base: UNet on 4 x 8 x 8 latents, a VAE with scale factor 2 (16-px RGB images), DDPM schedule."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("sd")
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                         attention_head_dim=4, norm_num_groups=8).save_pretrained(root / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                  layers_per_block=1, norm_num_groups=8, sample_size=16).save_pretrained(root / "vae")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type="epsilon").save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="module")
def surrogate(sd_dir):
    torch.manual_seed(1)
    return ControlNetSurrogate.from_stable_diffusion(sd_dir, SCHEMA, **TINY)


def test_loads_a_local_stable_diffusion_checkpoint(surrogate, sd_dir):
    cfg = surrogate.config
    assert cfg.control_px == 16 and surrogate.latent_px == 8
    assert cfg.latent_scale == pytest.approx(surrogate.vae.config.scaling_factor)
    assert cfg.sd_dir == str(sd_dir.resolve())
    assert isinstance(surrogate.tokens, ConditionTokens) and isinstance(surrogate.control_map, ConditionControlMap)
    vec = torch.from_numpy(surrogate.schema.encode(CONDS))
    assert surrogate.tokens(vec).shape == (2, 2, 16)
    control = surrogate.control_map(vec)
    assert control.shape == (2, 3, 16, 16) and control.abs().max() <= 1
    assert not any(p.requires_grad for p in surrogate.unet.parameters())
    assert ControlNetSurrogateConfig.from_json(cfg.to_json()) == cfg


def test_missing_subfolder_or_checkpoint_gives_a_clear_error(sd_dir, tmp_path):
    broken = tmp_path / "sd"
    shutil.copytree(sd_dir, broken, ignore=lambda d, names: ["vae"] if d == str(sd_dir) else [])
    with pytest.raises(FileNotFoundError, match=r"no vae/ subfolder.*diffusers folder layout"):
        ControlNetSurrogate.from_stable_diffusion(broken, SCHEMA)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ControlNetSurrogate.from_stable_diffusion(tmp_path / "nowhere", SCHEMA)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="single file"):
        ControlNetSurrogate.from_stable_diffusion(tmp_path / "model.safetensors", SCHEMA)
    with pytest.raises(SurrogateModelError, match="controlnet_surrogate.json"):
        ControlNetSurrogate.from_pretrained(tmp_path)


def test_generate_shape_range_and_seeds(surrogate):
    a = surrogate.generate(CONDS, n_per_condition=2, seed=3)
    assert a.shape == (2, 2, 16, 16) and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, surrogate.generate(surrogate.schema.encode(CONDS), n_per_condition=2, seed=3))
    assert not np.array_equal(a, surrogate.generate(CONDS, n_per_condition=2, seed=4))
    assert not np.array_equal(a[0], a[1])  # same noise, different conditions


def test_training_moves_controlnet_not_unet_and_round_trips(sd_dir, tmp_path):
    torch.manual_seed(2)
    model = ControlNetSurrogate.from_stable_diffusion(sd_dir, SCHEMA, condition_dropout=0.5, **TINY)
    unet_before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    control_before = {k: v.clone() for k, v in model.controlnet.state_dict().items()}
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, 16, 16, generator=g) * 2 - 1
    cond = torch.from_numpy(model.schema.encode(CONDS))
    for _ in range(2):
        loss = model.training_step(images, cond, generator=g)
        assert loss.ndim == 0 and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(v, unet_before[k]) for k, v in model.unet.state_dict().items())
    assert any(not torch.equal(v, control_before[k]) for k, v in model.controlnet.state_dict().items())
    with pytest.raises(ValueError, match="16 x 16"):
        model.training_step(torch.zeros(1, 1, 8, 8), cond[:1])

    out = model.save_pretrained(tmp_path / "model")
    assert {p.name for p in out.iterdir()} == {"controlnet", "condition_tokens", "control_map",
                                                "controlnet_surrogate.json"}
    loaded = ControlNetSurrogate.from_pretrained(out)
    np.testing.assert_array_equal(model.generate(CONDS, n_per_condition=1, seed=7),
                                  loaded.generate(CONDS, n_per_condition=1, seed=7))
    # a saved ControlNet can also seed a new surrogate
    seeded = ControlNetSurrogate.from_stable_diffusion(sd_dir, SCHEMA, controlnet_dir=out / "controlnet", **TINY)
    assert all(torch.equal(v, loaded.controlnet.state_dict()[k]) for k, v in seeded.controlnet.state_dict().items())
