"""InDI (Inversion by Direct Iteration) enhancement of tomography slices: arrays, training, files (paper 001).

Core pieces (config, network, loss, sampler) live in :mod:`models.indi_unet` and are re-exported here.

Training pairs one low-quality scan ``y`` (LQ, half the HQ resolution) with one high-quality scan ``x`` (HQ):

1. the LQ slice (or stack of slices) is upsampled 2x with bicubic interpolation onto the HQ grid
   (:func:`upsample_lq`) and registered onto the HQ with a sub-pixel shift (:func:`register_lq_to_hq`;
   the paper uses ``spam.register``, we use phase correlation, translation only);
2. both are mapped to [-1, 1] with their own 0.1/99.9 percentiles (stored in the config, so
   :meth:`InDIModel.enhance` maps new LQ data the same way and returns HQ grey values);
3. ``x_t = (1 - t) x + t y`` with ``t ~ U(0, 1)`` and ``t = 1`` for a share ``t_one_fraction`` of samples;
   the network ``F(x_t, t) -> x`` (:class:`InDIUNet`) is trained with the paper's loss (:func:`indi_loss`)
   on random patches with flips / 90-degree rotations (Adam, linear warm-up + cosine decay);
4. inference runs the deterministic InDI sampler from ``t = 1`` (the upsampled LQ) to ``t = 0`` in
   ``steps`` steps (:func:`models.indi_unet.indi_sample`; paper: quality improves up to 7-10 steps).

Stacks are ``rows x y x x`` arrays of xy-slices; each slice is enhanced on its own (as in the paper), so
``rows`` is not upsampled (interpolate it afterwards if isotropic voxels are needed).

Speed (2 CPU cores, ``torch.set_num_threads(2)``, ``channels_last``; ``benchmarks/bench_indi_speed.py``): the
shipped width-24 network enhances a 512 x 512 output slice at 8 steps in 1.8-2.2 s in float32 and about 1 s under
bfloat16 autocast, which :meth:`InDIModel.enhance` uses by default where the CPU has bfloat16 instructions.
Training runs in float32, about 275 ms per iteration at width 24 (16 patches of 64 x 64). Files:
``model.safetensors`` + ``config.json``; no pickle anywhere.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.registration import phase_cross_correlation

from models.checkpointing import STATE_FILE, atomic_write, load_optimizer, save_optimizer
from models.precision import bfloat16_autocast, resolve_bfloat16
from models.indi_unet import (InDIConfig, InDIUNet, count_parameters, indi_interpolate, indi_loss, indi_sample,
                              sample_times)

__all__ = ["InDIConfig", "InDIModel", "InDIModelError", "InDIUNet", "count_parameters", "indi_loss", "indi_sample",
           "register_lq_to_hq", "train_indi", "upsample_lq"]

WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
_PERCENTILES = (0.1, 99.9)


class InDIModelError(ValueError):
    """An InDI model directory is missing, unreadable or inconsistent; the message names the file and fix."""


#: Global gradient-norm clip of InDI training.
GRADIENT_CLIP_NORM = 1.0


def upsample_lq(lq: np.ndarray, factor: int = 2) -> np.ndarray:
    """Bicubic up-sampling of an LQ slice or stack onto the HQ grid.

    Cubic-spline interpolation (``scipy.ndimage.zoom(order=3, grid_mode=True)``, edges mirrored), the
    ``skimage.transform.rescale(order=3)`` kind of bicubic: it reproduces linear ramps exactly, unlike the
    Keys ``a = -0.75`` kernel of ``torch``/OpenCV, which leaves a period-2 ripple on every slope.

    Parameters
    ----------
    lq : np.ndarray
        ``h x w`` slice or ``rows x h x w`` stack.
    factor : int
        Integer zoom in y and x (rows of a stack are not upsampled: slices are enhanced one by one).

    Returns
    -------
    np.ndarray
        float32 ``factor*h x factor*w`` (or ``rows x factor*h x factor*w``); pixel-centre convention, so a
        ``factor x factor`` block average of the HQ lands on the LQ pixel.
    """
    arr = np.asarray(lq, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise ValueError(f"lq must be a 2-D slice or a 3-D stack (rows, y, x), got shape {arr.shape}")
    slices = [ndi.zoom(s, int(factor), order=3, grid_mode=True, mode="reflect")
              for s in arr.reshape((-1,) + arr.shape[-2:])]
    return np.stack(slices).astype(np.float32).reshape(arr.shape[:-2] + slices[0].shape)


def register_lq_to_hq(lq_up: np.ndarray, hq: np.ndarray, upsample_factor: int = 20,
                      max_rows: int = 16) -> tuple[np.ndarray, tuple[float, float]]:
    """Sub-pixel translation of the upsampled LQ onto the HQ (phase correlation, 1/``upsample_factor`` px).

    Parameters
    ----------
    lq_up, hq : np.ndarray
        Same-shape ``H x W`` slices or ``rows x H x W`` stacks.
    upsample_factor : int
        Registration precision 1/``upsample_factor`` px.
    max_rows : int
        For stacks, the in-plane shift is the median over at most this many evenly spaced rows and is
        applied to every row (the volumes differ by a rigid translation).

    Returns
    -------
    registered : np.ndarray
        float32 ``lq_up`` shifted by ``shift`` (cubic spline, edges replicated).
    shift : tuple of float
        ``(dy, dx)`` in HQ pixels that moves ``lq_up`` onto ``hq``.
    """
    lq_up, hq = np.asarray(lq_up, dtype=np.float32), np.asarray(hq, dtype=np.float32)
    if lq_up.shape != hq.shape or lq_up.ndim not in (2, 3):
        raise ValueError(f"lq_up and hq must be same-shape 2-D or 3-D arrays, got {lq_up.shape} and {hq.shape}")
    lq3, hq3 = lq_up.reshape((-1,) + lq_up.shape[-2:]), hq.reshape((-1,) + hq.shape[-2:])
    rows = np.unique(np.linspace(0, len(lq3) - 1, min(max_rows, len(lq3))).round().astype(int))
    shifts = [phase_cross_correlation(hq3[r] - hq3[r].mean(), lq3[r] - lq3[r].mean(),
                                      upsample_factor=upsample_factor, normalization=None)[0] for r in rows]
    dy, dx = (float(v) for v in np.median(np.asarray(shifts), axis=0))
    registered = np.stack([ndi.shift(s, (dy, dx), order=3, mode="nearest") for s in lq3]).astype(np.float32)
    return registered.reshape(lq_up.shape), (dy, dx)


def _normalise(a: np.ndarray, low: float, high: float) -> np.ndarray:
    return (2.0 * (np.asarray(a, dtype=np.float32) - low) / max(high - low, 1e-12) - 1.0).astype(np.float32)


class InDIModel:
    """A trained InDI network with its config (architecture, intensity mapping).

    Parameters
    ----------
    network : InDIUNet
    config : InDIConfig
        Must carry ``lq_low, lq_high, hq_low, hq_high`` to :meth:`enhance`.
    """

    def __init__(self, network: InDIUNet, config: InDIConfig, training_losses: list[float] | None = None,
                 iteration: int = 0) -> None:
        self.network, self.config = network, config
        self.training_losses = list(training_losses or [])
        self.iteration = int(iteration)

    def _mapping(self) -> tuple[float, float, float, float]:
        cfg = self.config
        values = (cfg.lq_low, cfg.lq_high, cfg.hq_low, cfg.hq_high)
        if any(v is None for v in values):
            raise InDIModelError("config has no intensity mapping (lq_low ... hq_high): train the model with "
                                 "train_indi or load a trained one")
        return values

    def to_network_input(self, lq: np.ndarray) -> np.ndarray:
        """LQ slice/stack -> upsampled, normalised float32 ``H x W`` / ``rows x H x W`` (the sampler's ``y``)."""
        lq_low, lq_high, _, _ = self._mapping()
        return _normalise(upsample_lq(lq), lq_low, lq_high)

    def from_network_output(self, x: np.ndarray) -> np.ndarray:
        """Normalised network output -> HQ grey values (float32)."""
        _, _, low, high = self._mapping()
        return ((np.asarray(x, dtype=np.float32) + 1.0) * 0.5 * (high - low) + low).astype(np.float32)

    def enhance(self, lq: np.ndarray, steps: int | None = None, *, batch_rows: int = 1,
                precision: str | bool = "auto") -> np.ndarray:
        """Enhance an LQ slice or stack: bicubic 2x, then ``steps`` deterministic InDI steps from ``t = 1``.

        Parameters
        ----------
        lq : np.ndarray
            ``h x w`` slice or ``rows x h x w`` stack, in the LQ grey values of the training scan.
        steps : int, optional
            Sampler steps (default ``config.steps``); 1 is plain regression ``F(y, 1)``.
        batch_rows : int
            Slices per network call (1 is fastest on CPU: 4 was about 20 % slower per slice, cache-bound).
        precision : {"auto", "float32", "bfloat16"}
            ``auto`` samples under CPU bfloat16 autocast where the CPU runs bfloat16 natively
            (:func:`models.precision.native_bfloat16`), else in float32. On this project's 2-core EPYC bfloat16
            was x1.8-2.0 faster (512² output slice, 8 steps: 0.98 s against 1.78 s) and the enhanced slices
            differ from float32 by 0.14 % of their spread (``benchmarks/bench_indi_speed.py``).

        Returns
        -------
        np.ndarray
            float32 ``2h x 2w`` (or ``rows x 2h x 2w``) in the HQ grey values.
        """
        steps = int(self.config.steps if steps is None else steps)
        y = self.to_network_input(lq)
        stack = y.reshape((-1, 1) + y.shape[-2:])
        net = self.network.eval().to(memory_format=torch.channels_last)
        out = np.empty_like(stack)
        with torch.inference_mode(), bfloat16_autocast(resolve_bfloat16(precision)):
            for start in range(0, len(stack), max(1, int(batch_rows))):
                batch = torch.from_numpy(stack[start:start + batch_rows]).contiguous(memory_format=torch.channels_last)
                out[start:start + batch_rows] = indi_sample(net, batch, steps).numpy()
        return self.from_network_output(out.reshape(y.shape))

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created); returns it."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.network.state_dict().items()}
        atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
        atomic_write(directory / CONFIG_FILE, lambda p: p.write_text(json.dumps(self.config.to_json(), indent=2)))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> InDIModel:
        """Load a model written by :meth:`save` (or a ``train_indi`` checkpoint directory).

        Raises
        ------
        InDIModelError
            ``config.json`` or ``model.safetensors`` missing, unreadable or not matching each other.
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        fix = f"re-create it with InDIModel.save('{directory}') or train_indi(..., checkpoint_dir='{directory}')"
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise InDIModelError(f"InDI model file missing: {path}; {fix}")
        try:
            config = InDIConfig.from_json(json.loads(config_path.read_text()))
        except (ValueError, TypeError, AttributeError) as exc:
            raise InDIModelError(f"corrupt InDI config {config_path} ({exc}); {fix}") from exc
        try:
            state = load_file(str(weights_path))
        except Exception as exc:  # safetensors raises its own error types
            raise InDIModelError(f"corrupt InDI weights {weights_path} ({exc}); {fix}") from exc
        network = InDIUNet(config)
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise InDIModelError(f"weights {weights_path} do not match the architecture in {config_path} "
                                 f"({str(exc).splitlines()[0]}); {fix}") from exc
        return cls(network.eval(), config)


# --------------------------------------------------------------------------------------------- training
def _training_pair(lq: np.ndarray, hq: np.ndarray, config: InDIConfig) -> tuple[np.ndarray, np.ndarray]:
    """Upsample, register, crop the registration border and normalise: ``rows x H x W`` (y, x) in [-1, 1]."""
    lq, hq = np.asarray(lq, dtype=np.float32), np.asarray(hq, dtype=np.float32)
    if lq.ndim != hq.ndim or lq.ndim not in (2, 3) or (lq.ndim == 3 and lq.shape[0] != hq.shape[0]):
        raise ValueError(f"lq and hq must both be slices or stacks with equal rows, got {lq.shape} and {hq.shape}")
    lq_up = upsample_lq(lq)
    if lq_up.shape != hq.shape:
        raise ValueError(f"hq must be twice lq in y and x: upsampled lq {lq_up.shape} vs hq {hq.shape}")
    registered, (dy, dx) = register_lq_to_hq(lq_up, hq)
    m = int(math.ceil(max(abs(dy), abs(dx)))) + 2
    y3, x3 = registered.reshape((-1,) + hq.shape[-2:]), hq.reshape((-1,) + hq.shape[-2:])
    if min(hq.shape[-2:]) - 2 * m >= 2 ** config.depth:
        y3, x3 = y3[:, m:-m, m:-m], x3[:, m:-m, m:-m]
    if config.lq_low is None:
        config.lq_low, config.lq_high = (float(v) for v in np.percentile(y3, _PERCENTILES))
        config.hq_low, config.hq_high = (float(v) for v in np.percentile(x3, _PERCENTILES))
    return (_normalise(y3, config.lq_low, config.lq_high),
            np.clip(_normalise(x3, config.hq_low, config.hq_high), -1.0, 1.0))


def _sample_batch(y: np.ndarray, x: np.ndarray, config: InDIConfig,
                  rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random augmented patches and times: ``x_t, x`` as ``B x 1 x P x P`` and ``t`` as ``B``."""
    step = 2 ** config.depth
    p = max(step, min(config.patch_size, *y.shape[-2:]) // step * step)
    ys, xs = np.empty((config.batch_size, 1, p, p), np.float32), np.empty((config.batch_size, 1, p, p), np.float32)
    for b in range(config.batch_size):
        r = rng.integers(len(y))
        i, j = rng.integers(y.shape[1] - p + 1), rng.integers(y.shape[2] - p + 1)
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        for src, dst in ((y, ys), (x, xs)):
            patch = np.rot90(src[r, i:i + p, j:j + p], k)
            dst[b, 0] = patch[:, ::-1] if flip else patch
    t, hq_patches = sample_times(config.batch_size, config.t_one_fraction, rng), torch.from_numpy(xs)
    x_t = indi_interpolate(hq_patches, torch.from_numpy(ys), t)
    channels_last = torch.channels_last
    return x_t.contiguous(memory_format=channels_last), hq_patches.contiguous(memory_format=channels_last), t


def _learning_rate(config: InDIConfig, progress: float) -> float:
    """One-cycle style: linear warm-up over the first 5 % of the budget, cosine decay to 2 % of the peak."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < 0.05:
        return config.learning_rate * (0.1 + 0.9 * progress / 0.05)
    cosine = 0.5 * (1.0 + math.cos(math.pi * (progress - 0.05) / 0.95))
    return config.learning_rate * (0.02 + 0.98 * cosine)


def _save_checkpoint(directory: Path, model: InDIModel, optimizer: torch.optim.Optimizer,
                     rng: np.random.Generator) -> None:
    """Model files + ``optimizer.safetensors`` + ``training_state.json`` (iteration, losses, RNG state)."""
    model.save(directory)
    save_optimizer(directory, optimizer, {"iteration": model.iteration, "losses": model.training_losses,
                                          "rng_state": rng.bit_generator.state})


def _load_checkpoint(directory: Path, network: InDIUNet,
                     optimizer: torch.optim.Optimizer) -> tuple[int, list[float], dict]:
    """Restore optimizer state; returns ``(iteration, losses, rng_state)``."""
    state = load_optimizer(directory, network.parameters(), optimizer)
    return int(state["iteration"]), [float(v) for v in state["losses"]], state["rng_state"]


def train_indi(lq: np.ndarray, hq: np.ndarray, config: InDIConfig | None = None, *, minutes: float = 2.0,
               max_iterations: int | None = None, progress: Callable[[int, float], None] | None = None,
               checkpoint_dir: str | Path | None = None, resume: bool = False) -> InDIModel:
    """Train InDI on one registered LQ/HQ pair (slices or stacks), as paper 001 does.

    Parameters
    ----------
    lq : np.ndarray
        ``h x w`` LQ slice or ``rows x h x w`` stack.
    hq : np.ndarray
        ``2h x 2w`` HQ slice or ``rows x 2h x 2w`` stack of the same region.
    config : InDIConfig, optional
        Defaults to ``InDIConfig()``; a copy is stored in the returned model with the intensity mapping.
    minutes : float
        Wall-clock budget of this call; training stops at it or at ``max_iterations`` (whichever first).
    max_iterations : int, optional
        Total iterations (counting those of a resumed checkpoint). When given, the learning-rate schedule
        follows iterations, otherwise this call's elapsed time.
    progress : callable, optional
        ``progress(iteration, loss)`` after every iteration (1-based, loss of that batch).
    checkpoint_dir : path, optional
        Every ``config.checkpoint_every`` iterations and at the end: ``model.safetensors``, ``config.json``,
        ``optimizer.safetensors`` and ``training_state.json`` (iteration, losses, RNG state).
    resume : bool
        Continue from ``checkpoint_dir`` if it holds a checkpoint (its config wins; a given config with a
        different architecture raises ``ValueError``); otherwise start afresh.

    Returns
    -------
    InDIModel
        With ``training_losses`` (one per iteration) and ``iteration``.
    """
    config = dataclasses.replace(config) if config is not None else InDIConfig()
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    resuming = bool(resume and ckpt is not None and (ckpt / STATE_FILE).is_file())
    if resuming:
        saved = InDIModel.load(ckpt)
        if saved.config.architecture_key() != config.architecture_key():
            raise ValueError(f"checkpoint {ckpt} has architecture {saved.config.architecture_key()}, "
                             f"the given config {config.architecture_key()}: pass resume=False or a matching config")
        config, network = saved.config, saved.network
    else:
        torch.manual_seed(config.seed)
        network = InDIUNet(config)
    y, x = _training_pair(lq, hq, config)
    network.train().to(memory_format=torch.channels_last)  # 2-3x faster on CPU (oneDNN)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    model = InDIModel(network, config)
    rng = np.random.default_rng(config.seed)
    if resuming:
        model.iteration, model.training_losses, rng_state = _load_checkpoint(ckpt, network, optimizer)
        rng.bit_generator.state = rng_state
    start, budget_s = time.perf_counter(), max(float(minutes), 0.0) * 60.0
    while max_iterations is None or model.iteration < max_iterations:
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            break
        frac = model.iteration / max_iterations if max_iterations else elapsed / max(budget_s, 1e-9)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, frac)
        x_t, target, t = _sample_batch(y, x, config, rng)
        loss = indi_loss(network(x_t, t), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # the tanh output saturates if one step pushes the residual far: clip so training cannot diverge into it
        torch.nn.utils.clip_grad_norm_(network.parameters(), max_norm=GRADIENT_CLIP_NORM)
        optimizer.step()
        model.iteration += 1
        model.training_losses.append(float(loss.detach()))
        if progress is not None:
            progress(model.iteration, model.training_losses[-1])
        if ckpt is not None and config.checkpoint_every > 0 and model.iteration % config.checkpoint_every == 0:
            _save_checkpoint(ckpt, model, optimizer, rng)
    if ckpt is not None:
        _save_checkpoint(ckpt, model, optimizer, rng)
    network.eval()
    return model
