"""Prefect flows of the surrogate: training from scratch (with checkpoints and resume) and fine-tuning.

``surrogate-train``: load the tile table -> train the autoencoder -> train the denoiser -> calibrate the tile
descriptors against the samples' true morphology -> save the model -> a markdown artifact with the figures.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import tifffile
import torch
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.surrogate_data import (condition_schema, conditions_of, load_training_set, measure_lab_samples,
                                  measure_training_samples)
from models.surrogate.descriptors import (DESCRIPTOR_NAMES, MEASURED_PREFIX, TRAINING_DESCRIPTORS_FILE,
                                          describe_low_tiles, fit_affine, tile_textures)
from models.surrogate.model import LatentDiffusionSurrogate, SurrogateConfig
from models.surrogate.training import TileSet, TrainingBudget, fine_tune, train_from_scratch

SUMMARY_FILE = "training_summary.json"


def load_tiles(data_dir: str | Path, table: pd.DataFrame) -> TileSet:
    """Read the tiles listed in ``table`` (paths relative to ``data_dir``) into a :class:`TileSet`."""
    data_dir = Path(data_dir)
    tiles = np.stack([tifffile.imread(data_dir / p).astype(np.float32) for p in table["path"]])
    if tiles.max() > 1.0:  # 16-bit files
        tiles = tiles / 65535.0
    return TileSet(tiles.astype(np.float32), conditions_of(table), table["magnification"].tolist())


def describe_training_conditions(tiles: TileSet, table: pd.DataFrame, pixel_size_um: dict) -> pd.DataFrame:
    """One row per condition: its conditions, the pooled (uncalibrated) descriptors of its simulated tiles
    (``tile_*``) and the sample's true morphology (``true_*``). Kept with the model for the report's baselines."""
    rows = []
    for cid, group in table.groupby("condition_id"):
        idx = group.index.to_numpy()
        low = [i for i in idx if tiles.magnifications[i] == "low"]
        high = [i for i in idx if tiles.magnifications[i] == "high"]
        described = describe_low_tiles(tiles.tiles[low], pixel_size_um["low"])
        textures = tile_textures(tiles.tiles[high], pixel_size_um["high"])
        textures = textures[np.isfinite(textures)]  # NaN where no ROI qualifies; none at all: NaN, no warning
        rows.append({"condition_id": int(cid), **{c: group[c].iloc[0] for c in group.columns if c.startswith("cond_")},
                     "tile_d50_um": described["d50_um"], "tile_sphericity_mean": described["sphericity_mean"],
                     "tile_sphericity_std": described["sphericity_std"],
                     "tile_texture": float(textures.mean()) if len(textures) else float("nan"),
                     **{c: group[c].iloc[0] for c in group.columns if c.startswith("true_")}})
    return pd.DataFrame(rows)


@torch.no_grad()
def reconstruct(model: LatentDiffusionSurrogate, tiles: np.ndarray, batch: int = 64) -> np.ndarray:
    """Tiles passed through the trained autoencoder (posterior mean): what the decoder can show of them."""
    out = np.empty_like(tiles)
    for i in range(0, len(tiles), batch):
        x = torch.from_numpy(tiles[i:i + batch] * 2.0 - 1.0)[:, None]
        out[i:i + batch] = ((model.vae.decode(model.vae.encode(x).latent_dist.mean).sample[:, 0].clamp(-1, 1) + 1)
                            / 2).numpy()
    return out


def calibrate_descriptors(described: pd.DataFrame) -> dict:
    """Affine maps from pooled tile descriptors to the samples' true D50 and texture (training split).

    Tiles are small: particles cut by a 128-px tile's border are excluded (D50 reads low for large particles)
    and a 128-px texture ROI reads a little higher than the 256-px ROIs of ``describe``. Generated tiles also
    pass through the decoder, which softens the finest platelets; so the maps are fitted on the training tiles
    *as the autoencoder reconstructs them* (:func:`reconstruct`), the closest stand-in for generated tiles with
    a known truth. Applied to generated tiles, they put predictions on the scale a full-frame ``describe``
    reports.
    """
    return {"d50_calibration": fit_affine(described["tile_d50_um"], described["true_d50_um"]),
            "texture_calibration": fit_affine(described["tile_texture"], described["true_texture"])}


@task(name="describe-training-conditions")
def describe_training_task(tiles: TileSet, table: pd.DataFrame, pixel_size_um: dict) -> pd.DataFrame:
    return describe_training_conditions(tiles, table, pixel_size_um)


@task(name="calibrate-generation")
def calibrate_generation_task(model_dir: str, n_conditions: int = 64, n_images: int = 4, seed: int = 1,
                              model: LatentDiffusionSurrogate | None = None) -> dict:
    return calibrate_generation(model_dir, n_conditions, n_images, seed, model)


def calibrate_generation(model_dir: str | Path, n_conditions: int = 64, n_images: int = 4, seed: int = 1,
                         model: LatentDiffusionSurrogate | None = None) -> dict:
    """Fit a saved model's generation calibration on its training conditions and write it into its config.

    ``model`` is the same model already in memory (the training flow's), which saves loading it again.
    """
    from models.surrogate.calibration import fit_generation_calibration
    from models.surrogate.predictor import SurrogatePredictor

    predictor = SurrogatePredictor(model) if model is not None else SurrogatePredictor.from_pretrained(model_dir)
    fit = fit_generation_calibration(predictor, model_dir, n_conditions, n_images, seed)
    predictor.surrogate.config.generation_calibration = fit["generation_calibration"]
    predictor.surrogate.save_config(model_dir)
    return fit


def stack_descriptors(model_dir: str | Path, n_conditions: int = 160, n_images: int = 2, steps: int | None = None,
                      seed: int = 1) -> dict:
    """Fit a saved model's descriptor stack for ``steps`` solver steps (default: the model's) and ``n_images``
    tiles on its training conditions; it replaces a stack of the same setting in ``surrogate.json``."""
    from models.surrogate.calibration import fit_stack_on_training
    from models.surrogate.predictor import SurrogatePredictor

    predictor = SurrogatePredictor.from_pretrained(model_dir, steps=steps)
    stack = fit_stack_on_training(predictor, n_conditions, n_images, seed)
    cfg = predictor.surrogate.config
    cfg.descriptor_stacks = [s for s in cfg.descriptor_stacks
                             if (int(s["steps"]), int(s["n_images"])) != (stack.steps, stack.n_images)]
    cfg.descriptor_stacks.append(stack.to_json())
    predictor.surrogate.save_config(model_dir)
    predictor.training_gp()  # fitted once here and shipped, so that every process predicts the same numbers
    predictor.surrogate.save_training_gp(model_dir)
    return stack.to_json()


def measure_training(model_dir: str | Path, data_seed: int = 0, world_seed: int = 0, workers: int = 2,
                     restack: bool = True, progress: Callable[[int], None] | None = None,
                     reuse_from: str | Path | None = None, keep_hyperparameters: bool = False) -> dict:
    """Add what the lab measures of a saved model's training samples (``measured_*`` columns of
    ``training_descriptors.json``, :func:`flows.surrogate_data.measure_training_samples`), refit and save the
    training-set GP on them, and (``restack``) refit every descriptor stack the model has, since a stack fitted
    against the old values would predict on their scale. Returns R² of the tile descriptors against the
    measured ones (how far apart the two scales are) and the refitted stacks.

    ``reuse_from``: another model folder (e.g. the one this model was warm-started from) whose measured training
    samples are the same samples (same id, conditions and true morphology); those are not made again.
    ``keep_hyperparameters``: the GP keeps its length scales and noise (as :func:`measure_lab`)."""
    from models.checkpointing import atomic_write
    from models.surrogate.calibration import training_measured_descriptors, training_tile_descriptors
    from models.surrogate.fidelity import r2_score

    model_dir = Path(model_dir)
    model = LatentDiffusionSurrogate.from_pretrained(model_dir)
    if model.training_descriptors is None:
        raise ValueError(f"{model_dir} has no {TRAINING_DESCRIPTORS_FILE}")
    if keep_hyperparameters and model.training_gp_state is None:
        raise ValueError(f"{model_dir} has no fitted training-set GP whose hyperparameters could be kept; "
                         "measure without --keep-hyperparameters")
    known = _saved_table(reuse_from, TRAINING_DESCRIPTORS_FILE)
    table = measure_training_samples(model.training_descriptors, data_seed=data_seed, world_seed=world_seed,
                                     workers=workers, progress=progress, known=known)
    atomic_write(model_dir / TRAINING_DESCRIPTORS_FILE,
                 lambda path: table.to_json(path, orient="records", indent=1))
    model.training_descriptors = table
    _, tile = training_tile_descriptors(table, model.config)
    _, measured = training_measured_descriptors(table, model.config)
    summary = {"n_conditions": int(len(table)), "n_reused": table.attrs["n_reused"],
               "unmeasured": {k: int(np.isnan(measured[:, j]).sum()) for j, k in enumerate(DESCRIPTOR_NAMES)},
               "r2_tile_vs_measured": {k: r2_score(measured[:, j], tile[:, j]) for j, k in enumerate(DESCRIPTOR_NAMES)}}
    _refit_gp(model_dir, model, keep_hyperparameters)
    return {**summary, "stacks": _restack(model_dir, model) if restack else []}


def measure_lab(model_dir: str | Path, n: int, world_seed: int = 0, workers: int = 2, restack: bool = True,
                progress: Callable[[int], None] | None = None, keep_hyperparameters: bool = False,
                reuse_from: str | Path | None = None) -> dict:
    """Make and measure ``n`` more lab samples for a saved model (:func:`flows.surrogate_data.measure_lab_samples`,
    continuing the design after the samples it already has), append them to ``lab_descriptors.json``, refit the
    training-set GP on training and lab samples, and (``restack``) refit every descriptor stack. Returns the
    counts, the GP's 5-fold cross-validated R² on all its samples, and the refitted stacks.

    ``keep_hyperparameters``: the GP keeps its fitted length scales and noise and conditions on all samples
    instead of fitting them again. An exact fit costs O(n³) per optimiser step (219 s on 1280 samples on 2
    cores, ~15x that on 3200); conditioning costs one Cholesky factorisation (seconds).

    ``reuse_from``: another model folder whose lab samples (``lab_descriptors.json``, same world) are the same
    experiments; those are taken from there instead of being made again."""
    from models.checkpointing import atomic_write
    from models.surrogate.descriptors import LAB_DESCRIPTORS_FILE

    model_dir = Path(model_dir)
    model = LatentDiffusionSurrogate.from_pretrained(model_dir)
    if model.training_descriptors is None:
        raise ValueError(f"{model_dir} has no {TRAINING_DESCRIPTORS_FILE}")
    if keep_hyperparameters and model.training_gp_state is None:
        raise ValueError(f"{model_dir} has no fitted training-set GP whose hyperparameters could be kept; "
                         "add lab samples once without --keep-hyperparameters")
    old = model.lab_descriptors
    start = 0 if old is None else int(old["sample_index"].max()) + 1
    known = _saved_table(reuse_from, LAB_DESCRIPTORS_FILE)
    new = measure_lab_samples(n, start=start, world_seed=world_seed, workers=workers, progress=progress,
                              known=known)
    table = new if old is None else pd.concat([old, new], ignore_index=True)
    atomic_write(model_dir / LAB_DESCRIPTORS_FILE, lambda path: table.to_json(path, orient="records", indent=1))
    model.lab_descriptors = table
    gp = _refit_gp(model_dir, model, keep_hyperparameters)
    summary = {"n_new": int(len(new)), "n_reused": new.attrs["n_reused"],
               "n_lab_samples": int(len(table)),
               "n_training_samples": int(len(model.training_descriptors)),
               "unmeasured": {k: int(new[MEASURED_PREFIX + k].isna().sum()) for k in DESCRIPTOR_NAMES},
               "gp_cv_r2": _gp_cv_r2(model, gp)}
    return {**summary, "stacks": _restack(model_dir, model) if restack else []}


def fit_gp(model_dir: str | Path, fit_rows: int | None = None,
           log_ratios: Mapping[str, Sequence[Sequence[str]]] | None = None, restack: bool = True,
           log_conditions: Sequence[str] | None = None) -> dict:
    """Fit a saved model's training-set GP again from scratch (new length scales and noise): on ``fit_rows``
    random samples, then conditioned on all (:class:`~models.surrogate.stacking.TrainingSetGP`), with
    ``log_ratios`` as extra inputs when given (:attr:`~models.surrogate.model.SurrogateConfig.gp_log_ratios`)
    and ``log_conditions`` read over their log-range when given
    (:attr:`~models.surrogate.model.SurrogateConfig.gp_log_conditions`; None keeps the model's, for both).
    Saves the GP and config, (``restack``) refits every descriptor stack, and returns the GP's 5-fold
    cross-validated R² on all its samples and the stacks."""
    from models.surrogate.predictor import SurrogatePredictor

    model_dir = Path(model_dir)
    model = LatentDiffusionSurrogate.from_pretrained(model_dir)
    if model.training_descriptors is None:
        raise ValueError(f"{model_dir} has no {TRAINING_DESCRIPTORS_FILE}")
    if log_ratios is not None:
        ratios = {name: [list(pair) for pair in pairs] for name, pairs in log_ratios.items()}
        unknown = sorted(set(ratios) - set(DESCRIPTOR_NAMES))
        if unknown:
            raise ValueError(f"log ratios for unknown descriptor(s) {unknown}; known: {list(DESCRIPTOR_NAMES)}")
        for pairs in ratios.values():  # a bad pair fails before anything is rewritten
            model.schema.encode_log_ratios([], pairs)
        model.config.gp_log_ratios = ratios
    if log_conditions is not None:
        model.schema.with_log_scale(log_conditions)  # a bad name fails before anything is rewritten
        model.config.gp_log_conditions = list(dict.fromkeys(log_conditions))
    if log_ratios is not None or log_conditions is not None:
        model.save_config(model_dir)
    gp = _refit_gp(model_dir, model, fit_rows=fit_rows)
    summary = {"n_samples": int(len(SurrogatePredictor(model).training_examples()[0])), "fit_rows": fit_rows,
               "gp_log_ratios": model.config.gp_log_ratios, "gp_log_conditions": model.config.gp_log_conditions,
               "gp_cv_r2": _gp_cv_r2(model, gp)}
    return {**summary, "stacks": _restack(model_dir, model) if restack else []}


def _saved_table(model_dir: str | Path | None, name: str) -> pd.DataFrame | None:
    """The table ``name`` saved in another model folder (None without a folder)."""
    if model_dir is None:
        return None
    path = Path(model_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: --reuse-from needs a model folder holding {name}")
    return pd.read_json(path, orient="records")


def _gp_cv_r2(model: LatentDiffusionSurrogate, gp) -> dict[str, float]:
    """5-fold cross-validated R² of ``model``'s training-set GP on all its samples (its hyperparameters kept)."""
    from models.surrogate.fidelity import r2_score
    from models.surrogate.predictor import SurrogatePredictor
    from models.surrogate.stacking import cross_validated_gp

    conditions, values = SurrogatePredictor(model).training_examples()
    cv = cross_validated_gp(model.gp_inputs(conditions), values, np.arange(len(conditions)),
                            hyperparameters=gp.state(), input_columns=model.gp_input_columns())
    return {k: r2_score(values[np.isfinite(values[:, j]), j], cv[np.isfinite(values[:, j]), j])
            for j, k in enumerate(DESCRIPTOR_NAMES)}


def _refit_gp(model_dir: Path, model: LatentDiffusionSurrogate, keep_hyperparameters: bool = False,
              fit_rows: int | None = None):
    """Refit and save ``model``'s training-set GP on what it now holds (``keep_hyperparameters``: condition on it
    with the saved GP's hyperparameters; else fit them, on ``fit_rows`` samples when given); returns it."""
    from models.surrogate.model import TRAINING_GP_FILE
    from models.surrogate.predictor import SurrogatePredictor
    from models.surrogate.stacking import hyperparameters_only

    # the saved GP was fitted on other values: its outcome scaling (and, refitted, its hyperparameters) go
    model.training_gp_state = hyperparameters_only(model.training_gp_state) if keep_hyperparameters else None
    (model_dir / TRAINING_GP_FILE).unlink(missing_ok=True)
    gp = SurrogatePredictor(model).training_gp(fit_rows=fit_rows)
    model.save_training_gp(model_dir)
    return gp


def _restack(model_dir: Path, model: LatentDiffusionSurrogate) -> list[dict]:
    """Refit every descriptor stack ``model`` has (a stack fitted against the old GP weighs the wrong terms)."""
    return [stack_descriptors(model_dir, int(old["n_conditions"]), int(old["n_images"]), int(old["steps"]))
            for old in list(model.config.descriptor_stacks)]


@flow(name="surrogate-train")
def train_surrogate(data_dir: str, out_dir: str, minutes: float = 30.0, resume: bool = False, seed: int = 0,
                    vae_fraction: float = 0.2, progress: Callable[[str, int, float], None] | None = None,
                    init_from: str | None = None, low_magnification_weight: float = 1.0,
                    calibration_conditions: int = 64) -> dict:
    """Train a surrogate from scratch on the training split of ``data_dir`` and save it in ``out_dir``.

    Checkpoints go to ``out_dir/checkpoint`` every 100 steps; ``resume=True`` continues from there.
    ``init_from`` (a trained model folder) continues that model's denoiser for the whole budget instead (its
    autoencoder is kept); ``low_magnification_weight`` > 1 draws low-magnification tiles more often. At the
    end the generation calibration is fitted on ``calibration_conditions`` training conditions (0: none).
    Returns the training summary (also written to ``out_dir/training_summary.json``).
    """
    t0 = time.monotonic()
    table = load_training_set(data_dir)
    train_rows = table[table["split"] == "train"].reset_index(drop=True)
    if train_rows.empty:
        raise ValueError(f"{data_dir}: the table has no 'train' rows; rebuild it with `morphloop surrogate build-data`")
    tiles = load_tiles(data_dir, train_rows)
    pixel_size_um = {mag: float(train_rows.loc[train_rows["magnification"] == mag, "pixel_size_um"].iloc[0])
                     for mag in ("low", "high")}
    config = SurrogateConfig(conditions=condition_schema(), tile_px=int(tiles.tiles.shape[-1]),
                             pixel_size_um=pixel_size_um)
    described = describe_training_task(tiles, train_rows, pixel_size_um)
    if init_from is not None:
        vae_fraction = 0.0
    budget = TrainingBudget(vae_minutes=minutes * vae_fraction, unet_minutes=minutes * (1 - vae_fraction),
                            low_magnification_weight=low_magnification_weight)
    out = Path(out_dir)
    model, summary = train_from_scratch(config, tiles, budget, seed=seed, checkpoint_dir=out / "checkpoint",
                                        resume=resume, progress=progress, init_from=init_from)
    decoded = TileSet(reconstruct(model, tiles.tiles), tiles.conditions, tiles.magnifications)
    model.config.__dict__.update(calibrate_descriptors(describe_training_task(decoded, train_rows, pixel_size_um)))
    model.config.guidance_scale = config.guidance_scale  # this release's sampling default, also on a warm start
    model.training_descriptors = described  # saved beside the weights (baselines, calibration, stacking)
    model.save_pretrained(out)
    calibration = (calibrate_generation_task(str(out), calibration_conditions, model=model)
                   if calibration_conditions else None)
    summary.update({"data_dir": str(data_dir), "n_tiles": int(len(tiles.tiles)),
                    "n_conditions": int(train_rows["condition_id"].nunique()), "minutes_budget": minutes,
                    "low_magnification_weight": low_magnification_weight,
                    "seed": seed, "wall_seconds": time.monotonic() - t0,
                    "parameters": model.parameter_count(),
                    "d50_calibration": model.config.d50_calibration,
                    "texture_calibration": model.config.texture_calibration,
                    "generation_calibration": calibration})
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    create_markdown_artifact(
        key="surrogate-training",
        markdown="\n".join(["| item | value |", "| --- | --- |"]
                           + [f"| {k} | {v} |" for k, v in summary.items() if not isinstance(v, dict)]),
        description=f"Surrogate trained on {data_dir}")
    return summary


@flow(name="surrogate-fine-tune")
def fine_tune_surrogate(model_dir: str, new_tiles: TileSet, out_dir: str, replay_data_dir: str | None = None,
                        minutes: float = 2.0, seed: int = 0) -> dict:
    """Fine-tune a saved surrogate on new experiments' tiles (the closed loop's retraining) and save it."""
    model = LatentDiffusionSurrogate.from_pretrained(model_dir)
    replay = None
    if replay_data_dir is not None:
        table = load_training_set(replay_data_dir)
        rows = table[table["split"] == "train"].sample(n=min(256, len(table)), random_state=seed).reset_index(drop=True)
        replay = load_tiles(replay_data_dir, rows)
    losses = fine_tune(model, new_tiles, replay=replay, minutes=minutes, seed=seed)
    model.save_pretrained(out_dir)
    return {"steps": len(losses), "final_loss": float(np.mean(losses[-20:])) if losses else float("nan")}
