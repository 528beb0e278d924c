"""Training the surrogate from scratch (autoencoder, then denoiser) and fine-tuning it on new experiments.

Both phases run on a time budget (the CPU is the usual machine) with periodic checkpoints: a killed run resumes
from the last one (``resume=True``) with its optimizer state and RNG. Checkpoints hold safetensors and JSON only.

Losses: the autoencoder minimises L1 + a spectral L1 on log-amplitudes (without it, a small autoencoder smooths
away the primary platelets that set the texture) + a small KL term; the denoiser minimises the usual ε-prediction
MSE, with the condition replaced by the null token for a fraction of samples (classifier-free guidance).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from models.checkpointing import has_checkpoint, load_optimizer, save_optimizer
from models.surrogate.model import MAGNIFICATIONS, LatentDiffusionSurrogate, SurrogateConfig

Progress = Callable[[str, int, float], None]   # (phase, step, loss)


@dataclass
class TileSet:
    """Training tiles: ``tiles`` is ``N x H x W`` float32 in [0, 1]; ``conditions[i]`` and ``magnifications[i]``
    (``"low"``/``"high"``) describe tile i."""

    tiles: np.ndarray
    conditions: list[dict]
    magnifications: list[str]

    def __post_init__(self) -> None:
        if self.tiles.ndim != 3 or self.tiles.shape[1] != self.tiles.shape[2]:
            raise ValueError(f"tiles must be N x H x W with H == W, got {self.tiles.shape}")
        if not len(self.tiles) == len(self.conditions) == len(self.magnifications):
            raise ValueError("tiles, conditions and magnifications must have the same length")
        bad = sorted(set(self.magnifications) - set(MAGNIFICATIONS))
        if bad:
            raise ValueError(f"unknown magnifications {bad}; use {', '.join(MAGNIFICATIONS)}")

    def condition_vectors(self, model: LatentDiffusionSurrogate) -> np.ndarray:
        out = np.empty((len(self.tiles), model.schema.dim + len(MAGNIFICATIONS)), np.float32)
        for mag in MAGNIFICATIONS:
            idx = [i for i, m in enumerate(self.magnifications) if m == mag]
            if idx:
                out[idx] = model.condition_vectors([self.conditions[i] for i in idx], mag)
        return out


@dataclass
class TrainingBudget:
    """Minutes for each phase and optional step caps (whichever ends first)."""

    vae_minutes: float = 6.0
    unet_minutes: float = 20.0
    vae_steps: int | None = None
    unet_steps: int | None = None
    batch_size: int = 16
    vae_lr: float = 1e-3
    vae_crop_px: int | None = 64
    unet_lr: float = 5e-4
    checkpoint_every: int = 100
    #: How often a low-magnification tile is drawn for the denoiser relative to a high-magnification one (>1 spends
    #: more steps on particle size and shape, the harder half for a small model).
    low_magnification_weight: float = 1.0


def _augment(batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random 90° rotations and flips (SEM statistics do not depend on orientation)."""
    k = int(rng.integers(4))
    batch = torch.rot90(batch, k, dims=(-2, -1))
    return torch.flip(batch, dims=(-1,)) if rng.integers(2) else batch


def _random_crops(tiles: torch.Tensor, n: int, crop: int | None, rng: np.random.Generator) -> torch.Tensor:
    """``n x 1 x crop x crop`` random crops of random tiles. The autoencoder is fully convolutional (no
    attention), so it learns from crops at a quarter of the cost of whole 128-px tiles."""
    idx = rng.integers(len(tiles), size=n)
    side = tiles.shape[-1]
    if crop is None or crop >= side:
        return tiles[idx, None]
    ys, xs = rng.integers(0, side - crop + 1, size=n), rng.integers(0, side - crop + 1, size=n)
    return torch.stack([tiles[i, y:y + crop, x:x + crop] for i, y, x in zip(idx, ys, xs)])[:, None]


def spectral_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean |log(1+|F a|) − log(1+|F b|)| over frequencies: penalises lost or invented fine structure."""
    fa, fb = torch.fft.rfft2(a, norm="ortho").abs(), torch.fft.rfft2(b, norm="ortho").abs()
    return (torch.log1p(fa) - torch.log1p(fb)).abs().mean()


def _lr(base: float, progress: float) -> float:
    """Linear warm-up over 5 %, cosine decay to 5 % of ``base``."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < 0.05:
        return base * (0.1 + 0.9 * progress / 0.05)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (progress - 0.05) / 0.95)))


class _Clock:
    """Progress through a phase: the larger of elapsed/minutes and step/max_steps."""

    def __init__(self, minutes: float, max_steps: int | None, elapsed: float = 0.0):
        self.minutes, self.max_steps = minutes, max_steps
        self.start = time.monotonic() - elapsed

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def progress(self, step: int) -> float:
        p = self.elapsed / max(self.minutes * 60.0, 1e-9)
        return max(p, step / self.max_steps) if self.max_steps else p

    def done(self, step: int) -> bool:
        return self.progress(step) >= 1.0


def _checkpoint(directory: Path | None, model: LatentDiffusionSurrogate, optimizer, state: dict) -> None:
    if directory is None:
        return
    model.save_pretrained(directory)
    save_optimizer(directory, optimizer, state)


def train_autoencoder(model: LatentDiffusionSurrogate, data: TileSet, budget: TrainingBudget, *, seed: int = 0,
                      checkpoint_dir: Path | None = None, resume_state: dict | None = None,
                      progress: Progress | None = None) -> list[float]:
    """Train ``model.vae`` on the tiles; sets ``model.config.latent_scale``. Returns the loss history."""
    rng = np.random.default_rng(seed)
    vae = model.vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=budget.vae_lr, weight_decay=0.0)
    step, losses, elapsed = 0, [], 0.0
    if resume_state is not None and resume_state.get("phase") == "vae":
        load_optimizer(checkpoint_dir, vae.parameters(), optimizer)
        step, losses, elapsed = resume_state["step"], resume_state["losses"], resume_state["elapsed_s"]
        rng.bit_generator.state = resume_state["rng_state"]
    clock = _Clock(budget.vae_minutes, budget.vae_steps, elapsed)
    tiles = torch.from_numpy(data.tiles * 2.0 - 1.0)
    while not clock.done(step):
        for group in optimizer.param_groups:
            group["lr"] = _lr(budget.vae_lr, clock.progress(step))
        x = _augment(_random_crops(tiles, budget.batch_size, budget.vae_crop_px, rng), rng)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = (recon - x).abs().mean() + 0.5 * spectral_l1(recon, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        losses.append(loss.item())
        if progress is not None:
            progress("autoencoder", step, float(loss))
        if step % budget.checkpoint_every == 0:
            _checkpoint(checkpoint_dir, model, optimizer, {"phase": "vae", "step": step, "losses": losses,
                                                           "elapsed_s": clock.elapsed,
                                                           "rng_state": rng.bit_generator.state})
    vae.eval()
    model.config.latent_scale = latent_scale(model, data)
    return losses


@torch.no_grad()
def latent_scale(model: LatentDiffusionSurrogate, data: TileSet, n: int = 256) -> float:
    """1 / std of the autoencoder's latent means over (up to ``n``) training tiles."""
    x = torch.from_numpy(data.tiles[:n] * 2.0 - 1.0)[:, None]
    z = torch.cat([model.vae.encode(x[i:i + 64]).latent_dist.mean for i in range(0, len(x), 64)])
    return float(1.0 / z.std().clamp_min(1e-6))


@torch.no_grad()
def encode_tiles(model: LatentDiffusionSurrogate, tiles: np.ndarray, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every tile (``N x C x h x w`` each), computed once for denoiser training."""
    model.vae.eval()
    means, stds = [], []
    for i in range(0, len(tiles), batch):
        x = torch.from_numpy(tiles[i:i + batch] * 2.0 - 1.0)[:, None]
        dist = model.vae.encode(x).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def _denoiser_step(model: LatentDiffusionSurrogate, latents: torch.Tensor, cond: torch.Tensor,
                   rng: np.random.Generator, dropout: float) -> torch.Tensor:
    noise = torch.randn_like(latents)
    t = torch.from_numpy(rng.integers(0, model.scheduler.config.num_train_timesteps, size=len(latents)))
    noisy = model.scheduler.add_noise(latents, noise, t)
    drop = torch.from_numpy(rng.random(len(latents)) < dropout)
    emb = model.encoder(cond, drop)
    eps = model.unet(noisy, t, class_labels=emb).sample
    return torch.nn.functional.mse_loss(eps, noise)


def train_denoiser(model: LatentDiffusionSurrogate, data: TileSet, budget: TrainingBudget, *, seed: int = 0,
                   checkpoint_dir: Path | None = None, resume_state: dict | None = None,
                   progress: Progress | None = None, lr: float | None = None,
                   minutes: float | None = None, max_steps: int | None = None, phase: str = "unet") -> list[float]:
    """Train the denoiser and condition encoder on the (frozen) autoencoder's latents."""
    rng = np.random.default_rng(seed + 1)
    torch.manual_seed(seed + 1)
    base_lr = budget.unet_lr if lr is None else lr
    params = list(model.unet.parameters()) + list(model.encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=base_lr, weight_decay=1e-4)
    step, losses, elapsed = 0, [], 0.0
    if resume_state is not None and resume_state.get("phase") == phase:
        load_optimizer(checkpoint_dir, params, optimizer)
        step, losses, elapsed = resume_state["step"], resume_state["losses"], resume_state["elapsed_s"]
        rng.bit_generator.state = resume_state["rng_state"]
    clock = _Clock(budget.unet_minutes if minutes is None else minutes,
                   budget.unet_steps if max_steps is None else max_steps, elapsed)
    mean, std = encode_tiles(model, data.tiles)
    cond = torch.from_numpy(data.condition_vectors(model))
    scale = model.config.latent_scale
    draw_p = None
    if budget.low_magnification_weight != 1.0:
        w = np.where(np.asarray(data.magnifications) == "low", budget.low_magnification_weight, 1.0)
        draw_p = w / w.sum()
    model.unet.train()
    model.encoder.train()
    while not clock.done(step):
        for group in optimizer.param_groups:
            group["lr"] = _lr(base_lr, clock.progress(step))
        idx = torch.from_numpy(rng.choice(len(mean), size=budget.batch_size, p=draw_p) if draw_p is not None
                               else rng.integers(len(mean), size=budget.batch_size))
        latents = _augment((mean[idx] + std[idx] * torch.randn_like(std[idx])) * scale, rng)
        loss = _denoiser_step(model, latents, cond[idx], rng, model.config.condition_dropout)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        losses.append(loss.item())
        if progress is not None:
            progress(phase, step, losses[-1])
        if step % budget.checkpoint_every == 0:
            _checkpoint(checkpoint_dir, model, optimizer, {"phase": phase, "step": step, "losses": losses,
                                                           "elapsed_s": clock.elapsed,
                                                           "rng_state": rng.bit_generator.state})
    model.unet.eval()
    model.encoder.eval()
    if checkpoint_dir is not None:
        _checkpoint(checkpoint_dir, model, optimizer, {"phase": f"{phase}-done", "step": step, "losses": losses,
                                                       "elapsed_s": clock.elapsed,
                                                       "rng_state": rng.bit_generator.state})
    return losses


def train_from_scratch(config: SurrogateConfig, data: TileSet, budget: TrainingBudget | None = None, *,
                       seed: int = 0, checkpoint_dir: str | Path | None = None, resume: bool = False,
                       progress: Progress | None = None, init_from: str | Path | None = None,
                       ) -> tuple[LatentDiffusionSurrogate, dict]:
    """Autoencoder, then denoiser. Returns the model and a summary (steps, final losses, seconds per phase).

    With ``resume`` and a checkpoint in ``checkpoint_dir``, the model, optimizer and RNG come back and the
    interrupted phase continues where it stopped (a finished autoencoder is not retrained).

    With ``init_from`` (a trained model folder), training starts from that model instead of random weights: its
    autoencoder is kept (latents keep their meaning) and its denoiser trains for the whole denoiser budget with a
    fresh learning-rate schedule, a warm restart that continues a finished run.
    """
    budget = budget or TrainingBudget()
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    state = None
    torch.manual_seed(seed)
    if resume and ckpt is not None and has_checkpoint(ckpt):
        model = LatentDiffusionSurrogate.from_pretrained(ckpt)
        state = json.loads((ckpt / "training_state.json").read_text())
    else:
        model = LatentDiffusionSurrogate(config) if init_from is None else LatentDiffusionSurrogate.from_pretrained(
            init_from)
        if init_from is not None:
            _forget_fits_on_generated_images(model)
        model.config.training_design = np.unique(model.schema.encode(data.conditions), axis=0).tolist()
    warm_start = init_from is not None and state is None  # a trained autoencoder: the denoiser phase only
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"initialised_from": str(init_from)} if init_from is not None else {}
    t0 = time.monotonic()
    if not warm_start and (state is None or state["phase"] == "vae"):
        vae_losses = train_autoencoder(model, data, budget, seed=seed, checkpoint_dir=ckpt, resume_state=state,
                                       progress=progress)
        summary["autoencoder"] = {"steps": len(vae_losses), "final_loss": float(np.mean(vae_losses[-20:]))}
        state = None
    summary["autoencoder_seconds"] = time.monotonic() - t0
    t1 = time.monotonic()
    if state is None or state["phase"] == "unet":
        unet_losses = train_denoiser(model, data, budget, seed=seed, checkpoint_dir=ckpt, resume_state=state,
                                     progress=progress)
        summary["denoiser"] = {"steps": len(unet_losses), "final_loss": float(np.mean(unet_losses[-50:]))}
    summary["denoiser_seconds"] = time.monotonic() - t1
    return model, summary


def _forget_fits_on_generated_images(model: LatentDiffusionSurrogate) -> None:
    """A warm start keeps what the lab measured (lab samples, the training-set GP's length scales and noise, which
    map conditions to measurements and do not depend on the denoiser) and drops what was fitted on the old
    denoiser's images (descriptor stacks, generation calibration) or on the old training rows' scaling (the GP's
    outcome transform): ``surrogate calibrate`` and ``stack`` fit them again for the new denoiser."""
    from models.surrogate.stacking import hyperparameters_only

    model.config.descriptor_stacks = []
    model.config.generation_calibration = {}
    if model.training_gp_state is not None:
        model.training_gp_state = hyperparameters_only(model.training_gp_state)


def fine_tune(model: LatentDiffusionSurrogate, new_data: TileSet, *, replay: TileSet | None = None,
              minutes: float = 2.0, max_steps: int | None = None, lr: float = 1e-4, seed: int = 0,
              progress: Progress | None = None) -> list[float]:
    """Adapt a trained surrogate to new experiments (the closed loop's retraining).

    The autoencoder stays frozen (latents keep their meaning); the denoiser and condition encoder continue at a
    low learning rate on the new tiles, mixed half and half with ``replay`` tiles when given so the model does not
    forget the rest of the design space. Distinct from :func:`train_from_scratch`.
    """
    data = new_data
    if replay is not None and len(replay.tiles):
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(replay.tiles), size=min(len(replay.tiles), len(new_data.tiles)), replace=False)
        data = TileSet(np.concatenate([new_data.tiles, replay.tiles[pick]]),
                       new_data.conditions + [replay.conditions[i] for i in pick],
                       new_data.magnifications + [replay.magnifications[i] for i in pick])
    budget = TrainingBudget(unet_minutes=minutes, unet_steps=max_steps, checkpoint_every=10**9)
    return train_denoiser(model, data, budget, seed=seed, lr=lr, progress=progress, phase="fine-tune")


def tileset_from_arrays(tiles: Sequence[np.ndarray], conditions: Sequence[Mapping[str, Any]],
                        magnifications: Sequence[str]) -> TileSet:
    return TileSet(np.stack([np.asarray(t, np.float32) for t in tiles]), [dict(c) for c in conditions],
                   list(magnifications))
