"""Inverse design side by side: PSO vs BoTorch vs random search on one predictor (quality and speed; not tests).

    .venv/bin/python benchmarks/bench_inverse_design.py [--predictor simulator | --model DIR [--steps S]]
        [--targets 4] [--particles 20] [--iters 20] [--n-images 4] [--bo-init 8] [--bo-q 4] [--bo-rounds 8]
        [--batching-iters N] [--batching-repeats 3] [--paper-budget [--paper-budget-precisions]
        [--paper-budget-images [--images-high-steps S] [--images-high-images K] [--images-baseline
        [--images-baseline-decode-batch N]]]] [--threads 1] [--json]

Targets are the predictor's own predictions at random feasible conditions with noise seed ``--seed``, and every
method queries the predictor with that same noise seed, so each target is exactly reachable. Method seeds
(swarm, random draws, BoTorch initial design) are ``--seed + target index``. Per method and target: whether the target was met (every descriptor within 5 %), the predictor
evaluations spent until then, the best ``F`` at its own budget and after the same number of evaluations for all
methods (the smaller budget, BoTorch's by default), and the wall time. Methods:

* ``pso``: :func:`loop.pso.run_pso`, ``--particles`` x ``--iters``, one batched predict call per iteration;
* ``random``: :func:`loop.pso.run_random_search`, the same budget (the baseline for the ratios);
* ``botorch``: ``--bo-init`` random conditions, then ``--bo-rounds`` sequential ``q = --bo-q`` batches of
  :func:`loop.proposer.propose_batch` (GP on the predictor outputs, qLogNEI, continuous optimisation).

Speed: PSO with one batched ``predict`` call per iteration against one call per particle (same swarm; the same
answer up to the last bits of batched kernels), as a wall-time ratio (best of ``--batching-repeats`` runs each); ``--paper-budget`` also times paper
000's 40 x 50 swarm run to the end (no early stop) through :class:`loop.predictor.CachedPredictor`, with the peak
resident memory (``--paper-budget-precisions``: once with the surrogate sampling in float32 and once under CPU
bfloat16 autocast, the default where the CPU has bfloat16 instructions; ``--paper-budget-images``: also with
every descriptor taken from the generated images, no stack, as paper 000's swarm queries its generator, toward
a target those images themselves produce (the images alone do not reproduce the stack's sphericity): a
stack whose image terms are all insignificant needs no tiles at all; ``--images-high-steps`` and
``--images-high-images`` give its 30k× tiles their own solver steps and tiles per condition, as
``SurrogatePredictor(high_steps=..., high_images=...)``; ``--images-baseline`` runs that swarm a second time in
the same run with both magnifications at ``--steps`` x ``--n-images``, and ``--images-baseline-decode-batch 64``
with the decoder taking 64 tiles per call in that second run, as before it decoded in calls of
``DECODE_BATCH``, and reports the ratio). The simulator fake costs little per
call; ``--call-overhead-ms`` adds a fixed
cost per call to mimic a model's launch/synchronisation cost (reported, default 0).

``--predictor simulator`` (default): the virtual lab's noise-free truth plus seeded per-image noise (a copy of
``tests/loop/conftest.py``'s fake). ``--model DIR``: the diffusion surrogate
(``models.surrogate.predictor.SurrogatePredictor``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from loop.objective import Objective, Target
from loop.predictor import DESCRIPTORS, CachedPredictor, Prediction, descriptor_array
from loop.proposer import propose_batch
from loop.pso import run_pso, run_random_search
from loop.space import SearchSpace
from simulators.coprecipitation import CoprecipitationWorld

IMAGE_NOISE = {"d50_um": 0.04, "sphericity_mean": 0.01, "sphericity_std": 0.004, "texture": 0.02}


class SimulatorPredictor:
    """Truth of ``CoprecipitationWorld(world_seed)`` plus per-image noise drawn from ``seed`` alone."""

    def __init__(self, world_seed: int = 0, noise: float = 1.0, call_overhead_s: float = 0.0) -> None:
        self.world, self.noise, self.call_overhead_s = CoprecipitationWorld(world_seed), noise, call_overhead_s

    def predict(self, conditions: Sequence[Mapping[str, Any]], n_images: int = 4, seed: int = 0) -> list[Prediction]:
        if self.call_overhead_s:
            time.sleep(self.call_overhead_s)
        e = np.random.default_rng(seed).standard_normal((n_images, len(DESCRIPTORS))) * self.noise
        out = []
        for c in conditions:
            m = self.world.truth(c).as_dict()
            per = {k: (m[k] * np.exp(IMAGE_NOISE[k] * e[:, j]) if k == "d50_um" else m[k] + IMAGE_NOISE[k] * e[:, j])
                   for j, k in enumerate(DESCRIPTORS)}
            out.append(Prediction(dict(c), {k: float(v.mean()) for k, v in per.items()},
                                  {k: float(v.std()) for k, v in per.items()}))
        return out


class CountingPredictor:
    """Counts the conditions sent to ``inner`` (the cost a real surrogate pays)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.evaluations = inner, 0

    def predict(self, conditions, n_images=4, seed=0):
        self.evaluations += len(conditions)
        return self.inner.predict(conditions, n_images=n_images, seed=seed)


def load_predictor(args: argparse.Namespace) -> Any:
    if args.model is None:
        return SimulatorPredictor(call_overhead_s=args.call_overhead_ms / 1000)
    try:
        from models.surrogate.predictor import SurrogatePredictor
    except ImportError as exc:  # the surrogate is built in another issue
        sys.exit(f"error: --model needs models.surrogate.SurrogatePredictor ({exc}); use --predictor simulator")
    return SurrogatePredictor.from_pretrained(args.model, steps=args.steps)


def make_targets(predictor: Any, space: SearchSpace, n: int, seed: int, n_images: int,
                 with_std: bool = False) -> list[Target]:
    """Targets the predictor can reach: its own predictions at random feasible conditions (D50, sphericity and
    texture, as ``morphloop design``'s numeric targets; ``with_std`` adds the sphericity std)."""
    conditions = space.sample(4 * n, np.random.default_rng(10_000 + seed))
    targets = []
    for p in predictor.predict(conditions, n_images=n_images, seed=seed):
        d = {k: float(p.descriptors[k]) for k in DESCRIPTORS}
        if np.isfinite([d["d50_um"], d["sphericity_mean"], d["texture"]]).all():  # skip unmeasurable outputs
            std = d["sphericity_std"] if with_std and np.isfinite(d["sphericity_std"]) else None
            targets.append(Target(d["d50_um"], d["sphericity_mean"], d["texture"], std))
    return targets[:n]


def run_botorch(predictor: Any, space: SearchSpace, objective: Objective, args: argparse.Namespace,
                seed: int) -> dict[str, Any]:
    """Sequential q-batches of propose_batch on the predictor's outputs until the target is met."""
    noise_seed = args.seed
    t0 = time.perf_counter()
    counter = CountingPredictor(predictor)
    X = space.sample(args.bo_init, np.random.default_rng(seed))
    preds = counter.predict(X, n_images=args.n_images, seed=noise_seed)
    to_target = counter.evaluations if any(objective.target_met(p) for p in preds) else None
    for r in range(args.bo_rounds):
        if to_target is not None:
            break
        batch = propose_batch(X, descriptor_array(preds), space, objective, q=args.bo_q, seed=seed + r,
                              num_restarts=4, raw_samples=128, mc_samples=64)
        new = counter.predict(batch, n_images=args.n_images, seed=noise_seed)
        X, preds = X + batch, preds + new
        if any(objective.target_met(p) for p in new):
            to_target = counter.evaluations
    f = objective(preds)
    return {"met": to_target is not None, "evaluations_to_target": to_target, "evaluations": counter.evaluations,
            "best_objective": float(f.min()), "wall_time_s": time.perf_counter() - t0,
            "best_by_evaluation": np.minimum.accumulate(f).tolist()}


def run_swarm(fn, predictor, space, objective, args, seed) -> dict[str, Any]:
    r = fn(predictor, space, objective, n_particles=args.particles, iters=args.iters, n_images=args.n_images,
           seed=seed, noise_seed=args.seed)
    per_eval = np.repeat(r.history, args.particles)  # best F after each evaluation (iteration granularity)
    return {"met": r.met, "evaluations_to_target": r.evaluations_to_target, "evaluations": r.evaluations,
            "best_objective": r.best.objective, "wall_time_s": r.wall_time_s, "best_by_evaluation": per_eval.tolist()}


def best_after(run: dict[str, Any], n: int) -> float:
    """Best F after ``n`` evaluations (the final best when the run stopped earlier, having met the target)."""
    history = run["best_by_evaluation"]
    return float(history[min(n, len(history)) - 1])


def summarise(runs: list[dict[str, Any]], budget: int, common: int) -> dict[str, Any]:
    met = [r["evaluations_to_target"] for r in runs if r["met"]]
    return {"met": len(met), "targets": len(runs), "budget": budget,
            "mean_evaluations_to_target": float(np.mean(met)) if met else None,
            "median_best_objective": float(np.median([r["best_objective"] for r in runs])),
            "common_budget": common,
            "median_best_at_common_budget": float(np.median([best_after(r, common) for r in runs])),
            "mean_wall_time_s": float(np.mean([r["wall_time_s"] for r in runs]))}


def own_target(predictor: Any, space: SearchSpace, args: argparse.Namespace) -> Objective:
    """The objective of the first target ``predictor`` itself makes (as :func:`make_targets`)."""
    return Objective(make_targets(predictor, space, 1, args.seed, args.n_images, args.target_std)[0])


def paper_budget_run(predictor: Any, space: SearchSpace, objective: Objective, args: argparse.Namespace) -> dict:
    """Paper 000's swarm, 40 particles x 50 iterations run to the end (no early stop), batched and cached."""
    cached = CachedPredictor(predictor)
    peak0 = _peak_rss_mb()
    r = run_pso(cached, space, objective, n_particles=40, iters=50, n_images=args.n_images, seed=args.seed,
                stop_when_met=False)
    return {"wall_time_s": r.wall_time_s, "evaluations": r.evaluations, "distinct_evaluations": cached.evaluations,
            "predict_calls": cached.batches, "met": r.met, "evaluations_to_target": r.evaluations_to_target,
            "peak_rss_mb": max(peak0, _peak_rss_mb())}


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batching_ratio(predictor: Any, space: SearchSpace, objective: Objective, args: argparse.Namespace) -> dict:
    kwargs = dict(n_particles=args.particles, iters=args.batching_iters or max(2, args.iters // 2),
                  n_images=args.n_images, seed=0, stop_when_met=False)
    runs = {mode: [run_pso(predictor, space, objective, batch=mode == "batched", **kwargs)
                   for _ in range(args.batching_repeats)]
            for mode in ("batched", "unbatched")}
    # the simulator fake answers identically; a neural surrogate's batched kernels differ in the last bits, which
    # can move a texture measurement: report how far the two runs' best-F histories are apart
    a, b = np.asarray(runs["batched"][0].history), np.asarray(runs["unbatched"][0].history)
    history_rel_diff = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12)))
    best = {mode: min(r.wall_time_s for r in rs) for mode, rs in runs.items()}  # min of repeats: least disturbed
    return {"batched_s": best["batched"], "unbatched_s": best["unbatched"],
            "unbatched_over_batched": best["unbatched"] / best["batched"],
            "predict_calls": [runs["batched"][0].predict_calls, runs["unbatched"][0].predict_calls],
            "history_max_relative_difference": history_rel_diff}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictor", choices=["simulator"], default="simulator")
    parser.add_argument("--model", default=None, help="surrogate folder (models.surrogate.SurrogatePredictor)")
    parser.add_argument("--targets", type=int, default=4)
    parser.add_argument("--particles", type=int, default=20)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--n-images", type=int, default=4)
    parser.add_argument("--bo-init", type=int, default=8)
    parser.add_argument("--bo-q", type=int, default=4)
    parser.add_argument("--bo-rounds", type=int, default=8)
    parser.add_argument("--call-overhead-ms", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=None, help="surrogate solver steps (default: the model's)")
    parser.add_argument("--batching-iters", type=int, default=None, help="iterations of the batching comparison "
                                                                         "(default: --iters / 2)")
    parser.add_argument("--batching-repeats", type=int, default=3)
    parser.add_argument("--target-std", action="store_true", help="targets also set the sphericity std")
    parser.add_argument("--paper-budget", action="store_true",
                        help="also time one 40 x 50 swarm run to the end (paper 000's budget), batched and cached")
    parser.add_argument("--paper-budget-precisions", action="store_true",
                        help="run the paper's swarm with the surrogate sampling in float32 and under CPU bfloat16 "
                             "autocast (instead of once at the model's default precision), and their ratio")
    parser.add_argument("--paper-budget-images", action="store_true",
                        help="also run the paper's swarm on the generated images' descriptors alone (no stack)")
    parser.add_argument("--images-high-steps", type=int, default=None,
                        help="with --paper-budget-images: solver steps of its 30k× tiles (default: --steps)")
    parser.add_argument("--images-high-images", type=int, default=None,
                        help="with --paper-budget-images: 30k× tiles per condition (default: --n-images)")
    parser.add_argument("--images-baseline", action="store_true",
                        help="with --paper-budget-images: also run it with both magnifications at --steps x "
                             "--n-images, and the ratio")
    parser.add_argument("--images-baseline-decode-batch", type=int, default=None,
                        help="with --paper-budget-images: the baseline run's tiles per decoder call (implies "
                             "--images-baseline)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 was fastest on 2 busy cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout, nothing else")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    space = SearchSpace.default()
    predictor = load_predictor(args)
    targets = make_targets(predictor, space, args.targets, args.seed, args.n_images, args.target_std)
    runs: dict[str, list] = {"pso": [], "botorch": [], "random": []}
    for i, target in enumerate(targets):
        objective = Objective(target)
        seed = args.seed + i
        runs["pso"].append(run_swarm(run_pso, predictor, space, objective, args, seed))
        runs["random"].append(run_swarm(run_random_search, predictor, space, objective, args, seed))
        runs["botorch"].append(run_botorch(predictor, space, objective, args, seed))
        print(f"target {i + 1}/{len(targets)}: " + ", ".join(f"{m} met={r[-1]['met']} "
              f"evals={r[-1]['evaluations_to_target']}" for m, r in runs.items()), file=sys.stderr)
    swarm_budget, bo_budget = args.particles * args.iters, args.bo_init + args.bo_q * args.bo_rounds
    common = min(swarm_budget, bo_budget)
    summary = {"pso": summarise(runs["pso"], swarm_budget, common),
               "random": summarise(runs["random"], swarm_budget, common),
               "botorch": summarise(runs["botorch"], bo_budget, common)}
    for s in summary.values():
        s["best_at_common_budget_vs_random"] = (s["median_best_at_common_budget"]
                                                / summary["random"]["median_best_at_common_budget"])
    report = {"predictor": args.model or args.predictor, "args": vars(args), "summary": summary, "runs": runs,
              "batching": batching_ratio(predictor, space, Objective(targets[0]), args)}
    if args.paper_budget and args.paper_budget_precisions and args.model is not None:
        from models.surrogate.predictor import SurrogatePredictor

        for precision in ("float32", "bfloat16"):
            at = SurrogatePredictor(predictor.surrogate, steps=args.steps, precision=precision)
            report[f"paper_budget_{precision}"] = paper_budget_run(at, space, Objective(targets[0]), args)
        report["paper_budget_bfloat16"]["float32_over_bfloat16"] = (
            report["paper_budget_float32"]["wall_time_s"] / report["paper_budget_bfloat16"]["wall_time_s"])
    elif args.paper_budget:
        report["paper_budget"] = paper_budget_run(predictor, space, Objective(targets[0]), args)
    if args.paper_budget and args.paper_budget_images and args.model is not None:
        from models.surrogate.model import DECODE_BATCH
        from models.surrogate.predictor import SurrogatePredictor

        images_only = SurrogatePredictor(predictor.surrogate, steps=args.steps, stack=False,
                                         high_steps=args.images_high_steps, high_images=args.images_high_images)
        # the images alone do not reproduce the stack's sphericity: their target is their own output, reachable
        report["paper_budget_images"] = paper_budget_run(images_only, space, own_target(images_only, space, args),
                                                         args)
        report["paper_budget_images"].update(high_steps=args.images_high_steps, high_images=args.images_high_images)
        if args.images_baseline or args.images_baseline_decode_batch:
            decode_batch = args.images_baseline_decode_batch or DECODE_BATCH
            baseline = SurrogatePredictor(predictor.surrogate, steps=args.steps, stack=False,
                                          decode_batch=decode_batch)
            report["paper_budget_images_baseline"] = paper_budget_run(baseline, space,
                                                                      own_target(baseline, space, args), args)
            report["paper_budget_images_baseline"]["decode_batch"] = decode_batch
            report["paper_budget_images"]["baseline_over_this"] = (
                report["paper_budget_images_baseline"]["wall_time_s"] / report["paper_budget_images"]["wall_time_s"])
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return report


def print_table(report: dict[str, Any]) -> None:
    print(f"predictor: {report['predictor']}  (targets: the predictor's own outputs at random conditions; "
          "met = every descriptor within 5 %)")
    common = next(iter(report["summary"].values()))["common_budget"]
    print(f"{'method':<9}{'met':>7}{'budget':>8}{'evals to target':>17}{'median F':>11}"
          f"{f'F@{common}':>11}{'vs random':>11}{'wall s':>9}")
    for name, s in report["summary"].items():
        evals = "-" if s["mean_evaluations_to_target"] is None else f"{s['mean_evaluations_to_target']:.1f}"
        print(f"{name:<9}{s['met']:>4}/{s['targets']:<2}{s['budget']:>8}{evals:>17}{s['median_best_objective']:>11.2e}"
              f"{s['median_best_at_common_budget']:>11.2e}{s['best_at_common_budget_vs_random']:>11.2f}"
              f"{s['mean_wall_time_s']:>9.2f}")
    print("evals to target: mean over the runs that met it; F@N: median best F after N evaluations (equal budget)")
    b = report["batching"]
    print(f"PSO one predict call per iteration: {b['batched_s']:.3f} s; one per particle: {b['unbatched_s']:.3f} s "
          f"(x{b['unbatched_over_batched']:.2f}; calls {b['predict_calls'][0]} vs {b['predict_calls'][1]}; best-F "
          f"histories differ by {100 * b['history_max_relative_difference']:.2g} % at most)")
    for key in ("paper_budget", "paper_budget_float32", "paper_budget_bfloat16", "paper_budget_images",
                "paper_budget_images_baseline"):
        if key in report:
            pb = report[key]
            print(f"PSO 40 x 50 to the end, batched and cached{key[len('paper_budget'):].replace('_', ', ')}: "
                  f"{pb['wall_time_s']:.1f} s, {pb['distinct_evaluations']} distinct evaluations in "
                  f"{pb['predict_calls']} calls, peak RSS {pb['peak_rss_mb']:.0f} MB, target "
                  + (f"met after {pb['evaluations_to_target']} evaluations" if pb["met"] else "not met"))


if __name__ == "__main__":
    main()
