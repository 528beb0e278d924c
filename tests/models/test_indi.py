"""InDI (paper 001): network, sampler, loss, registration, save/load, training and resume.

Self-contained synthetic data: HQ = sharp disks (two phases) + low noise; LQ = the same scene blurred,
2x block-averaged and strongly noised.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from models.indi import (CONFIG_FILE, STATE_FILE, WEIGHTS_FILE, InDIConfig, InDIModel, InDIModelError, InDIUNet,
                         count_parameters, indi_loss, register_lq_to_hq, train_indi, upsample_lq)
from models.indi_unet import indi_sample

SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "models" / "weights" / "indi"
TINY = dict(base_channels=4, depth=2, time_embedding_dim=8, dilations=(1, 2))


def disks_pair(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lq, hq)``: ``size/2``-square noisy blurred LQ and ``size``-square sharp HQ of the same disks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    clean = np.full((size, size), 0.2, np.float32)
    for _ in range(size * size // 180):
        cy, cx = rng.uniform(0, size, 2)
        clean[(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(2.0, 9.0) ** 2] = rng.choice([0.6, 1.0])
    hq = clean + rng.normal(0, 0.02, clean.shape)
    lq = ndi.gaussian_filter(clean, 1.2).reshape(size // 2, 2, size // 2, 2).mean(axis=(1, 3))
    lq = lq + rng.normal(0, 0.15, lq.shape)
    return lq.astype(np.float32), hq.astype(np.float32)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 0.8) -> float:
    return float(10 * np.log10(data_range ** 2 / np.mean((np.asarray(a) - b) ** 2)))


def randomised(net: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Non-zero weights everywhere (the residual branches and head start at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return net.eval()


def tiny_model(seed: int = 0) -> InDIModel:
    cfg = InDIConfig(**TINY, lq_low=0.0, lq_high=1.0, hq_low=0.2, hq_high=1.0, steps=3)
    return InDIModel(randomised(InDIUNet(cfg), seed, 0.2), cfg)


# ------------------------------------------------------------------------------------------------ network
def test_unet_output_shape_and_tanh_range():
    net = randomised(InDIUNet(**TINY), scale=1.0)
    x = torch.randn(3, 1, 32, 48) * 5
    with torch.no_grad():
        out = net(x, torch.tensor([0.0, 0.5, 1.0]))
    assert out.shape == x.shape
    assert out.abs().max() <= 1.0 and out.abs().max() > 0.9  # saturating tanh, not a clipped identity
    with pytest.raises(ValueError, match="multiples"):
        net(torch.zeros(1, 1, 30, 32), torch.ones(1))


def test_untrained_unet_is_the_identity_and_time_embedding_matters():
    x = torch.rand(2, 1, 32, 32) * 1.6 - 0.8
    with torch.no_grad():
        assert torch.allclose(InDIUNet(**TINY)(x, torch.ones(2)), x, atol=1e-5)  # zero-initialised residual
        net = randomised(InDIUNet(**TINY))
        early, late = net(x, torch.full((2,), 0.1)), net(x, torch.full((2,), 0.9))
    assert (early - late).abs().mean() > 1e-3


def test_parameter_count_is_small_enough_for_cpu():
    n = count_parameters(InDIUNet(InDIConfig()))
    assert 100_000 < n < 2_000_000
    assert count_parameters(InDIUNet(**TINY)) < n


# ------------------------------------------------------------------------------------------------ sampler
class _Constant(torch.nn.Module):
    """Stub network that always predicts the same clean image and records the times it was called with."""

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        self.x, self.times = x, []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.times.append(float(t[0]))
        return self.x.expand_as(x_t)


@pytest.mark.parametrize("steps", [1, 2, 3, 8])
def test_sampler_reaches_a_perfect_prediction_exactly(steps):
    x, y = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    stub = _Constant(x)
    out = indi_sample(stub, y, steps)
    assert torch.allclose(out, x, atol=1e-6)
    assert stub.times == pytest.approx([1.0 - k / steps for k in range(steps)])


def test_sampler_interpolates_as_indi():
    """Two steps by hand: x_0.5 = 0.5 F(y, 1) + 0.5 y; x_0 = F(x_0.5, 0.5)."""
    y = torch.rand(1, 1, 8, 8)

    class Half(torch.nn.Module):
        def forward(self, x_t, t):
            return 0.5 * x_t + t[:, None, None, None]

    x_half = 0.5 * (0.5 * y + 1.0) + 0.5 * y
    assert torch.allclose(indi_sample(Half(), y, 2), 0.5 * x_half + 0.5, atol=1e-6)


def test_one_step_enhance_is_plain_regression_at_t1():
    model = tiny_model()
    lq = np.random.default_rng(1).random((2, 20, 24)).astype(np.float32)
    with torch.no_grad():
        y = torch.from_numpy(model.to_network_input(lq)).reshape(2, 1, 40, 48)
        expected = model.from_network_output(model.network(y, torch.ones(2)).numpy().reshape(2, 40, 48))
    got = model.enhance(lq, steps=1, precision="float32")
    assert got.shape == (2, 40, 48) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(model.enhance(lq, steps=4), got, atol=1e-3)  # more steps do something else
    np.testing.assert_array_equal(model.enhance(lq[0]), model.enhance(lq[0]))  # deterministic


def test_bfloat16_enhance_matches_float32_on_the_shipped_model():
    """bfloat16 autocast (the default where the CPU has bfloat16 instructions) changes the enhanced slice by a
    small fraction of its contrast; asked for explicitly it runs on any CPU."""
    model = InDIModel.load(SHIPPED_MODEL)
    lq, _ = disks_pair(96, 3)
    lq = model.config.lq_low + lq * (model.config.lq_high - model.config.lq_low)  # the model's grey range
    full = model.enhance(lq, steps=8, precision="float32")
    half = model.enhance(lq, steps=8, precision="bfloat16")
    assert half.dtype == np.float32 and half.shape == full.shape
    assert np.abs(half - full).mean() < 0.01 * full.std()
    assert not np.array_equal(half, full)  # it did run in bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        model.enhance(lq, steps=1, precision="float16")


def test_enhance_pads_odd_sizes_and_keeps_the_grid():
    model = tiny_model()
    out = model.enhance(np.random.default_rng(2).random((13, 11)).astype(np.float32), steps=2)
    assert out.shape == (26, 22) and np.isfinite(out).all()


# ------------------------------------------------------------------------------------------------ loss
def test_loss_is_absolute_below_half_and_squared_above():
    target = torch.zeros(1)
    for err, value in [(0.1, 0.1), (-0.3, 0.3), (0.5, 0.5), (0.8, 0.64), (-1.5, 2.25), (2.0, 4.0)]:
        assert float(indi_loss(torch.tensor([err]), target)) == pytest.approx(value, rel=1e-6)
    pred = torch.tensor([0.2, 1.0], requires_grad=True)
    loss = indi_loss(pred, torch.zeros(2))
    loss.backward()
    assert float(loss.detach()) == pytest.approx((0.2 + 1.0) / 2)
    assert pred.grad.tolist() == pytest.approx([0.5, 1.0])  # slopes 1 (MAE) and 2e (MSE), averaged


# ------------------------------------------------------------------------------------------------ data prep
def test_upsample_lq_doubles_y_and_x_only():
    lq = np.random.default_rng(0).random((3, 10, 12)).astype(np.float32)
    up = upsample_lq(lq)
    assert up.shape == (3, 20, 24) and up.dtype == np.float32
    np.testing.assert_allclose(up[1], upsample_lq(lq[1]), atol=1e-6)
    np.testing.assert_allclose(upsample_lq(np.full((6, 6), 0.7)), 0.7, atol=1e-6)
    # a 2x2 block average of the HQ grid lands back on the LQ grid (pixel-centre convention)
    ramp = np.add.outer(np.arange(64.0), 2 * np.arange(64.0))
    lq_ramp = ramp.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(upsample_lq(lq_ramp)[12:-12, 12:-12], ramp[12:-12, 12:-12], atol=1e-2)


@pytest.mark.parametrize("shift", [(1.3, -0.7), (-0.45, 2.25)])
def test_registration_recovers_a_sub_pixel_shift(shift):
    _, hq = disks_pair(128, 3)
    hq = ndi.gaussian_filter(hq, 1.0)
    moved = ndi.shift(hq, shift, order=3, mode="nearest")
    moved = moved + np.random.default_rng(4).normal(0, 0.05, moved.shape).astype(np.float32)
    registered, found = register_lq_to_hq(moved, hq)
    assert found == pytest.approx((-shift[0], -shift[1]), abs=0.1)
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(registered - hq)[inner].mean() < 0.6 * np.abs(moved - hq)[inner].mean()
    stack_registered, stack_found = register_lq_to_hq(np.stack([moved, moved]), np.stack([hq, hq]))
    assert stack_found == pytest.approx(found, abs=1e-6) and stack_registered.shape == (2, 128, 128)


# ------------------------------------------------------------------------------------------------ files
def test_save_load_round_trip_is_exact_and_pickle_free(tmp_path, monkeypatch):
    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle-based torch.save/torch.load used")

    monkeypatch.setattr(torch, "save", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    model = tiny_model(5)
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert json.loads((tmp_path / "m" / CONFIG_FILE).read_text())["hq_high"] == 1.0
    loaded = InDIModel.load(tmp_path / "m")
    assert loaded.config == model.config
    lq = np.random.default_rng(6).random((12, 16)).astype(np.float32)
    np.testing.assert_array_equal(loaded.enhance(lq, 3), model.enhance(lq, 3))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(InDIModelError, match=CONFIG_FILE):
        InDIModel.load(tmp_path / "nowhere")
    directory = tiny_model().save(tmp_path / "m")
    (directory / WEIGHTS_FILE).write_bytes(b"\x80\x04 not a safetensors file")
    with pytest.raises(InDIModelError, match=f"corrupt.*{WEIGHTS_FILE}"):
        InDIModel.load(directory)
    tiny_model().save(directory)
    (directory / CONFIG_FILE).write_text("{not json")
    with pytest.raises(InDIModelError, match=CONFIG_FILE):
        InDIModel.load(directory)
    InDIModel(InDIUNet(InDIConfig(base_channels=6, depth=2)), InDIConfig(**TINY)).save(directory)
    with pytest.raises(InDIModelError, match="do not match"):
        InDIModel.load(directory)


# ------------------------------------------------------------------------------------------------ training
TRAIN = dict(base_channels=8, depth=2, time_embedding_dim=16, dilations=(1, 2), patch_size=32, batch_size=8,
             learning_rate=3e-3)


def test_short_training_beats_bicubic_on_a_held_out_image():
    lq, hq = disks_pair(128, 0)
    seen = []
    model = train_indi(lq, hq, InDIConfig(**TRAIN), minutes=5, max_iterations=250,
                       progress=lambda i, loss: seen.append(i))
    assert seen == list(range(1, 251)) and model.iteration == 250
    losses = model.training_losses
    assert np.mean(losses[-50:]) < 0.8 * np.mean(losses[:25])
    lq_test, hq_test = disks_pair(128, 1)
    bicubic = psnr(upsample_lq(lq_test), hq_test)
    one, eight = psnr(model.enhance(lq_test, 1), hq_test), psnr(model.enhance(lq_test, 8), hq_test)
    print(f"PSNR vs HQ: bicubic {bicubic:.2f} dB, InDI N=1 {one:.2f} dB, N=8 {eight:.2f} dB")
    assert one > bicubic + 1.0 and eight > bicubic + 0.5
    assert model.config.hq_low == pytest.approx(np.percentile(hq[4:-4, 4:-4], 0.1), abs=0.05)


def test_resume_continues_from_the_checkpoint_as_if_uninterrupted(tmp_path):
    lq, hq = disks_pair(64, 7)
    cfg = InDIConfig(**{**TRAIN, "patch_size": 16, "batch_size": 4}, checkpoint_every=4)
    full = train_indi(lq, hq, cfg, max_iterations=10)

    def interrupt(i, loss):
        if i == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_indi(lq, hq, cfg, max_iterations=10, checkpoint_dir=tmp_path, progress=interrupt)
    assert json.loads((tmp_path / STATE_FILE).read_text())["iteration"] == 4
    seen = []
    resumed = train_indi(lq, hq, cfg, max_iterations=10, checkpoint_dir=tmp_path, resume=True,
                         progress=lambda i, loss: seen.append(i))
    assert seen == [5, 6, 7, 8, 9, 10] and resumed.iteration == 10
    np.testing.assert_allclose(resumed.training_losses, full.training_losses, rtol=1e-4)
    assert json.loads((tmp_path / STATE_FILE).read_text())["iteration"] == 10
    assert InDIModel.load(tmp_path).config.lq_low == pytest.approx(full.config.lq_low)
    with pytest.raises(ValueError, match="architecture"):
        train_indi(lq, hq, InDIConfig(**{**TRAIN, "base_channels": 4}), max_iterations=12,
                   checkpoint_dir=tmp_path, resume=True)
