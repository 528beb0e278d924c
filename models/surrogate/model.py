"""The latent diffusion surrogate: synthesis conditions -> SEM tiles at two magnifications (diffusers parts).

Parts, each saved by diffusers as ``config.json`` + ``diffusion_pytorch_model.safetensors`` in its own folder:

* ``vae/``: an :class:`~diffusers.AutoencoderKL` compressing 1-channel SEM tiles 4× per side;
* ``unet/``: a :class:`~diffusers.UNet2DModel` denoising latents, conditioned through ``class_labels`` (added to
  its time embedding, ``class_embed_type="identity"``);
* ``condition_encoder/``: the MLP :class:`ConditionEncoder` (conditions + magnification one-hot -> embedding);
* ``scheduler/``: the training noise schedule; sampling uses DPM-Solver++ built from it;
* ``surrogate.json``: :class:`SurrogateConfig` (tile geometry, pixel sizes, condition schema, latent scale,
  the training design for the out-of-domain warning, descriptor calibration).

Tiles are generated at native pixel size (texture only compares at the same pixel size): ``low`` tiles show
whole secondary particles, ``high`` tiles show primary platelets on particle surfaces.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel

from models.checkpointing import atomic_write
from models.precision import bfloat16_autocast, resolve_bfloat16
from models.surrogate.conditioning import ConditionEncoder, ConditionSchema, warn_if_out_of_domain
from models.surrogate.descriptors import DESCRIPTOR_NAMES, LAB_DESCRIPTORS_FILE, TRAINING_DESCRIPTORS_FILE

MAGNIFICATIONS = ("low", "high")
CONFIG_FILE = "surrogate.json"
#: The GP on the training descriptors, fitted once (``surrogate stack``) so every process predicts the same.
TRAINING_GP_FILE = "training_gp.safetensors"
#: Tiles per decoder call. The decoder's 128-px activations of 16 tiles stay in the CPU's cache: on 2 cores,
#: 64 tiles decode in 1.2-1.4 s in one call and 0.7-0.9 s in calls of 16, to the same values (the decoder is
#: feed-forward per tile); the denoiser keeps its larger batches (its results depend on the batch size).
DECODE_BATCH = 16


class SurrogateModelError(ValueError):
    """A model directory that cannot be loaded; the message says what is missing and how to re-create it."""


@dataclass
class SurrogateConfig:
    """Everything about a surrogate that is not a weight.

    Attributes
    ----------
    conditions : list of dict
        :class:`ConditionSchema` config (the virtual lab's names, ranges and categories).
    tile_px : int
        Generated tiles are ``tile_px x tile_px``.
    pixel_size_um : dict
        Native pixel size per magnification (µm).
    vae_channels, unet_channels : list of int
        Widths of the autoencoder's and the denoiser's resolution levels.
    latent_channels : int
    latent_scale : float
        Multiplies encoder latents so they have unit variance (measured after the autoencoder is trained).
    embed_hidden : int
        Hidden width of the condition MLP.
    time_scale_shift : str
        How the time + condition embedding enters the denoiser's residual blocks: ``"scale_shift"`` (FiLM on
        the normalised features, as in Dhariwal & Nichol) makes global properties such as particle size follow
        the conditions in far fewer steps than ``"default"`` (added as a bias).
    condition_dropout : float
        Probability of training with the null condition (classifier-free guidance).
    sampling_steps : int
        Default solver steps of :meth:`LatentDiffusionSurrogate.generate`.
    guidance_scale : float or dict
        Default classifier-free guidance, one value or one per magnification (``{"low": 4.0, "high": 1.0}``).
        A small model under-expresses global properties (the particle size at 3k×); stronger guidance restores
        their spread across conditions (without it the D50 R² falls from 0.85 to 0.45), while the 30k× texture
        is as faithful without guidance as at 1.5, at half the denoiser passes (``surrogate report`` measures both).
    guidance_interval : float or dict
        Share of the solver steps, from the noisiest, that apply the guidance, one value or one per magnification;
        the later steps take the conditional prediction alone, one denoiser pass instead of two (guidance in a
        limited interval, Kynkäänniemi et al. 2024; diffusers' dynamic-CFG callback does the same). The first
        ``max(1, int(interval * steps))`` steps are guided; 1.0 guides every step (what a saved config without
        the field gets). At 3k×, 0.4 (2 of 6 steps, 4 of 10) kept the D50 R² (0.84-0.87 against 0.85 with every
        step guided, 48 held-out conditions) with a third fewer denoiser passes.
    training_design : list of list of float
        Encoded training conditions (``n x d``), for the out-of-domain warning.
    texture_calibration : list of float
        ``[a, b]``: texture measured on 128-px tiles -> ``a + b * t`` on the scale of full-frame ``describe``.
    d50_calibration : list of float
        ``[a, b]``: pooled tile D50 (µm) -> full-frame D50 ``a + b * d``.
    generation_calibration : dict
        ``{descriptor: [a, b]}``: descriptors of generated tiles -> those of simulated tiles, fitted on training
        conditions (:mod:`models.surrogate.calibration`); empty = none.
    descriptor_stacks : list of dict
        :class:`~models.surrogate.stacking.DescriptorStack` configs, one per sampler setting: generated
        descriptors stacked with a GP on the training set's descriptors (what screening predicts; empty = none).
    gp_log_ratios : dict of str to list of [str, str]
        ``{descriptor: [[numerator, denominator], ...]}``: log ratios of two conditions that a descriptor's
        training-set GP takes as more inputs beside the encoded conditions (``{"texture": [["naoh_wt_pct",
        "nh4oh_wt_pct"]]}``: the NaOH/NH4OH ratio, which an ARD kernel on the two loadings can follow only with
        short length scales on both); empty = the encoded conditions alone.
    gp_log_conditions : list of str
        Continuous conditions the training-set GP reads over their log-range instead of their range (the
        denoiser's encoding is unchanged): an aging time of 30-1440 min or loadings of 0.05-3 wt% act through
        their logarithm, which a stationary kernel on the linear scale follows only with short length scales
        at the low end.
    """

    conditions: list[dict]
    tile_px: int = 128
    pixel_size_um: dict = field(default_factory=lambda: {"low": 0.2, "high": 0.01})
    vae_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    latent_channels: int = 4
    latent_scale: float = 1.0
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    embed_hidden: int = 128
    time_scale_shift: str = "scale_shift"
    condition_dropout: float = 0.1
    sampling_steps: int = 10
    guidance_scale: float | dict = field(default_factory=lambda: {"low": 4.0, "high": 1.0})
    guidance_interval: float | dict = field(default_factory=lambda: {"low": 0.4, "high": 1.0})
    training_design: list[list[float]] = field(default_factory=list)
    texture_calibration: list[float] = field(default_factory=lambda: [0.0, 1.0])
    d50_calibration: list[float] = field(default_factory=lambda: [0.0, 1.0])
    generation_calibration: dict = field(default_factory=dict)
    descriptor_stacks: list[dict] = field(default_factory=list)
    gp_log_ratios: dict[str, list[list[str]]] = field(default_factory=dict)
    gp_log_conditions: list[str] = field(default_factory=list)

    @property
    def schema(self) -> ConditionSchema:
        return ConditionSchema(self.conditions)

    @property
    def latent_px(self) -> int:
        return self.tile_px // 2 ** (len(self.vae_channels) - 1)

    def guidance_for(self, magnification: str) -> float:
        """The default guidance scale of one magnification."""
        if isinstance(self.guidance_scale, Mapping):
            return float(self.guidance_scale[magnification])
        return float(self.guidance_scale)

    def guidance_interval_for(self, magnification: str) -> float:
        """The share of solver steps one magnification guides (see ``guidance_interval``)."""
        value = (self.guidance_interval[magnification] if isinstance(self.guidance_interval, Mapping)
                 else self.guidance_interval)
        return check_guidance_interval(value)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SurrogateConfig:
        known = set(cls.__dataclass_fields__)
        # configs saved before guidance_interval existed guided every step
        return cls(**{"guidance_interval": 1.0, **{k: v for k, v in data.items() if k in known}})


def check_guidance_interval(value: Any) -> float:
    """``value`` as a share of solver steps in (0, 1], or a ValueError naming the fix."""
    try:
        share = float(value)
    except (TypeError, ValueError):
        share = math.nan
    if not 0.0 < share <= 1.0:  # NaN fails too
        raise ValueError(f"guidance_interval must be a share of the solver steps in (0, 1], got {value!r}; "
                         "1.0 guides every step")
    return share


def check_decode_batch(value: int) -> int:
    """``value`` as tiles per decoder call (>= 1), or a ValueError naming it."""
    if value < 1:
        raise ValueError(f"decode_batch must be >= 1, got {value}")
    return int(value)


def guided_steps(steps: int, interval: float) -> int:
    """How many of ``steps`` solver steps, from the noisiest, a guidance ``interval`` guides (at least one)."""
    return max(1, int(check_guidance_interval(interval) * steps))


def build_autoencoder(config: SurrogateConfig) -> AutoencoderKL:
    """A small KL autoencoder: 1-channel tiles -> ``latent_channels x latent_px x latent_px``."""
    n = len(config.vae_channels)
    return AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(config.vae_channels),
                         latent_channels=config.latent_channels, layers_per_block=1,
                         norm_num_groups=min(16, config.vae_channels[0]), sample_size=config.tile_px,
                         mid_block_add_attention=False)


def build_denoiser(config: SurrogateConfig) -> UNet2DModel:
    """The latent denoiser; the condition embedding enters as ``class_labels`` (width = time-embedding width)."""
    ch = tuple(config.unet_channels)
    down = ("DownBlock2D",) * (len(ch) - 1) + ("AttnDownBlock2D",)
    up = ("AttnUpBlock2D",) + ("UpBlock2D",) * (len(ch) - 1)
    return UNet2DModel(sample_size=config.latent_px, in_channels=config.latent_channels,
                       out_channels=config.latent_channels, block_out_channels=ch, layers_per_block=1,
                       down_block_types=down, up_block_types=up, class_embed_type="identity",
                       resnet_time_scale_shift=config.time_scale_shift,
                       norm_num_groups=min(16, ch[0]), attention_head_dim=32)


def build_condition_encoder(config: SurrogateConfig) -> ConditionEncoder:
    return ConditionEncoder(config.schema.dim + len(MAGNIFICATIONS), config.unet_channels[0] * 4,
                            hidden=config.embed_hidden, dropout_prob=config.condition_dropout)


def build_noise_schedule() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                         clip_sample=False)


def magnification_onehot(magnification: str, n: int) -> np.ndarray:
    if magnification not in MAGNIFICATIONS:
        raise ValueError(f"magnification must be one of {', '.join(MAGNIFICATIONS)}, got {magnification!r}")
    out = np.zeros((n, len(MAGNIFICATIONS)), np.float32)
    out[:, MAGNIFICATIONS.index(magnification)] = 1.0
    return out


class LatentDiffusionSurrogate:
    """Autoencoder + conditioned denoiser + condition encoder + noise schedule, with save/load and sampling.

    ``training_descriptors`` is the table of the training conditions and their simulated tiles' descriptors
    (``training_descriptors.json``, written by training); it travels with the model through fine-tuning.
    ``lab_descriptors`` holds lab samples measured without entering the image training set
    (``lab_descriptors.json``, ``morphloop surrogate measure-lab``): only the training-set GP learns from them.
    """

    def __init__(self, config: SurrogateConfig, vae: AutoencoderKL | None = None, unet: UNet2DModel | None = None,
                 encoder: ConditionEncoder | None = None, scheduler: DDPMScheduler | None = None,
                 training_descriptors: pd.DataFrame | None = None,
                 training_gp_state: dict[str, torch.Tensor] | None = None,
                 lab_descriptors: pd.DataFrame | None = None):
        self.config = config
        self.training_descriptors = training_descriptors
        self.lab_descriptors = lab_descriptors
        self.training_gp_state = training_gp_state
        self.schema = config.schema
        self.vae = vae if vae is not None else build_autoencoder(config)
        self.unet = unet if unet is not None else build_denoiser(config)
        self.encoder = encoder if encoder is not None else build_condition_encoder(config)
        self.scheduler = scheduler if scheduler is not None else build_noise_schedule()

    # ------------------------------------------------------------------------------------------ inputs
    def condition_vectors(self, conditions: Sequence[Mapping[str, Any]], magnification: str) -> np.ndarray:
        """``n x (d + 2)``: encoded conditions and the magnification one-hot."""
        return np.concatenate([self.schema.encode(conditions), magnification_onehot(magnification, len(conditions))],
                              axis=1)

    @property
    def gp_schema(self) -> ConditionSchema:
        """How the training-set GP encodes conditions: the model's schema with
        :attr:`SurrogateConfig.gp_log_conditions` over their log-range."""
        return self.schema.with_log_scale(self.config.gp_log_conditions)

    def gp_log_ratio_pairs(self) -> list[list[str]]:
        """Every log ratio some descriptor's GP takes, each once, in order of appearance."""
        pairs: list[list[str]] = []
        for descriptor_pairs in self.config.gp_log_ratios.values():
            pairs += [list(p) for p in descriptor_pairs if list(p) not in pairs]
        return pairs

    def gp_inputs(self, conditions: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """What the training-set GP takes: the encoded conditions, then the log ratios of
        :meth:`gp_log_ratio_pairs` (each descriptor's GP reads its own columns, :meth:`gp_input_columns`)."""
        encoded = self.gp_schema.encode(conditions)
        pairs = self.gp_log_ratio_pairs()
        return np.concatenate([encoded, self.schema.encode_log_ratios(conditions, pairs)], axis=1) if pairs \
            else encoded

    def gp_input_columns(self) -> list[list[int]] | None:
        """Per descriptor (:data:`DESCRIPTOR_NAMES` order), the columns of :meth:`gp_inputs` its GP reads; None
        when every GP reads them all."""
        if not self.config.gp_log_ratios:
            return None
        pairs, dim = self.gp_log_ratio_pairs(), self.schema.dim
        return [list(range(dim)) + [dim + pairs.index(list(p)) for p in self.config.gp_log_ratios.get(name, [])]
                for name in DESCRIPTOR_NAMES]

    def domain_distances(self, conditions: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Distance of each condition to the training design (warns when outside it)."""
        design = np.asarray(self.config.training_design, np.float32) if self.config.training_design else None
        spacing = None
        if design is not None and len(design) > 1:
            d = np.sqrt(((design[:, None] - design[None]) ** 2).sum(-1))
            np.fill_diagonal(d, np.inf)
            spacing = float(np.median(d.min(axis=1)))
        return warn_if_out_of_domain(self.schema, conditions, design, spacing)

    # ---------------------------------------------------------------------------------------- sampling
    def sampler(self, steps: int) -> DPMSolverMultistepScheduler:
        """DPM-Solver++ (2nd order) on the training noise schedule. Every setting is explicit: a scheduler loaded
        from disk marks defaults differently from a fresh one, and ``from_config`` would then disagree.

        Steps are spaced "leading" (first step at t ≈ 0.9 T): the cosine schedule's ᾱ at t = T − 1 is ~1e-9, and an
        ε-prediction's x0 estimate there is divided by √ᾱ — starting at T − 1 made the latents blow up (std ~10³).
        """
        cfg = self.scheduler.config
        sampler = DPMSolverMultistepScheduler(
            num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
            prediction_type=cfg.prediction_type, algorithm_type="dpmsolver++", solver_order=2,
            timestep_spacing="leading", steps_offset=1, lower_order_final=True)
        sampler.set_timesteps(steps)
        return sampler

    def initial_noise(self, n_per_condition: int, seed: int) -> torch.Tensor:
        """``n_per_condition x C x h x w``: noise for image k comes from ``seed`` and k only, so every condition
        sees the same noise (common random numbers: an optimiser's objective is smooth and deterministic)."""
        c, s = self.config.latent_channels, self.config.latent_px
        out = torch.empty(n_per_condition, c, s, s)
        for k in range(n_per_condition):
            g = torch.Generator().manual_seed(int(seed) * 100_003 + k)
            out[k] = torch.randn(c, s, s, generator=g)
        return out

    @torch.no_grad()
    def generate(self, conditions: Sequence[Mapping[str, Any]], magnification: str, n_per_condition: int = 4,
                 seed: int = 0, steps: int | None = None, guidance_scale: float | None = None,
                 batch_size: int = 64, progress=None, precision: str | bool = "auto",
                 guidance_interval: float | None = None, decode_batch: int = DECODE_BATCH) -> np.ndarray:
        """Generate tiles.

        ``guidance_scale`` and ``guidance_interval`` default to the magnification's values in the config.
        ``batch_size`` tiles are denoised together (the tiles depend slightly on it: under bfloat16, and in float32
        on CPUs whose kernels round per batch size, ~1e-6) and decoded
        ``decode_batch`` at a time (the same tiles for any value; :data:`DECODE_BATCH` is the fastest on CPU).

        ``precision``: ``auto`` (default) runs the denoiser and decoder under CPU bfloat16 autocast where the CPU
        has bfloat16 instructions (:func:`models.precision.native_bfloat16`; x2.2 faster on this project's 2-core
        EPYC) and in float32 elsewhere (emulated bfloat16 is slower); ``float32`` or ``bfloat16`` force one.
        bfloat16 tiles differ from float32 ones by 0.003 on average (a few pixels by up to 0.46, where the
        sampler's path diverges); both are deterministic.

        Returns
        -------
        np.ndarray
            ``n_conditions x n_per_condition x tile_px x tile_px`` float32 in [0, 1]. Identical for identical
            arguments (deterministic solver, seeded noise).
        """
        if n_per_condition < 1:
            raise ValueError(f"n_per_condition must be >= 1, got {n_per_condition}")
        decode_batch = check_decode_batch(decode_batch)
        steps, guidance, n_guided = self._sampling_setting(magnification, steps, guidance_scale, guidance_interval)
        for module in (self.vae, self.unet, self.encoder):
            module.eval()
        cond = torch.from_numpy(self.condition_vectors(conditions, magnification))
        noise = self.initial_noise(n_per_condition, seed)
        n_cond, k = len(conditions), n_per_condition
        flat_cond = cond.repeat_interleave(k, dim=0)
        flat_noise = noise.repeat(n_cond, 1, 1, 1)
        tiles = np.empty((n_cond * k, self.config.tile_px, self.config.tile_px), np.float32)
        bfloat16 = resolve_bfloat16(precision)
        for start in range(0, n_cond * k, batch_size):
            stop = min(start + batch_size, n_cond * k)
            with bfloat16_autocast(bfloat16):
                latents = self._denoise(flat_noise[start:stop].clone(), flat_cond[start:stop], steps, guidance,
                                        n_guided)
                latents = latents / self.config.latent_scale
                decoded = torch.cat([self.vae.decode(latents[i:i + decode_batch]).sample.float()
                                     for i in range(0, len(latents), decode_batch)])
            tiles[start:stop] = ((decoded[:, 0].clamp(-1, 1) + 1) / 2).numpy()
            if progress is not None:
                progress(stop - start)
        return tiles.reshape(n_cond, k, self.config.tile_px, self.config.tile_px)

    def _sampling_setting(self, magnification: str, steps: int | None, guidance_scale: float | None,
                          guidance_interval: float | None) -> tuple[int, float, int]:
        """``(steps, guidance scale, guided steps)`` of a call, the config's values filling what is not given."""
        steps = int(steps or self.config.sampling_steps)
        guidance = self.config.guidance_for(magnification) if guidance_scale is None else float(guidance_scale)
        n_guided = guided_steps(steps, self.config.guidance_interval_for(magnification) if guidance_interval is None
                                else guidance_interval)
        return steps, guidance, n_guided

    def denoiser_passes(self, magnification: str, steps: int | None = None, guidance_scale: float | None = None,
                        guidance_interval: float | None = None) -> int:
        """Denoiser evaluations per generated tile with :meth:`generate`'s arguments: one per solver step, and
        one more (the unconditional pass) per guided step when the guidance scale is not 1."""
        steps, guidance, n_guided = self._sampling_setting(magnification, steps, guidance_scale, guidance_interval)
        return steps + (min(n_guided, steps) if guidance != 1.0 else 0)

    def _denoise(self, latents: torch.Tensor, cond: torch.Tensor, steps: int, guidance: float,
                 n_guided: int | None = None) -> torch.Tensor:
        """``steps`` solver steps from ``latents``; the first ``n_guided`` (default: all) apply the guidance."""
        sampler = self.sampler(steps)
        emb = self.encoder(cond)
        both = torch.cat([self.encoder.unconditional(len(cond)), emb]) if guidance != 1.0 else None
        for i, t in enumerate(sampler.timesteps):
            if both is not None and (n_guided is None or i < n_guided):
                uncond, conditioned = self.unet(torch.cat([latents, latents]), t, class_labels=both).sample.chunk(2)
                eps = uncond + guidance * (conditioned - uncond)
            elif len(latents) == 1:
                # CPU bfloat16 kernels take another path for a batch of one: pad to two so a tile does not depend
                # on how many others share its batch (the predictor's contract; guided passes are never single)
                eps = self.unet(latents.repeat(2, 1, 1, 1), t, class_labels=emb.repeat(2, 1)).sample[:1]
            else:
                eps = self.unet(latents, t, class_labels=emb).sample
            latents = sampler.step(eps, t, latents).prev_sample
        return latents

    # ------------------------------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``vae/``, ``unet/``, ``condition_encoder/``, ``scheduler/`` and ``surrogate.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.vae.save_pretrained(directory / "vae")
        self.unet.save_pretrained(directory / "unet")
        self.encoder.save_pretrained(directory / "condition_encoder")
        self.scheduler.save_pretrained(directory / "scheduler")
        self.save_config(directory)
        if self.training_descriptors is not None:
            self.training_descriptors.to_json(directory / TRAINING_DESCRIPTORS_FILE, orient="records", indent=1)
        if self.lab_descriptors is not None:
            self.lab_descriptors.to_json(directory / LAB_DESCRIPTORS_FILE, orient="records", indent=1)
        self.save_training_gp(directory)
        return directory

    def save_training_gp(self, directory: str | Path) -> None:
        """Write the fitted training-set GP (``training_gp.safetensors``), if there is one."""
        if self.training_gp_state:
            from safetensors.torch import save_file

            atomic_write(Path(directory) / TRAINING_GP_FILE, lambda p: save_file(dict(self.training_gp_state), str(p)))

    def save_config(self, directory: str | Path) -> Path:
        """(Re)write ``surrogate.json`` only (the calibrations live there; the weights are unchanged)."""
        path = Path(directory) / CONFIG_FILE
        atomic_write(path, lambda p: p.write_text(json.dumps(self.config.to_json(), indent=1)))
        return path

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LatentDiffusionSurrogate:
        """Load a model written by :meth:`save_pretrained` (safetensors + config.json only)."""
        directory = Path(directory)
        fix = ("train one with `morphloop surrogate train --data DIR --out MODEL_DIR` or pass the shipped "
               "model (weights/surrogate)")
        if not (directory / CONFIG_FILE).is_file():
            raise SurrogateModelError(f"{directory} is not a surrogate model: {CONFIG_FILE} is missing; {fix}")
        try:
            config = SurrogateConfig.from_json(json.loads((directory / CONFIG_FILE).read_text()))
            quiet = {"low_cpu_mem_usage": False}  # no `accelerate` needed (and no warning about it)
            vae = AutoencoderKL.from_pretrained(directory / "vae", **quiet)
            unet = UNet2DModel.from_pretrained(directory / "unet", **quiet)
            encoder = ConditionEncoder.from_pretrained(directory / "condition_encoder", **quiet)
            scheduler = DDPMScheduler.from_pretrained(directory / "scheduler")
            table_path = directory / TRAINING_DESCRIPTORS_FILE
            table = pd.read_json(table_path, orient="records") if table_path.is_file() else None
            lab_path = directory / LAB_DESCRIPTORS_FILE
            lab = pd.read_json(lab_path, orient="records") if table is not None and lab_path.is_file() else None
            gp_state = None
            if table is not None and (directory / TRAINING_GP_FILE).is_file():
                from safetensors.torch import load_file

                gp_state = load_file(str(directory / TRAINING_GP_FILE))
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise SurrogateModelError(f"cannot load the surrogate in {directory}: {exc}; {fix}") from exc
        return cls(config, vae.eval(), unet.eval(), encoder.eval(), scheduler, table, gp_state, lab)

    def parameter_count(self) -> dict[str, int]:
        return {name: sum(p.numel() for p in m.parameters())
                for name, m in (("vae", self.vae), ("unet", self.unet), ("condition_encoder", self.encoder))}


#: The small model shipped with MorphoLoop (``morphloop surrogate train`` reproduces it; see README).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "weights" / "surrogate"
