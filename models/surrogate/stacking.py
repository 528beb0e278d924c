"""Descriptor stacking: what the generated images say, combined with what the training set already says.

The diffusion surrogate is trained on a set of simulated (or, in a real lab, historical) SEM images whose
descriptors are known (``training_descriptors.json``). Its generated images carry some of that knowledge: on
uniformly random conditions measured in the virtual lab, the shipped model's generated D50 reaches R² 0.51 at 10
solver steps and 4 tiles and −0.21 at the campaign's 6 steps and 2 tiles, and its sphericity has no skill (R² ≈
−0.2). A GP fitted on the training set's descriptors (:class:`TrainingSetGP`) reaches D50 0.92, sphericity 0.64 and
texture 0.86 on the same conditions. An optimiser that trusts the images alone is steered by their errors.

The screening prediction is therefore a per-descriptor stack (model stacking, Wolpert 1992)::

    predicted = a + b * generated + c * gp(conditions),   b, c >= 0

with ``(a, b, c)`` fitted by non-negative least squares on training conditions, using the GP's *cross-validated*
predictions there (the GP interpolates its own training points, so in-sample values would give it all the
weight). Where the images carry information the GP lacks, ``b`` keeps it; where they carry none (an F test at
:data:`IMAGE_TERM_ALPHA`), ``b`` is 0, the prediction is the GP's and no tile is generated for it. A stack is
fitted for one sampler setting (solver steps, tiles per condition), since fewer steps and tiles give noisier,
differently biased descriptors; a model keeps one stack per setting
(:attr:`~models.surrogate.model.SurrogateConfig.descriptor_stacks`) and uses the nearest.

The fidelity of the *images* (issue 4's R², ``surrogate report``'s ``surrogate`` row) never includes the stack;
the report shows the stacked prediction in a row of its own.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from scipy.optimize import nnls
from scipy.stats import f as f_dist

from models.surrogate.descriptors import DESCRIPTOR_NAMES
from models.surrogate.fidelity import r2_score

#: Folds of the cross-validated GP predictions a stack is fitted on.
CV_FOLDS = 5
#: Significance level of the F test that keeps a stack's image term (:func:`fit_stack_weights`). On the shipped
#: model's 160 stacking conditions at 6 steps x 2 tiles, with its GP of session 15 D50's image term (least-squares
#: weight 0.026) had p = 0.43, texture's (0.13) p = 0.037; with the GP that reads the NaOH/NH4OH ratio texture's
#: (0.063) has p = 0.18, so every descriptor now comes from the GP alone.
IMAGE_TERM_ALPHA = 0.05


class TrainingSetGP:
    """One exact GP per descriptor (BoTorch ``SingleTaskGP``, Matérn-5/2 ARD, standardised outcomes) from encoded
    conditions (``n x d``) to descriptors (``n x m``); NaN targets are left out of that descriptor's GP.

    Parameters
    ----------
    train_x : array
        ``n x d`` encoded conditions.
    train_y : array
        ``n x m`` descriptors.
    state : mapping, optional
        Fitted hyperparameters from :meth:`state` (no fitting then). Fitting lands on slightly different
        hyperparameters with another thread count, so a model ships its fitted state: every process (a Dask
        worker, a CI machine) then predicts the same numbers.
    fit_rows : int, optional
        Fit the hyperparameters on this many randomly chosen rows (seeded), then condition on all of them.
        An exact fit costs O(n³) per optimiser step (about 4 min per descriptor on 1280 rows on 2 cores, more
        than 25 min on 3200); length scales and noise settle long before the data run out.
    input_columns : list of list of int, optional
        Per descriptor, the columns of ``train_x`` its GP reads (default: all).
    """

    def __init__(self, train_x: np.ndarray, train_y: np.ndarray,
                 state: Mapping[str, torch.Tensor] | None = None, fit_rows: int | None = None,
                 input_columns: Sequence[Sequence[int]] | None = None) -> None:
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms import Standardize
        from gpytorch.mlls import ExactMarginalLogLikelihood

        x_all = torch.as_tensor(np.asarray(train_x, float), dtype=torch.float64)
        y_all = torch.as_tensor(np.asarray(train_y, float), dtype=torch.float64)
        if x_all.ndim != 2 or y_all.ndim != 2 or len(x_all) != len(y_all):
            raise ValueError(f"train_x must be n x d and train_y n x m, got {tuple(x_all.shape)}, "
                             f"{tuple(y_all.shape)}")
        if input_columns is not None and len(input_columns) != y_all.shape[1]:
            raise ValueError(f"input_columns needs one list per descriptor ({y_all.shape[1]}), "
                             f"got {len(input_columns)}")
        self.width = int(x_all.shape[1])
        self.input_columns = [list(range(self.width)) if input_columns is None else [int(c) for c in input_columns[j]]
                              for j in range(y_all.shape[1])]
        self.models: list = []
        for j in range(y_all.shape[1]):
            x, ok = x_all[:, self.input_columns[j]], torch.isfinite(y_all[:, j])
            if int(ok.sum()) < 3:
                self.models.append(None)
                continue
            with warnings.catch_warnings():  # one-hot columns and [-1, 1] inputs are fine for an ARD kernel
                warnings.simplefilter("ignore")
                gp = SingleTaskGP(x[ok], y_all[ok, j:j + 1], outcome_transform=Standardize(m=1))
                own = {k[len(f"{j}."):]: v for k, v in (state or {}).items() if k.startswith(f"{j}.")}
                if not own and fit_rows is not None and int(ok.sum()) > fit_rows:
                    rows = torch.nonzero(ok)[:, 0]
                    rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(j))[:fit_rows]]
                    part = SingleTaskGP(x[rows], y_all[rows, j:j + 1], outcome_transform=Standardize(m=1))
                    fit_gpytorch_mll(ExactMarginalLogLikelihood(part.likelihood, part))
                    own = {k: v for k, v in part.state_dict().items() if not k.startswith("outcome_transform.")}
                if own:  # a state without the outcome transform (hyperparameters only) keeps this data's scaling
                    gp.load_state_dict(own, strict=any(k.startswith("outcome_transform.") for k in own))
                else:
                    fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
            self.models.append(gp.eval())

    def state(self) -> dict[str, torch.Tensor]:
        """The fitted hyperparameters of every descriptor's GP, ``{"j.name": tensor}`` (safetensors-ready)."""
        return {f"{j}.{k}": v.detach().clone().contiguous() for j, gp in enumerate(self.models) if gp is not None
                for k, v in gp.state_dict().items()}

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Posterior means, ``t x m`` (NaN for a descriptor with fewer than 3 finite training values)."""
        return self.posterior(x)[0]

    def posterior(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means and standard deviations of the latent function (the model's own uncertainty, without
        the sample-to-sample noise the likelihood learnt), each ``t x m``."""
        xt = torch.as_tensor(np.asarray(x, float), dtype=torch.float64).reshape(-1, self.width)
        mean = np.full((len(xt), len(self.models)), np.nan)
        std = np.full_like(mean, np.nan)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for j, gp in enumerate(self.models):
                if gp is not None:
                    post = gp.posterior(xt[:, self.input_columns[j]])
                    mean[:, j] = post.mean[:, 0].numpy()
                    std[:, j] = post.variance[:, 0].clamp_min(0).sqrt().numpy()
        return mean, std


def hyperparameters_only(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A :meth:`TrainingSetGP.state` without its outcome scaling: kernel and noise hyperparameters that a
    :class:`TrainingSetGP` on other data keeps, standardising that data by its own mean and spread."""
    return {k: v for k, v in state.items() if not k.split(".", 1)[1].startswith("outcome_transform.")}


def cross_validated_gp(train_x: np.ndarray, train_y: np.ndarray, rows: Sequence[int], folds: int = CV_FOLDS,
                       seed: int = 0, hyperparameters: Mapping[str, torch.Tensor] | None = None,
                       input_columns: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """GP predictions at ``rows`` of the training set, each from a GP that did not see that row's fold
    (``len(rows) x m``; ``input_columns`` as :class:`TrainingSetGP`'s).

    ``hyperparameters`` (a :meth:`TrainingSetGP.state`, e.g. of the GP fitted on all rows) are kept in every fold
    instead of fitted again; each fold still conditions on its own data only. Fitting costs O(n³) per optimiser
    step: with a thousand lab samples, 5 folds x 4 descriptors took over ten minutes on 2 cores, and leaving a
    fifth of the data out barely moves the length scales."""
    rows = np.asarray(rows, int)
    fold_of = np.random.default_rng(seed).permutation(len(rows)) % max(2, folds)
    kept = None if hyperparameters is None else hyperparameters_only(hyperparameters)
    out = np.full((len(rows), np.asarray(train_y).shape[1]), np.nan)
    for k in np.unique(fold_of):
        held = rows[fold_of == k]
        keep = np.setdiff1d(np.arange(len(train_x)), held)
        out[fold_of == k] = TrainingSetGP(train_x[keep], train_y[keep], state=kept,
                                          input_columns=input_columns).predict(train_x[held])
    return out


@dataclass
class DescriptorStack:
    """Stack weights for one sampler setting.

    Attributes
    ----------
    steps, n_images : int
        The solver steps and tiles per condition the generated descriptors were made with.
    weights : dict
        ``{descriptor: [a, b, c]}``: ``a + b * generated + c * gp``.
    generated_mean : dict
        Mean generated value per descriptor on the fitting conditions; stands in for a generated descriptor that
        could not be measured (no particles segmented), so the prediction is then the GP's plus a constant.
    n_conditions : int
    r2 : dict
        ``{"generated": {...}, "gp_cv": {...}, "stacked": {...}}``: R² on the fitting conditions (the GP's
        cross-validated, so the three are comparable).
    """

    steps: int
    n_images: int
    weights: dict[str, list[float]]
    generated_mean: dict[str, float]
    n_conditions: int
    r2: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> DescriptorStack:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def apply(self, generated: np.ndarray, gp: np.ndarray) -> np.ndarray:
        """Stacked descriptors (``n x 4``, :data:`DESCRIPTOR_NAMES` order) from generated and GP ones (same
        shape). A descriptor without weights keeps its generated value."""
        generated, gp = np.atleast_2d(np.asarray(generated, float)), np.atleast_2d(np.asarray(gp, float))
        out = generated.copy()
        for j, name in enumerate(DESCRIPTOR_NAMES):
            if name not in self.weights:
                continue
            a, b, c = self.weights[name]
            g = generated[:, j] if b == 0 else _fill(generated[:, j], self.generated_mean.get(name, 0.0))
            value = a + (b * g if b else 0.0) + c * gp[:, j]
            out[:, j] = np.clip(value, 0.0, 1.0) if name in ("sphericity_mean", "texture") else value
        return out

    def uncertainty(self, gp_std: np.ndarray) -> np.ndarray:
        """Standard deviation of the stacked prediction carried by the GP term, ``c * gp_std`` (``n x 4``); the
        generated term's error is not known per condition, so a descriptor without GP weight gets NaN."""
        gp_std = np.atleast_2d(np.asarray(gp_std, float))
        out = np.full_like(gp_std, np.nan)
        for j, name in enumerate(DESCRIPTOR_NAMES):
            if name in self.weights and self.weights[name][2] > 0:
                out[:, j] = self.weights[name][2] * gp_std[:, j]
        return out


def fit_stack_weights(generated: np.ndarray, gp: np.ndarray, target: np.ndarray,
                      alpha: float = IMAGE_TERM_ALPHA) -> list[float]:
    """``[a, b, c]`` minimising ``|target - a - b generated - c gp|²`` with ``b, c >= 0``.

    The image term is kept only when it explains more than chance: a nested-model F test (``a + c gp`` against
    ``a + b generated + c gp``) at level ``alpha``; otherwise ``b = 0`` and ``[a, c]`` are refitted. A term that
    adds nothing still costs a whole magnification of generated tiles on every prediction.

    Rows need a finite GP value and target; an unmeasurable generated value counts as the mean of the measured
    ones (as :meth:`DescriptorStack.apply` does), and with none measured ``b = 0``. With fewer than 4 rows:
    ``[mean, 0, 0]``."""
    g, p, t = (np.asarray(v, float) for v in (generated, gp, target))
    ok = np.isfinite(p) & np.isfinite(t)
    if ok.sum() < 4:
        return [float(np.nanmean(t)) if np.isfinite(t).any() else 0.0, 0.0, 0.0]
    g = _fill(g[ok])
    p, t = p[ok], t[ok]
    both = np.column_stack([g - g.mean(), p - p.mean()])
    (b, c), rss_both = nnls(both, t - t.mean())
    if b > 0:
        (c_alone,), rss_gp = nnls(both[:, 1:], t - t.mean())
        dof = len(t) - 3
        f_stat = (rss_gp ** 2 - rss_both ** 2) / max(rss_both ** 2 / dof, np.finfo(float).tiny)
        if f_dist.sf(f_stat, 1, dof) >= alpha:
            b, c = 0.0, c_alone
    return [float(t.mean() - b * g.mean() - c * p.mean()), float(b), float(c)]


def _fill(values: np.ndarray, mean: float | None = None) -> np.ndarray:
    """NaN entries replaced by ``mean`` (default: the finite entries' mean; 0 when there are none)."""
    finite = np.isfinite(values)
    if mean is None:
        mean = float(values[finite].mean()) if finite.any() else 0.0
    elif not np.isfinite(mean):
        mean = 0.0
    return np.where(finite, values, mean)


def fit_descriptor_stack(generated: np.ndarray, gp_cv: np.ndarray, target: np.ndarray, steps: int,
                         n_images: int) -> DescriptorStack:
    """A :class:`DescriptorStack` from generated, cross-validated GP and simulated descriptors of the same
    training conditions (each ``n x 4``, :data:`DESCRIPTOR_NAMES` order)."""
    weights = {k: fit_stack_weights(generated[:, j], gp_cv[:, j], target[:, j])
               for j, k in enumerate(DESCRIPTOR_NAMES)}
    means = {k: float(np.nanmean(generated[:, j])) if np.isfinite(generated[:, j]).any() else float("nan")
             for j, k in enumerate(DESCRIPTOR_NAMES)}
    stack = DescriptorStack(int(steps), int(n_images), weights, means, int(len(target)))
    stacked = stack.apply(generated, gp_cv)
    stack.r2 = {name: {k: r2_score(target[:, j], values[:, j]) for j, k in enumerate(DESCRIPTOR_NAMES)}
                for name, values in (("generated", generated), ("gp_cv", gp_cv), ("stacked", stacked))}
    return stack


def nearest_stack(stacks: Sequence[Mapping], steps: int, n_images: int) -> DescriptorStack | None:
    """The stack fitted closest to ``steps`` solver steps and ``n_images`` tiles (steps first), or None."""
    if not stacks:
        return None
    best = min(stacks, key=lambda s: (abs(int(s["steps"]) - steps), abs(int(s["n_images"]) - n_images)))
    return DescriptorStack.from_json(best)
