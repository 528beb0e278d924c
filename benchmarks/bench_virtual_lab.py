"""Benchmarks of the virtual lab: simulated SEM and synthesize-and-image runs (speed and fidelity; not tests).

    .venv/bin/python benchmarks/bench_virtual_lab.py [--samples 8] [--fidelity 30]

Speed, each as a ratio against a baseline measured in the same run:
* simulated SEM micrographs/s at 512² (``render_micrograph``) for morphologies the world makes at varied
  conditions, low and high magnification separately and combined; goal ≥ 5 images/s on 2 cores.
  Baseline: the same frames rendered one after another in one process; measured: 2 worker processes.
  Second baseline: the older generic ``make_particle_field`` at a similar particle count and size.
* wall time of one ``simulate_samples`` run (one sample, low + high at 1024²), instant synthesis and a
  360-min synthesis at ``time_compression=1e4``.
Fidelity (``--fidelity N``): ``describe`` on 1024² frames of N random conditions against the world's truth.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy.stats import spearmanr

from flows.simulate import simulate_samples
from models.describe import DescribeError, Describer
from models.imageio import SEMImage
from simulators.conditions import CONDITIONS, DEFAULT_CONDITIONS, CategoricalCondition, Morphology
from simulators.coprecipitation import CoprecipitationWorld
from simulators.fields import make_particle_field
from simulators.microscope import MAGNIFICATIONS, render_micrograph

SHAPE = (512, 512)
WORKERS = min(2, os.cpu_count() or 1)


def random_conditions(rng: np.random.Generator) -> dict:
    """Conditions drawn uniformly in each continuous range, the atmosphere uniformly among its choices."""
    return {name: (str(rng.choice(c.choices)) if isinstance(c, CategoricalCondition)
                   else float(rng.uniform(c.low, c.high))) for name, c in CONDITIONS.items()}


def render(job: tuple[Morphology, str, int]) -> dict:
    """Render one 512² frame; ``job`` is (morphology, magnification name, seed). Returns its truth."""
    morphology, magnification, seed = job
    return render_micrograph(morphology, MAGNIFICATIONS[magnification], seed, shape=SHAPE).truth


def render_legacy(job: tuple[int, float, int]) -> None:
    """Render one 512² frame with the older generic renderer; ``job`` is (seed, d50_px, n_particles)."""
    seed, d50_px, n_particles = job
    make_particle_field(seed, shape=SHAPE, pixel_size_um=0.1, d50_px=d50_px, n_particles=n_particles)


def rate(fn, jobs: list, pool: ProcessPoolExecutor | None = None) -> tuple[float, list]:
    """Images per second of ``fn`` over ``jobs``, serially or on ``pool``; also the results."""
    t0 = time.perf_counter()
    results = list(pool.map(fn, jobs)) if pool is not None else [fn(j) for j in jobs]
    return len(jobs) / (time.perf_counter() - t0), results


def bench_rendering(n_samples: int) -> None:
    rng = np.random.default_rng(1)
    world = CoprecipitationWorld(0)
    morphologies = [world.truth(DEFAULT_CONDITIONS)] + [world.truth(random_conditions(rng))
                                                       for _ in range(n_samples - 1)]
    jobs = {mag: [(m, mag, 100 + i) for i, m in enumerate(morphologies)] for mag in ("low", "high")}
    jobs["combined"] = [j for pair in zip(jobs["low"], jobs["high"]) for j in pair]
    d50s = [m.d50_um for m in morphologies]
    print(f"morphologies (n={len(morphologies)}): D50 {min(d50s):.2f}..{max(d50s):.2f} µm, texture "
          f"{min(m.texture for m in morphologies):.2f}..{max(m.texture for m in morphologies):.2f}")
    serial = {mag: rate(render, jobs[mag]) for mag in ("low", "high")}
    serial["combined"] = (2 * n_samples / sum(n_samples / serial[m][0] for m in ("low", "high")), None)
    low_truth = serial["low"][1]
    n_particles = int(np.median([t["n_particles"] for t in low_truth]))
    d50_px = float(np.median([t["frame_d50_um"] for t in low_truth])) / 0.1  # low-mag pixels at 512²: 0.1 µm
    legacy_jobs = [(200 + i, d50_px, n_particles) for i in range(n_samples)]
    legacy, _ = rate(render_legacy, legacy_jobs)
    with ProcessPoolExecutor(max_workers=WORKERS) as pool:
        list(pool.map(render, jobs["combined"][:2 * WORKERS]))  # warm the workers (imports, caches)
        list(pool.map(render_legacy, legacy_jobs[:WORKERS]))
        parallel = {mag: rate(render, jobs[mag], pool)[0] for mag in ("low", "high", "combined")}
        legacy_parallel, _ = rate(render_legacy, legacy_jobs, pool)
    for mag in ("low", "high", "combined"):
        s, p = serial[mag][0], parallel[mag]
        print(f"render_micrograph 512² {mag:>8}: serial {s:.2f} img/s (baseline), {WORKERS} workers {p:.2f} img/s, "
              f"ratio {p / s:.2f}x; goal ≥ 5 img/s on 2 cores ({'met' if p >= 5 else 'NOT met'})")
    print(f"make_particle_field 512² (older generic renderer, {n_particles} particles, d50 {d50_px:.0f} px): "
          f"serial {legacy:.2f} img/s, {WORKERS} workers {legacy_parallel:.2f} img/s; render_micrograph low / "
          f"legacy: serial {serial['low'][0] / legacy:.2f}x, {WORKERS} workers "
          f"{parallel['low'] / legacy_parallel:.2f}x")


def bench_simulate() -> None:
    for compression in (None, 1e4):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            samples = simulate_samples([dict(DEFAULT_CONDITIONS)], os.path.join(tmp, "run"),
                                       time_compression=compression)
            wall = time.perf_counter() - t0
        label = "instant synthesis" if compression is None else f"time_compression={compression:g}"
        minutes = DEFAULT_CONDITIONS["time_min"]
        print(f"simulate_samples, 1 sample, low + high at 1024², {minutes:.0f}-min synthesis, {label}: "
              f"{wall:.2f} s wall ({len(samples)} sample, {len(samples[0].images)} images)")


def fidelity_case(job: tuple[Morphology, int]) -> tuple[float, float, float] | None:
    """Describe 1024² low/high frames of one morphology: (D50 rel err, Ψ mean err, texture), None on failure."""
    morphology, seed = job
    describer = Describer()
    try:
        low, high = (render_micrograph(morphology, MAGNIFICATIONS[m], seed + k) for k, m in enumerate(("low", "high")))
        d_low = describer.describe_array(SEMImage(low.image, low.pixel_size_um, "sim", "x")).descriptors
        d_high = describer.describe_array(SEMImage(high.image, high.pixel_size_um, "sim", "x")).descriptors
    except DescribeError:
        return None
    return (d_low["d50_um"] / morphology.d50_um - 1, d_low["sphericity_mean"] - morphology.sphericity_mean,
            d_high["texture"])


def bench_fidelity(n: int) -> None:
    rng = np.random.default_rng(2024)
    world = CoprecipitationWorld(0)
    morphologies = [world.truth(random_conditions(rng)) for _ in range(n)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=WORKERS) as pool:
        results = list(pool.map(fidelity_case, [(m, 5000 + 10 * i) for i, m in enumerate(morphologies)]))
    ok = [(r, m) for r, m in zip(results, morphologies) if r is not None]
    errs = np.array([r for r, _ in ok])
    rho = spearmanr(errs[:, 2], [m.texture for _, m in ok]).statistic
    print(f"fidelity (1024², {n} random conditions, {WORKERS} workers, {time.perf_counter() - t0:.1f} s; "
          f"{n - len(ok)} describe failures): max |D50 rel err| {np.abs(errs[:, 0]).max():.1%} "
          f"(median {np.median(np.abs(errs[:, 0])):.1%}), max |Ψ mean err| {np.abs(errs[:, 1]).max():.3f} "
          f"(median {np.median(np.abs(errs[:, 1])):.3f}), Spearman texture describe vs truth {rho:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=8, help="morphologies rendered per magnification")
    parser.add_argument("--fidelity", type=int, default=0, metavar="N",
                        help="also describe 1024² frames of N random conditions against the truth")
    args = parser.parse_args()
    bench_rendering(args.samples)
    bench_simulate()
    if args.fidelity:
        bench_fidelity(args.fidelity)
