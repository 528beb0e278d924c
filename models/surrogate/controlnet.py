"""A ControlNet surrogate on a local Stable Diffusion checkpoint (paper 000's architecture).

For users with a Stable Diffusion checkpoint on disk (diffusers folder layout: ``unet/``, ``vae/``,
``scheduler/``; the text encoder and tokenizer are not needed). Nothing is downloaded. The synthesis conditions
replace the text prompt twice over:

* :class:`ConditionTokens`, an MLP: condition vector (``n x d``, from :class:`ConditionSchema`) ->
  ``n x n_tokens x cross_attention_dim`` token sequence fed to the cross-attention of the UNet and the ControlNet
  (in place of the CLIP text embedding), with a learned null sequence for classifier-free guidance;
* :class:`ConditionControlMap`, an MLP: condition vector -> a low-resolution map upsampled to the
  ``n x 3 x control_px x control_px`` conditioning image of the :class:`~diffusers.ControlNetModel`.

The Stable Diffusion UNet and VAE stay frozen; the ControlNet (initialised from the UNet by
:meth:`~diffusers.ControlNetModel.from_unet` unless one is given), the tokens and the control map are trained.

SEM tiles have one channel, the SD VAE three: encoding repeats the gray channel to the VAE's input channels,
decoding averages the VAE's output channels back to gray. Latents keep the VAE's channels (4 for SD).

Saved as ``controlnet/``, ``condition_tokens/``, ``control_map/`` (diffusers ``config.json`` + safetensors each)
and ``controlnet_surrogate.json`` (:class:`ControlNetSurrogateConfig`, recording the base checkpoint's path; the
frozen base weights are not copied).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, ControlNetModel, DDPMScheduler, DPMSolverMultistepScheduler,
                       UNet2DConditionModel)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from models.checkpointing import atomic_write
from models.surrogate.conditioning import ConditionSchema
from models.surrogate.model import SurrogateModelError

CONFIG_FILE = "controlnet_surrogate.json"
#: Subfolder of a Stable Diffusion checkpoint -> the config file diffusers writes into it.
BASE_PARTS = {"unet": "config.json", "vae": "config.json", "scheduler": "scheduler_config.json"}
#: no `accelerate`, no network, no pickles
_LOCAL = {"low_cpu_mem_usage": False, "local_files_only": True, "use_safetensors": True}
_SD_FIX = ("pass a local Stable Diffusion checkpoint in the diffusers folder layout (unet/, vae/ and scheduler/, "
           "each with its config file, weights as .safetensors; e.g. written by "
           "`StableDiffusionPipeline.save_pretrained(DIR)` or `huggingface-cli download REPO --local-dir DIR`)")


@dataclass
class ControlNetSurrogateConfig:
    """Everything about a :class:`ControlNetSurrogate` that is not a weight.

    Attributes
    ----------
    conditions : list of dict
        :class:`ConditionSchema` config, as :attr:`SurrogateConfig.conditions`.
    n_tokens : int
        Length of the condition token sequence fed to cross-attention.
    control_px : int or None
        Side of the ControlNet conditioning image, which is also the side of training and generated tiles.
        ``None``: the base UNet's ``sample_size`` times the VAE scale factor (filled in on construction).
    guidance_scale : float
        Classifier-free guidance weight (1 = none).
    sampling_steps : int
        DPM-Solver++ steps.
    latent_scale : float or None
        Multiplies VAE latents; ``None``: the base VAE's ``config.scaling_factor``.
    condition_dropout : float
        Probability of training a sample with the null condition (null tokens, zero control image).
    hidden : int
        Hidden width of both condition MLPs.
    control_map_px : int
        Side of the control map before upsampling to ``control_px``.
    sd_dir : str or None
        The base Stable Diffusion checkpoint (absolute path), used by :meth:`ControlNetSurrogate.from_pretrained`.
    """

    conditions: list[dict]
    n_tokens: int = 4
    control_px: int | None = None
    guidance_scale: float = 3.0
    sampling_steps: int = 20
    latent_scale: float | None = None
    condition_dropout: float = 0.1
    hidden: int = 256
    control_map_px: int = 8
    sd_dir: str | None = None

    @property
    def schema(self) -> ConditionSchema:
        return ConditionSchema(self.conditions)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ControlNetSurrogateConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class ConditionTokens(ModelMixin, ConfigMixin):
    """MLP replacing the text encoder: ``n x in_features`` -> ``n x n_tokens x cross_attention_dim``.

    The output is layer-normalised per token (like a CLIP text embedding). ``null_tokens``
    (``n_tokens x cross_attention_dim``) stand for "no condition" (classifier-free guidance).
    """

    @register_to_config
    def __init__(self, in_features: int, n_tokens: int = 4, cross_attention_dim: int = 768, hidden: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, n_tokens * cross_attention_dim))
        self.norm = nn.LayerNorm(cross_attention_dim)
        self.null_tokens = nn.Parameter(torch.zeros(n_tokens, cross_attention_dim))

    def forward(self, cond: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """``n x in_features`` -> ``n x n_tokens x cross_attention_dim``; rows where ``drop`` (``n`` bool) is set
        get the null tokens."""
        cfg = self.config
        tokens = self.norm(self.mlp(cond).view(len(cond), cfg.n_tokens, cfg.cross_attention_dim))
        if drop is not None:
            tokens = torch.where(drop[:, None, None], self.null_tokens.expand_as(tokens), tokens)
        return tokens

    def unconditional(self, n: int) -> torch.Tensor:
        """``n x n_tokens x cross_attention_dim`` null tokens."""
        return self.null_tokens.expand(n, -1, -1)


class ConditionControlMap(ModelMixin, ConfigMixin):
    """MLP -> ``channels x map_px x map_px`` map (tanh) -> bilinear upsampling to ``control_px``: the ControlNet's
    conditioning image. The null condition is the all-zero image."""

    @register_to_config
    def __init__(self, in_features: int, control_px: int, map_px: int = 8, channels: int = 3, hidden: int = 256):
        super().__init__()
        self.map_px = min(map_px, control_px)
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, channels * self.map_px**2))

    def forward(self, cond: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """``n x in_features`` -> ``n x channels x control_px x control_px`` in [-1, 1]; zero where ``drop``."""
        cfg = self.config
        low = torch.tanh(self.mlp(cond).view(len(cond), cfg.channels, self.map_px, self.map_px))
        image = F.interpolate(low, size=(cfg.control_px, cfg.control_px), mode="bilinear", align_corners=False)
        if drop is not None:
            image = image * (~drop).to(image.dtype)[:, None, None, None]
        return image


def noise_schedule(scheduler_config: Mapping[str, Any]) -> DDPMScheduler:
    """The training schedule (DDPM) of a base scheduler config (any scheduler class; missing keys take DDPM's
    defaults)."""
    c = scheduler_config
    return DDPMScheduler(num_train_timesteps=int(c.get("num_train_timesteps", 1000)),
                         beta_start=float(c.get("beta_start", 0.0001)), beta_end=float(c.get("beta_end", 0.02)),
                         beta_schedule=c.get("beta_schedule", "linear"), trained_betas=c.get("trained_betas"),
                         prediction_type=c.get("prediction_type", "epsilon"), clip_sample=False)


def load_stable_diffusion_base(sd_dir: str | Path) -> tuple[UNet2DConditionModel, AutoencoderKL, DDPMScheduler]:
    """Load ``unet/``, ``vae/`` and the noise schedule of ``scheduler/`` from a local diffusers checkpoint
    (safetensors weights only: pickled ``.bin`` weights are refused).

    Raises
    ------
    FileNotFoundError
        The directory, a subfolder, its config or its weights are missing (the message names which).
    ValueError
        ``sd_dir`` is a single checkpoint file rather than a diffusers folder.
    """
    sd_dir = Path(sd_dir).expanduser()
    if sd_dir.is_file():
        raise ValueError(f"{sd_dir} is a single file, not a diffusers folder; convert it once with "
                         "`StableDiffusionPipeline.from_single_file(PATH).save_pretrained(DIR)` and pass DIR")
    if not sd_dir.is_dir():
        raise FileNotFoundError(f"Stable Diffusion checkpoint {sd_dir} does not exist; {_SD_FIX}")
    for part, config_name in BASE_PARTS.items():
        if not (sd_dir / part).is_dir():
            raise FileNotFoundError(f"Stable Diffusion checkpoint {sd_dir} has no {part}/ subfolder; {_SD_FIX}")
        if not (sd_dir / part / config_name).is_file():
            raise FileNotFoundError(f"{sd_dir / part} has no {config_name}; {_SD_FIX}")
    try:
        unet = UNet2DConditionModel.from_pretrained(sd_dir / "unet", **_LOCAL)
    except OSError as exc:
        raise FileNotFoundError(f"cannot load {sd_dir / 'unet'}: {exc}; {_SD_FIX}") from exc
    try:
        vae = AutoencoderKL.from_pretrained(sd_dir / "vae", **_LOCAL)
    except OSError as exc:
        raise FileNotFoundError(f"cannot load {sd_dir / 'vae'}: {exc}; {_SD_FIX}") from exc
    scheduler = noise_schedule(json.loads((sd_dir / "scheduler" / BASE_PARTS["scheduler"]).read_text()))
    return unet, vae, scheduler


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Image side / latent side (8 for Stable Diffusion)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def controlnet_from_unet(unet: UNet2DConditionModel, scale_factor: int) -> ControlNetModel:
    """The standard ControlNet initialisation (a copy of the UNet's encoder, zero convolutions), with a
    conditioning-image embedding that downsamples by ``scale_factor`` (SD: channels 16, 32, 96, 256, i.e. 8×)."""
    levels = int(round(np.log2(scale_factor))) + 1
    if 2 ** (levels - 1) != scale_factor:
        raise ValueError(f"VAE scale factor {scale_factor} is not a power of two")
    channels = tuple([16, 32, 96, 256][:levels] + [256] * max(0, levels - 4))
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)


class ControlNetSurrogate:
    """Frozen SD UNet + VAE, a trainable ControlNet, condition tokens and control map, with sampling and save/load.

    Parameters
    ----------
    config : ControlNetSurrogateConfig
    unet : UNet2DConditionModel
        The base denoiser (frozen).
    vae : AutoencoderKL
        The base autoencoder (frozen).
    controlnet : ControlNetModel
    scheduler : DDPMScheduler
        The base training noise schedule (:func:`noise_schedule`).
    tokens, control_map : ConditionTokens, ConditionControlMap, optional
        Fresh ones when omitted.
    """

    def __init__(self, config: ControlNetSurrogateConfig, unet: UNet2DConditionModel, vae: AutoencoderKL,
                 controlnet: ControlNetModel, scheduler: DDPMScheduler, tokens: ConditionTokens | None = None,
                 control_map: ConditionControlMap | None = None):
        if unet.config.get("addition_embed_type") is not None:
            raise ValueError(f"the base UNet uses addition_embed_type={unet.config.addition_embed_type!r} "
                             "(SDXL-like); only Stable Diffusion 1.x/2.x UNets are supported")
        if not isinstance(unet.config.cross_attention_dim, int):
            raise ValueError(f"unsupported cross_attention_dim {unet.config.cross_attention_dim!r} (need one int)")
        if unet.config.in_channels != vae.config.latent_channels:
            raise ValueError(f"the UNet takes {unet.config.in_channels} channels but the VAE makes "
                             f"{vae.config.latent_channels} (inpainting/depth UNets are not supported)")
        scale = vae_scale_factor(vae)
        control_down = 2 ** (len(controlnet.config.conditioning_embedding_out_channels) - 1)
        if control_down != scale:
            raise ValueError(f"the ControlNet's conditioning embedding downsamples {control_down}x but the VAE "
                             f"{scale}x; build it with `controlnet_from_unet(unet, {scale})`")
        if config.control_px is None:
            config.control_px = int(unet.config.sample_size) * scale
        unet_down = 2 ** (len(unet.config.block_out_channels) - 1)
        if config.control_px % (scale * unet_down):
            raise ValueError(f"control_px={config.control_px} must be a multiple of {scale * unet_down} "
                             f"(VAE scale {scale} x UNet downsampling {unet_down})")
        if config.latent_scale is None:
            config.latent_scale = float(vae.config.scaling_factor)
        self.config = config
        self.schema = config.schema
        self.unet = unet.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        self.controlnet = controlnet
        self.scheduler = scheduler
        dim = self.schema.dim
        self.tokens = tokens if tokens is not None else ConditionTokens(
            dim, config.n_tokens, unet.config.cross_attention_dim, hidden=config.hidden)
        self.control_map = control_map if control_map is not None else ConditionControlMap(
            dim, config.control_px, map_px=config.control_map_px,
            channels=controlnet.config.conditioning_channels, hidden=config.hidden)
        for name, module, want in (("condition tokens", self.tokens, dim), ("control map", self.control_map, dim)):
            if module.config.in_features != want:
                raise ValueError(f"{name} take {module.config.in_features} inputs, the schema encodes {want}")

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_stable_diffusion(cls, sd_dir: str | Path, conditions: Sequence[Mapping[str, Any]] | ConditionSchema,
                              controlnet_dir: str | Path | None = None, **config: Any) -> ControlNetSurrogate:
        """A new surrogate on a local Stable Diffusion checkpoint.

        Parameters
        ----------
        sd_dir : path
            Diffusers folder layout with ``unet/``, ``vae/`` and ``scheduler/``.
        conditions : list of dict or ConditionSchema
            The condition schema config.
        controlnet_dir : path, optional
            A saved :class:`~diffusers.ControlNetModel` to start from; ``None``: ``ControlNetModel.from_unet``.
        **config
            Further :class:`ControlNetSurrogateConfig` fields.
        """
        unet, vae, scheduler = load_stable_diffusion_base(sd_dir)
        if controlnet_dir is None:
            controlnet = controlnet_from_unet(unet, vae_scale_factor(vae))
        else:
            controlnet_dir = Path(controlnet_dir).expanduser()
            if not (controlnet_dir / "config.json").is_file():
                raise FileNotFoundError(f"{controlnet_dir} is not a saved ControlNetModel (no config.json); pass "
                                        "a folder written by `ControlNetModel.save_pretrained` or None")
            controlnet = ControlNetModel.from_pretrained(controlnet_dir, **_LOCAL)
        schema_config = conditions.to_config() if isinstance(conditions, ConditionSchema) else \
            [dict(c) for c in conditions]
        cfg = ControlNetSurrogateConfig(conditions=schema_config, sd_dir=str(Path(sd_dir).expanduser().resolve()),
                                        **config)
        return cls(cfg, unet, vae, controlnet, scheduler)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``controlnet/``, ``condition_tokens/``, ``control_map/`` and ``controlnet_surrogate.json`` (the
        base checkpoint is referenced by path, not copied)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.controlnet.save_pretrained(directory / "controlnet")
        self.tokens.save_pretrained(directory / "condition_tokens")
        self.control_map.save_pretrained(directory / "control_map")
        atomic_write(directory / CONFIG_FILE, lambda p: p.write_text(json.dumps(self.config.to_json(), indent=1)))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, sd_dir: str | Path | None = None) -> ControlNetSurrogate:
        """Load a surrogate written by :meth:`save_pretrained`; ``sd_dir`` overrides the recorded base path."""
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file():
            raise SurrogateModelError(f"{directory} is not a ControlNet surrogate: {CONFIG_FILE} is missing; save "
                                      "one with `ControlNetSurrogate.save_pretrained`")
        config = ControlNetSurrogateConfig.from_json(json.loads((directory / CONFIG_FILE).read_text()))
        base = sd_dir if sd_dir is not None else config.sd_dir
        if base is None:
            raise SurrogateModelError(f"{directory / CONFIG_FILE} records no Stable Diffusion checkpoint; pass "
                                      "sd_dir=... to from_pretrained")
        config.sd_dir = str(Path(base).expanduser().resolve())
        unet, vae, scheduler = load_stable_diffusion_base(base)
        try:
            controlnet = ControlNetModel.from_pretrained(directory / "controlnet", **_LOCAL)
            tokens = ConditionTokens.from_pretrained(directory / "condition_tokens", **_LOCAL)
            control_map = ConditionControlMap.from_pretrained(directory / "control_map", **_LOCAL)
        except (OSError, ValueError) as exc:
            raise SurrogateModelError(f"cannot load the ControlNet surrogate in {directory}: {exc}") from exc
        return cls(config, unet, vae, controlnet.eval(), scheduler, tokens.eval(), control_map.eval())

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: str | torch.device) -> ControlNetSurrogate:
        for module in (self.unet, self.vae, self.controlnet, self.tokens, self.control_map):
            module.to(device)
        return self

    @property
    def latent_px(self) -> int:
        return self.config.control_px // vae_scale_factor(self.vae)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """ControlNet, condition tokens and control map parameters (the base UNet and VAE are frozen)."""
        return [*self.controlnet.parameters(), *self.tokens.parameters(), *self.control_map.parameters()]

    def condition_vectors(self, conditions: Sequence[Mapping[str, Any]] | np.ndarray) -> np.ndarray:
        """``n x d`` float32: condition dicts encoded by the schema, or encoded vectors checked and passed on."""
        if isinstance(conditions, (np.ndarray, torch.Tensor)) or (
                len(conditions) and not isinstance(conditions[0], Mapping)):
            vectors = np.asarray(conditions, np.float32)
            if vectors.ndim != 2 or vectors.shape[1] != self.schema.dim:
                raise ValueError(f"condition vectors must be n x {self.schema.dim}, got {vectors.shape}")
            return vectors
        return self.schema.encode(conditions)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n x 1 x H x W`` in [-1, 1] -> scaled latents ``n x C x H/f x W/f`` (a posterior sample); the gray
        channel is repeated to the VAE's input channels."""
        channels = self.vae.config.in_channels
        if images.shape[1] == 1 and channels != 1:
            images = images.repeat(1, channels, 1, 1)
        elif images.shape[1] != channels:
            raise ValueError(f"images must have 1 or {channels} channels, got {images.shape[1]}")
        dist = self.vae.encode(images).latent_dist
        noise = torch.randn(dist.mean.shape, generator=generator).to(dist.mean)
        return (dist.mean + dist.std * noise) * self.config.latent_scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> ``n x H x W`` in [0, 1] (the VAE's output channels averaged to gray)."""
        images = self.vae.decode(latents / self.config.latent_scale).sample.mean(dim=1)
        return (images.clamp(-1, 1) + 1) / 2

    def _predict(self, latents: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor,
                 control: torch.Tensor) -> torch.Tensor:
        down, mid = self.controlnet(latents, t, encoder_hidden_states=tokens, controlnet_cond=control,
                                    return_dict=False)
        return self.unet(latents, t, encoder_hidden_states=tokens, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample

    # ------------------------------------------------------------------------------------------ training
    def training_step(self, images: torch.Tensor, cond_vectors: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """One denoising loss on a batch (call ``backward`` and step an optimiser on :meth:`trainable_parameters`).

        Parameters
        ----------
        images : torch.Tensor
            ``n x 1 x control_px x control_px`` in [-1, 1].
        cond_vectors : torch.Tensor
            ``n x d`` encoded conditions.
        generator : torch.Generator, optional
            CPU generator for the posterior sample, noise, timesteps and condition dropout.

        Returns
        -------
        torch.Tensor
            Scalar MSE between the UNet output and its target (ε, or v for v-prediction bases).
        """
        px = self.config.control_px
        if images.ndim != 4 or tuple(images.shape[-2:]) != (px, px):
            raise ValueError(f"images must be n x 1 x {px} x {px}, got {tuple(images.shape)}")
        device = self.device
        images, cond = images.to(device, torch.float32), cond_vectors.to(device, torch.float32)
        n = len(images)
        for module in (self.controlnet, self.tokens, self.control_map):
            module.train()
        with torch.no_grad():
            latents = self.encode(images, generator)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=generator).to(device)
        drop = (torch.rand(n, generator=generator) < self.config.condition_dropout).to(device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        pred = self._predict(noisy, t, self.tokens(cond, drop), self.control_map(cond, drop))
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, t)
        else:
            raise ValueError(f"unsupported prediction_type {kind!r} (need 'epsilon' or 'v_prediction')")
        return F.mse_loss(pred, target)

    # ------------------------------------------------------------------------------------------ sampling
    def sampler(self, steps: int) -> DPMSolverMultistepScheduler:
        """DPM-Solver++ on the base noise schedule. Settings are explicit (no ``from_config``: a scheduler loaded
        from disk and a fresh one disagree on defaults)."""
        cfg = self.scheduler.config
        sampler = DPMSolverMultistepScheduler(
            num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
            beta_schedule=cfg.beta_schedule, trained_betas=cfg.trained_betas, prediction_type=cfg.prediction_type,
            algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing", lower_order_final=True)
        sampler.set_timesteps(steps)
        return sampler

    def initial_noise(self, n_per_condition: int, seed: int) -> torch.Tensor:
        """``n_per_condition x C x h x w``: image k's noise depends on ``seed`` and k only (the same for every
        condition)."""
        c, s = self.unet.config.in_channels, self.latent_px
        out = torch.empty(n_per_condition, c, s, s)
        for k in range(n_per_condition):
            out[k] = torch.randn(c, s, s, generator=torch.Generator().manual_seed(int(seed) * 100_003 + k))
        return out

    @torch.no_grad()
    def generate(self, conditions: Sequence[Mapping[str, Any]] | np.ndarray, n_per_condition: int = 4,
                 seed: int = 0, steps: int | None = None, guidance_scale: float | None = None,
                 batch_size: int = 8) -> np.ndarray:
        """Generate tiles.

        Parameters
        ----------
        conditions : np.ndarray or list of dict
            ``n x d`` encoded condition vectors, or condition dicts for the schema.
        n_per_condition, seed, steps, guidance_scale, batch_size
            Tiles per condition, noise seed, DPM-Solver++ steps and guidance weight (config defaults when
            ``None``), images per forward pass.

        Returns
        -------
        np.ndarray
            ``n x n_per_condition x control_px x control_px`` float32 in [0, 1]; identical for identical arguments.
        """
        if n_per_condition < 1:
            raise ValueError(f"n_per_condition must be >= 1, got {n_per_condition}")
        steps = int(steps or self.config.sampling_steps)
        guidance = float(self.config.guidance_scale if guidance_scale is None else guidance_scale)
        for module in (self.controlnet, self.tokens, self.control_map):
            module.eval()
        device = self.device
        cond = torch.from_numpy(self.condition_vectors(conditions))
        n, k, px = len(cond), n_per_condition, self.config.control_px
        flat_cond = cond.repeat_interleave(k, dim=0)
        flat_noise = self.initial_noise(k, seed).repeat(n, 1, 1, 1)
        tiles = np.empty((n * k, px, px), np.float32)
        for start in range(0, n * k, batch_size):
            stop = min(start + batch_size, n * k)
            latents = self._denoise(flat_noise[start:stop].to(device), flat_cond[start:stop].to(device), steps,
                                    guidance)
            tiles[start:stop] = self.decode(latents).float().cpu().numpy()
        return tiles.reshape(n, k, px, px)

    def _denoise(self, latents: torch.Tensor, cond: torch.Tensor, steps: int, guidance: float) -> torch.Tensor:
        sampler = self.sampler(steps)
        latents = latents * sampler.init_noise_sigma
        tokens, control = self.tokens(cond), self.control_map(cond)
        guided = guidance != 1.0
        if guided:  # unconditional branch: null tokens and the zero control image, as in training dropout
            tokens = torch.cat([self.tokens.unconditional(len(cond)), tokens])
            control = torch.cat([torch.zeros_like(control), control])
        for t in sampler.timesteps:
            model_in = sampler.scale_model_input(torch.cat([latents, latents]) if guided else latents, t)
            pred = self._predict(model_in, t.to(latents.device), tokens, control)
            if guided:
                uncond, conditioned = pred.chunk(2)
                pred = uncond + guidance * (conditioned - uncond)
            latents = sampler.step(pred, t, latents).prev_sample
        return latents
