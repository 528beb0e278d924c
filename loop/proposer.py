"""BoTorch batch proposals for real experiments: which ``q`` conditions to synthesise next.

Define, fit, optimise are separate calls (BoTorch's habit):

* :func:`fit_descriptor_model`: a :class:`~botorch.models.ModelListGP` with one
  :class:`~botorch.models.SingleTaskGP` per descriptor (``Standardize`` outcome transform) on the unit-cube
  encoding of the conditions. One GP per output lets each descriptor drop its own NaN rows (a texture that
  could not be measured does not discard that sample's D50).
* :func:`build_acquisition`: ``qLogNoisyExpectedImprovement`` of ``-F`` (eq. 3 through
  ``GenericMCObjective``), with pending experiments as ``X_pending``.
* :func:`propose_batch`: fits, builds and optimises; returns condition dicts and never runs them.

Optimisation: over ``candidate_set`` (e.g. PSO candidates) with ``optimize_acqf_discrete`` after removing
candidates already measured or pending, else ``optimize_acqf`` on the relaxed unit cube followed by
``space.from_unit`` (categorical one-hot columns rounded by argmax, integers to their bin, loadings repaired into
the ratio window). A relaxed point that decodes onto a measured, pending or already chosen point is replaced by
the best remaining point of a random feasible set, so the batch is always ``q`` distinct new conditions.

Local candidates (``n_local``): a candidate set chosen once over the surrogate (the swarm's best points) carries
the surrogate's bias: if it over-predicts D50 by 10 % near the target, no point of that set makes the right
particles, however well the residual GP learns the bias. ``n_local`` conditions drawn in a trust region around the
best *measured* experiments (:meth:`~loop.space.SearchSpace.neighbours`) join the set, so the corrected model can
pick a step away from where the surrogate alone aimed. ``n_random`` feasible random conditions join it too: where
the surrogate has no skill (it barely predicts sphericity), the GP's uncertainty away from the data is what finds
the way, and it needs points away from the data to choose.

Prior predictor (e.g. the diffusion surrogate): the GP models the *residual* measured minus predicted
descriptors, and the predictions are added back inside the MC objective (``Y + prior(X)``). Where measurements
are few the GP residual reverts to its mean and the proposals follow the predictor; where measurements exist
they correct it. Predictions exist only for conditions the predictor was asked about, so with a prior the
optimisation is always discrete (over ``candidate_set``, or ``raw_samples`` feasible random conditions).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.acquisition.objective import GenericMCObjective
from botorch.fit import fit_gpytorch_mll
from botorch.models import ModelListGP, SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from botorch.optim import optimize_acqf, optimize_acqf_discrete
from botorch.sampling import SobolQMCNormalSampler
from gpytorch.mlls import SumMarginalLogLikelihood

from loop.config import DESCRIPTORS
from loop.objective import Objective
from loop.predictor import MorphologyPredictor, conditions_key, descriptor_array
from loop.space import SearchSpace

__all__ = ["fit_descriptor_model", "build_acquisition", "propose_batch", "local_candidates", "spread_batch",
           "PriorLookup"]
DTYPE = torch.float64


def fit_descriptor_model(train_X: torch.Tensor, train_Y: torch.Tensor) -> ModelListGP:
    """Fit one GP per descriptor.

    Parameters
    ----------
    train_X : Tensor
        ``n x d`` unit-cube inputs.
    train_Y : Tensor
        ``n x m`` descriptors (columns :data:`DESCRIPTORS`); NaN entries are left out of that output's GP.

    Returns
    -------
    ModelListGP
        ``m`` fitted ``SingleTaskGP`` with ``Standardize`` outcome transforms.

    Notes
    -----
    An output that is constant over the data (std < 1e-8, e.g. the residuals of a prior that predicts every
    measurement exactly) keeps ``Standardize``'s unit scale: its GP then claims a prior uncertainty of one
    descriptor unit away from the data, which makes the acquisition explore.
    """
    if train_X.ndim != 2 or train_Y.ndim != 2 or train_X.shape[0] != train_Y.shape[0]:
        raise ValueError(f"train_X must be n x d and train_Y n x m, got {tuple(train_X.shape)}, "
                         f"{tuple(train_Y.shape)}")
    models = []
    for j in range(train_Y.shape[-1]):
        finite = torch.isfinite(train_Y[:, j])
        if int(finite.sum()) < 2:
            name = DESCRIPTORS[j] if train_Y.shape[-1] == len(DESCRIPTORS) else f"output {j}"
            raise ValueError(f"{name} is measured on {int(finite.sum())} experiment(s); a GP needs at least 2")
        models.append(SingleTaskGP(train_X[finite], train_Y[finite, j:j + 1],
                                   outcome_transform=Standardize(m=1)))
    model = ModelListGP(*models)
    fit_gpytorch_mll(SumMarginalLogLikelihood(model.likelihood, model))
    return model


class PriorLookup:
    """Prior predictions at known unit-cube points: ``X (... x d) -> ... x m`` by exact row match.

    Parameters
    ----------
    X : Tensor
        ``k x d`` points the predictor was asked about.
    Y : Tensor
        ``k x m`` its predicted descriptors.
    """

    def __init__(self, X: torch.Tensor, Y: torch.Tensor) -> None:
        self.X, self.Y = X, Y

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        flat = X.reshape(-1, X.shape[-1]).to(self.X)
        dist, idx = torch.cdist(flat, self.X).min(dim=-1)
        if bool((dist > 1e-6).any()):
            raise ValueError("the acquisition asked for a point without a prior prediction; with a prior "
                             "predictor the optimisation must be discrete")
        return self.Y[idx].reshape(*X.shape[:-1], self.Y.shape[-1])


def build_acquisition(model: ModelListGP, train_X: torch.Tensor, objective: Objective,
                      X_pending: torch.Tensor | None = None, prior: PriorLookup | None = None, seed: int = 0,
                      mc_samples: int = 128) -> qLogNoisyExpectedImprovement:
    """``qLogNEI`` of ``-F`` (``F``: eq. 3 of the model's descriptor samples, plus ``prior(X)`` if given).

    Parameters
    ----------
    model : ModelListGP
        From :func:`fit_descriptor_model` (outputs in :data:`DESCRIPTORS` order).
    train_X : Tensor
        ``n x d`` measured inputs (the noisy baseline).
    objective : Objective
    X_pending : Tensor, optional
        ``p x d`` experiments already running (their outcomes are integrated over, not proposed again).
    prior : PriorLookup, optional
        Added to the samples when the model was fitted to residuals.
    seed : int
        Seed of the quasi-MC sampler.
    mc_samples : int
        Number of quasi-MC samples.
    """
    if prior is None:
        mc_objective = GenericMCObjective(lambda Y, X=None: -objective.torch(Y))
    else:
        mc_objective = GenericMCObjective(lambda Y, X: -objective.torch(Y + prior(X)))
    sampler = SobolQMCNormalSampler(sample_shape=torch.Size([mc_samples]), seed=seed)
    return qLogNoisyExpectedImprovement(model, X_baseline=train_X, sampler=sampler, objective=mc_objective,
                                        X_pending=X_pending, prune_baseline=True, cache_root=False)


def _unit_tensor(space: SearchSpace, conditions: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    return torch.as_tensor(space.to_unit(list(conditions)), dtype=DTYPE).reshape(-1, space.dim)


def _space_key(space: SearchSpace, conditions: Mapping[str, Any]) -> tuple:
    """Key of the searched parameters only (extra keys such as other lab conditions do not matter)."""
    return conditions_key({k: conditions[k] for k in space.names if k in conditions})


def _new_feasible(space: SearchSpace, pool: Sequence[Mapping[str, Any]], taken: set[tuple]) -> list[dict]:
    """The feasible conditions of ``pool`` not in ``taken``, deduplicated, in order."""
    out, seen = [], set(taken)
    for c in pool:
        key = _space_key(space, c)
        if key not in seen and space.is_feasible(c):
            seen.add(key)
            out.append(dict(c))
    return out


def propose_batch(train_X_conditions: Sequence[Mapping[str, Any]], train_Y: Any, space: SearchSpace,
                  objective: Objective, q: int = 4, pending: Sequence[Mapping[str, Any]] | None = None,
                  candidate_set: Sequence[Mapping[str, Any]] | None = None,
                  prior_predictor: MorphologyPredictor | None = None, seed: int = 0, n_images: int = 4,
                  num_restarts: int = 8, raw_samples: int = 256, mc_samples: int = 128, n_local: int = 0,
                  local_radius: float | Sequence[float] = (0.05, 0.1, 0.2),
                  local_centres: int = 2, n_random: int = 0) -> list[dict[str, Any]]:
    """Propose ``q`` distinct new conditions to synthesise, given the measured ones.

    Parameters
    ----------
    train_X_conditions : list of dict
        ``n`` measured conditions (``n >= 2``).
    train_Y : array, list of dict or list of predictions
        ``n x 4`` measured descriptors (columns :data:`DESCRIPTORS`, NaN allowed), or one descriptor dict (e.g. a
        ``describe`` record) or prediction per experiment.
    space : SearchSpace
    objective : Objective
    q : int
        Batch size.
    pending : list of dict, optional
        Conditions already dispatched but not measured: passed as ``X_pending`` and never proposed again.
    candidate_set : list of dict, optional
        Choose among these (e.g. PSO candidates); measured, pending, duplicate and infeasible ones are dropped
        and, if fewer than ``q`` remain, feasible random conditions fill the set.
    prior_predictor : MorphologyPredictor, optional
        Model the residual of measurements minus its predictions (see the module doc).
    seed : int
        Seeds random sets, the MC sampler and the optimiser's restarts.
    n_images : int
        Images per condition asked of ``prior_predictor``.
    n_local : int
        Conditions drawn around the ``local_centres`` measured experiments with the lowest objective (steps of
        ``local_radius`` in the unit cube) and added to the candidate set, when there is one (see the module
        doc); 0: none.
    n_random : int
        Feasible random conditions added to the candidate set, when there is one; 0: none.

    Returns
    -------
    list of dict
        ``q`` feasible conditions, best first (sequential greedy order), none measured or pending.
    """
    train = [dict(c) for c in train_X_conditions]
    records = len(train_Y) and (isinstance(train_Y[0], Mapping) or hasattr(train_Y[0], "descriptors"))
    Y = np.asarray(descriptor_array(train_Y) if records else train_Y, dtype=float)
    if len(train) < 2:
        raise ValueError(f"propose_batch needs at least 2 measured experiments, got {len(train)}; start the "
                         "campaign with run_pso candidates or space.sample(q, rng) and measure them first")
    if Y.shape != (len(train), len(DESCRIPTORS)):
        raise ValueError(f"train_Y must be {len(train)} x {len(DESCRIPTORS)} (columns {DESCRIPTORS}), got {Y.shape}")
    if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or q < 1:
        raise ValueError(f"q must be a positive integer, got {q!r}")
    pending = [dict(c) for c in pending or []]
    taken = {_space_key(space, c) for c in train + pending}
    rng = np.random.default_rng(seed)
    if prior_predictor is not None and candidate_set is None:
        candidate_set = space.sample(raw_samples, rng)
    if (n_local or n_random) and candidate_set is not None:
        candidate_set = (list(candidate_set) + local_candidates(space, train, objective(Y), n_local, local_radius,
                                                                local_centres, rng) + space.sample(n_random, rng))
    if candidate_set is not None:
        candidate_set = _new_feasible(space, candidate_set, taken)
        if len(candidate_set) < q:
            candidate_set += _new_feasible(space, space.sample(4 * q, rng), taken | {_space_key(space, c) for c in
                                                                                 candidate_set})
        if len(candidate_set) < q:
            raise ValueError(f"only {len(candidate_set)} feasible conditions are neither measured nor pending; "
                             f"lower q={q} or widen the search space")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        train_X = _unit_tensor(space, train)
        X_pending = _unit_tensor(space, pending) if pending else None
        prior, offset = None, torch.zeros(len(train), len(DESCRIPTORS), dtype=DTYPE)
        if prior_predictor is not None:
            asked = train + pending + candidate_set
            predicted = descriptor_array(prior_predictor.predict(asked, n_images=n_images, seed=seed))
            prior = PriorLookup(_unit_tensor(space, asked), torch.as_tensor(predicted, dtype=DTYPE))
            offset = prior.Y[:len(train)]
        model = fit_descriptor_model(train_X, torch.as_tensor(Y, dtype=DTYPE) - offset)
        acq = build_acquisition(model, train_X, objective, X_pending, prior, seed, mc_samples)
        if candidate_set is not None:
            return _choose_discrete(acq, space, candidate_set, q)
        return _choose_continuous(acq, space, q, taken, rng, num_restarts, raw_samples)


def local_candidates(space: SearchSpace, conditions: Sequence[Mapping[str, Any]], objective_values: Any, n: int,
                     radius: float | Sequence[float] = (0.05, 0.1, 0.2), centres: int = 2,
                     rng: np.random.Generator | int | None = None) -> list[dict[str, Any]]:
    """``n`` conditions around the ``centres`` best of ``conditions`` (lowest ``objective_values``), split evenly.

    Parameters
    ----------
    conditions : list of dict
        ``k`` measured conditions.
    objective_values : array
        ``k`` objective values (NaN rows are never centres).
    """
    f = np.asarray(objective_values, dtype=float)
    if f.shape != (len(conditions),):
        raise ValueError(f"need one objective value per condition, got {f.shape} for {len(conditions)}")
    order = [i for i in np.argsort(np.where(np.isfinite(f), f, np.inf)) if np.isfinite(f[i])][:max(centres, 1)]
    if not order or n <= 0:
        return []
    rng = np.random.default_rng(rng)
    out: list[dict[str, Any]] = []
    for j, i in enumerate(order):
        share = n // len(order) + (1 if j < n % len(order) else 0)
        out += space.neighbours(conditions[i], share, radius, rng)
    return out


def spread_batch(space: SearchSpace, ranked: Sequence[Mapping[str, Any]], q: int, min_distance: float = 0.25
                 ) -> list[int]:
    """Indices of ``q`` of ``ranked`` (best first), each at least ``min_distance`` from those already taken in
    the unit cube; if too few are that far apart, the best remaining ones fill the batch.

    The first batch of a campaign has no measurement to choose with: the swarm's top candidates usually sit
    within a few per cent of each other, and four of them measure one morphology four times. Spread, they
    measure four guesses.
    """
    if q <= 0 or not len(ranked):
        return []
    x = space.to_unit([dict(c) for c in ranked])
    taken: list[int] = []
    for i in range(len(ranked)):
        if len(taken) == q:
            break
        if all(np.linalg.norm(x[i] - x[j]) >= min_distance for j in taken):
            taken.append(i)
    taken += [i for i in range(len(ranked)) if i not in taken][:q - len(taken)]
    return taken


def _choose_discrete(acq: qLogNoisyExpectedImprovement, space: SearchSpace, candidates: list[dict],
                     q: int) -> list[dict]:
    """Sequential greedy choice of ``q`` of ``candidates`` (returned as given, not re-decoded)."""
    choices = _unit_tensor(space, candidates)
    X, _ = optimize_acqf_discrete(acq, q=q, choices=choices, unique=True)
    idx = torch.cdist(X.to(choices), choices).argmin(dim=-1).tolist()
    return [candidates[i] for i in idx]


def _choose_continuous(acq: qLogNoisyExpectedImprovement, space: SearchSpace, q: int, taken: set[tuple],
                       rng: np.random.Generator, num_restarts: int, raw_samples: int) -> list[dict]:
    """Optimise the relaxed unit cube, decode, and replace any point that decodes onto a taken one."""
    bounds = torch.stack([torch.zeros(space.dim, dtype=DTYPE), torch.ones(space.dim, dtype=DTYPE)])
    X, _ = optimize_acqf(acq, bounds=bounds, q=q, num_restarts=num_restarts, raw_samples=raw_samples,
                         sequential=True)
    chosen = _new_feasible(space, space.from_unit(X.detach().numpy()), taken)
    if len(chosen) < q:  # rounding merged points: fill from a random feasible set, conditioned on the chosen
        if chosen:
            extra = _unit_tensor(space, chosen)
            acq.set_X_pending(extra if acq.X_pending is None else torch.cat([acq.X_pending, extra]))
        taken = taken | {_space_key(space, c) for c in chosen}
        pool = _new_feasible(space, space.sample(raw_samples, rng), taken)
        chosen += _choose_discrete(acq, space, pool, q - len(chosen))
    return chosen
