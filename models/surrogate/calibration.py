"""Generation calibration: put the descriptors of *generated* tiles on the scale of *simulated* ones.

The tile calibrations of :class:`~models.surrogate.model.SurrogateConfig` (``d50_calibration``,
``texture_calibration``) map tile descriptors to full-frame ``describe`` values; they are fitted on the training
tiles as the autoencoder reconstructs them and so cannot see what the denoiser gets wrong. A small denoiser
does get the *spread* of global properties wrong: the shipped one over-responds in D50 (generated vs simulated
slope 1.17 on held-out conditions) and draws rougher outlines (sphericity 0.85 against 0.89). The generation
calibration is one affine map per descriptor from generated to simulated values, fitted by least squares on
training conditions (their simulated descriptors are stored with the model in ``training_descriptors.json``)
with noise seeds that no report uses. A weakly predicted descriptor gets a small slope: its prediction shrinks
toward the training mean, which is what a least-squares predictor should do with little information.

``morphloop surrogate calibrate`` (re)fits it for a saved model; ``surrogate train`` fits it at the end.
``morphloop surrogate stack`` fits a descriptor stack (:mod:`models.surrogate.stacking`) the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from models.surrogate.descriptors import DESCRIPTOR_NAMES, MEASURED_PREFIX, TRAINING_DESCRIPTORS_FILE, fit_affine
from models.surrogate.fidelity import r2_score
from models.surrogate.stacking import DescriptorStack, cross_validated_gp, fit_descriptor_stack

if TYPE_CHECKING:
    from models.surrogate.model import SurrogateConfig
    from models.surrogate.predictor import SurrogatePredictor

#: Fewer training conditions than this leave the generation calibration at the identity (a fit would be noise).
MIN_CALIBRATION_CONDITIONS = 8

#: Descriptors bounded to [0, 1] after calibration.
UNIT_INTERVAL = ("sphericity_mean", "texture")


def _conditions(table: pd.DataFrame) -> list[dict]:
    """The condition dict of each row of a descriptors table (its ``cond_*`` columns)."""
    return [{n[len("cond_"):]: row[n] for n in table.columns if n.startswith("cond_")} for _, row in table.iterrows()]


def training_tile_descriptors(table: pd.DataFrame, config: SurrogateConfig) -> tuple[list[dict], np.ndarray]:
    """The training conditions of a ``training_descriptors.json`` table and their simulated tiles' descriptors
    (``n x 4`` in :data:`DESCRIPTOR_NAMES` order, with the model's tile calibrations applied)."""
    conditions = _conditions(table)
    a, b = config.d50_calibration
    ta, tb = config.texture_calibration
    values = np.column_stack([a + b * table["tile_d50_um"], table["tile_sphericity_mean"],
                              table["tile_sphericity_std"], np.clip(ta + tb * table["tile_texture"], 0, 1)])
    return conditions, values.astype(float)


def training_measured_descriptors(table: pd.DataFrame, config: SurrogateConfig) -> tuple[list[dict], np.ndarray]:
    """The training conditions and what the lab measures of their samples: the ``measured_*`` columns
    (``describe`` on the lab's full SEM frames, ``morphloop surrogate measure-training``) when the table has
    them, else the calibrated tile descriptors (:func:`training_tile_descriptors`). ``n x 4``,
    :data:`DESCRIPTOR_NAMES` order."""
    columns = [MEASURED_PREFIX + k for k in DESCRIPTOR_NAMES]
    if not all(c in table.columns for c in columns):
        return training_tile_descriptors(table, config)
    return _conditions(table), np.array(table[columns], dtype=float)  # a writable copy (torch warns on read-only arrays)


def lab_measured_descriptors(table: pd.DataFrame) -> tuple[list[dict], np.ndarray]:
    """The conditions and measured descriptors of a ``lab_descriptors.json`` table (``n x 4``,
    :data:`DESCRIPTOR_NAMES` order; NaN where a sample could not be measured)."""
    missing = [MEASURED_PREFIX + k for k in DESCRIPTOR_NAMES if MEASURED_PREFIX + k not in table.columns]
    if missing:
        raise ValueError(f"the lab descriptors table lacks {missing}; write it with 'morphloop surrogate measure-lab'")
    return _conditions(table), np.array(table[[MEASURED_PREFIX + k for k in DESCRIPTOR_NAMES]], dtype=float)


def gp_examples(training: pd.DataFrame, lab: pd.DataFrame | None, config: SurrogateConfig
                ) -> tuple[list[dict], np.ndarray]:
    """What the training-set GP learns from: the training samples (:func:`training_measured_descriptors`) first,
    then the lab samples measured without images in training (:func:`lab_measured_descriptors`)."""
    conditions, values = training_measured_descriptors(training, config)
    if lab is None or not len(lab):
        return conditions, values
    lab_conditions, lab_values = lab_measured_descriptors(lab)
    return conditions + lab_conditions, np.concatenate([values, lab_values])


def apply_generation_calibration(descriptors: dict[str, float], calibration: dict[str, list[float]]
                                 ) -> dict[str, float]:
    """``descriptors`` through the per-descriptor affine maps (descriptors without one pass unchanged)."""
    out = dict(descriptors)
    for name, (a, b) in calibration.items():
        if name in out:
            value = a + b * out[name]
            out[name] = float(np.clip(value, 0.0, 1.0)) if name in UNIT_INTERVAL else float(value)
    return out


def fit_generation_calibration(predictor: SurrogatePredictor, model_dir: str | Path, n_conditions: int = 64,
                               n_images: int = 4, seed: int = 1) -> dict:
    """Fit the generation calibration of ``predictor`` on ``n_conditions`` of its training conditions.

    Returns ``{"generation_calibration": {name: [a, b]}, "n_conditions": n, "r2_before": {...},
    "r2_after": {...}}`` (R² on the fitting conditions; the held-out figures are ``surrogate report``'s). With
    fewer than :data:`MIN_CALIBRATION_CONDITIONS` conditions the maps stay the identity.
    """
    table = pd.read_json(Path(model_dir) / TRAINING_DESCRIPTORS_FILE, orient="records")
    conditions, simulated = training_tile_descriptors(table, predictor.surrogate.config)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(conditions), min(n_conditions, len(conditions)), replace=False))
    if len(chosen) < MIN_CALIBRATION_CONDITIONS:
        return {"generation_calibration": {}, "n_conditions": int(len(chosen)), "r2_before": {}, "r2_after": {}}
    predictions = predictor.predict([conditions[i] for i in chosen], n_images=n_images, seed=seed,
                                    generation_calibration=False)
    generated = np.array([[p.descriptors[k] for k in DESCRIPTOR_NAMES] for p in predictions], float)
    target = simulated[chosen]
    maps = {k: fit_affine(generated[:, j], target[:, j]) for j, k in enumerate(DESCRIPTOR_NAMES)}
    after = np.array([[apply_generation_calibration(dict(zip(DESCRIPTOR_NAMES, row)), maps)[k]
                       for k in DESCRIPTOR_NAMES] for row in generated])
    finite = np.isfinite(generated).all(axis=1) & np.isfinite(target).all(axis=1)
    return {"generation_calibration": maps, "n_conditions": int(len(chosen)),
            "r2_before": {k: r2_score(target[finite, j], generated[finite, j]) for j, k in enumerate(DESCRIPTOR_NAMES)},
            "r2_after": {k: r2_score(target[finite, j], after[finite, j]) for j, k in enumerate(DESCRIPTOR_NAMES)}}


def fit_stack_on_training(predictor: SurrogatePredictor, n_conditions: int = 160, n_images: int = 2,
                          seed: int = 1) -> DescriptorStack:
    """Fit a :class:`~models.surrogate.stacking.DescriptorStack` for ``predictor``'s solver steps and
    ``n_images`` tiles on ``n_conditions`` of the model's training conditions (generated with noise ``seed``,
    the GP cross-validated over all training conditions), against what the lab measured of those samples when
    the model has it (:func:`training_measured_descriptors`). The cross-validated GP also learns from the model's
    lab samples (:func:`gp_examples`), as the GP it stands for does; the stack is fitted on training conditions
    only, since only they have generated tiles to compare."""
    table = predictor.surrogate.training_descriptors
    if table is None:
        raise ValueError("the surrogate has no training descriptors (training_descriptors.json); stack a model "
                         "written by 'morphloop surrogate train'")
    # the stack predicts what the lab measures (training_measured_descriptors), the GP learns from the same
    conditions, simulated = training_measured_descriptors(table, predictor.surrogate.config)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(conditions), min(n_conditions, len(conditions)), replace=False))
    if len(chosen) < MIN_CALIBRATION_CONDITIONS:
        raise ValueError(f"a stack needs at least {MIN_CALIBRATION_CONDITIONS} training conditions, got {len(chosen)}")
    predictions = predictor.predict([conditions[i] for i in chosen], n_images=n_images, seed=seed,
                                    generation_calibration=False)
    generated = np.array([[p.uncalibrated[k] for k in DESCRIPTOR_NAMES] for p in predictions], float)
    gp_conditions, gp_values = predictor.training_examples()
    gp_cv = cross_validated_gp(predictor.surrogate.gp_inputs(gp_conditions), gp_values, chosen, seed=seed,
                               hyperparameters=predictor.training_gp().state(),
                               input_columns=predictor.surrogate.gp_input_columns())
    steps = predictor.steps or predictor.surrogate.config.sampling_steps
    return fit_descriptor_stack(generated, gp_cv, simulated[chosen], steps, n_images)
