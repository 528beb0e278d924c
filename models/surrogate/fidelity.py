"""Fidelity figures of a surrogate: R² of per-condition descriptors, distribution distances, memorisation,
and the baselines they are judged against (a GP from conditions straight to descriptors, nearest neighbour)."""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import wasserstein_distance


def r2_score(reference: np.ndarray, predicted: np.ndarray) -> float:
    """Coefficient of determination 1 − SS_res/SS_tot over finite pairs (NaN with fewer than 3)."""
    y, p = np.asarray(reference, float), np.asarray(predicted, float)
    ok = np.isfinite(y) & np.isfinite(p)
    if ok.sum() < 3:
        return float("nan")
    y, p = y[ok], p[ok]
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return float(1.0 - np.sum((y - p) ** 2) / ss_tot) if ss_tot > 0 else float("nan")


def mean_wasserstein(samples_a: list[np.ndarray], samples_b: list[np.ndarray]) -> float:
    """Mean over conditions of the 1-D Wasserstein distance between paired samples (skips empty pairs)."""
    d = [wasserstein_distance(a, b) for a, b in zip(samples_a, samples_b) if len(a) and len(b)]
    return float(np.mean(d)) if d else float("nan")


def nearest_neighbour_rms(queries: np.ndarray, references: np.ndarray, chunk: int = 256) -> np.ndarray:
    """RMS pixel distance from each query tile (``n x H x W``) to its nearest reference tile (``m x H x W``).

    A generator that memorises returns near copies of training tiles: its distances fall far below those of
    fresh simulated tiles to the same training set.
    """
    q = torch.from_numpy(np.asarray(queries, np.float32).reshape(len(queries), -1))
    best = torch.full((len(q),), float("inf"))
    for i in range(0, len(references), chunk):
        r = torch.from_numpy(np.asarray(references[i:i + chunk], np.float32).reshape(-1, q.shape[1]))
        best = torch.minimum(best, torch.cdist(q, r).min(dim=1).values)
    return (best / np.sqrt(q.shape[1])).numpy()


def nearest_condition_index(queries: np.ndarray, design: np.ndarray) -> np.ndarray:
    """Index of the nearest design row (encoded conditions) for each query row."""
    d = ((np.asarray(queries)[:, None, :] - np.asarray(design)[None, :, :]) ** 2).sum(-1)
    return d.argmin(axis=1)


def gp_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """Baseline: one GP per descriptor (:class:`~models.surrogate.stacking.TrainingSetGP`) from encoded
    conditions (``n x d``) straight to descriptors (``n x m``); returns posterior means (``t x m``)."""
    from models.surrogate.stacking import TrainingSetGP

    return TrainingSetGP(train_x, train_y).predict(test_x)
