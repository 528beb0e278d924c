"""Screening speed of the surrogate (generate + describe), a benchmark, not a test.

    .venv/bin/python benchmarks/bench_surrogate.py [--model DIR] [--conditions 32] [--n 4] [--steps 10 6]
                                                   [--precision auto] [--threads 2]
                                                   [--high-steps S] [--high-n K]
                                                   [--baseline-config JSON] [--baseline-decode-batch N]
                                                   [--flops] [--json]

For each solver step count: conditions per second for batched screening (all conditions' tiles in batches of 64)
and, as the baseline measured in the same run, one condition at a time (batch = one condition's tiles); the split
between generation and description; peak resident memory. ``--precision float32 bfloat16`` repeats it per
sampler precision (``auto``, the default, is bfloat16 where the CPU has bfloat16 instructions). Also prints the
shipped model's training time from its
``training_summary.json``. ``--baseline-config '{"guidance_interval": 1.0, "guidance_scale": {"low": 4, "high": 1.5}}'``
also screens the same conditions with those config fields overridden (here: every solver step guided, as before
guidance was limited to an interval) and reports the batched ratio; ``--baseline-decode-batch 64`` does the same
with the decoder taking that many tiles per call (64: before decoding in calls of
``models.surrogate.model.DECODE_BATCH``; the tiles are the same). ``--high-steps`` and ``--high-n`` give the
30k× tiles their own solver steps and tile count (``SurrogatePredictor(high_steps=, high_images=)``) and screen
the same conditions with both magnifications at ``--steps`` x ``--n`` as the baseline. ``--flops`` adds the
compute budget of each setting: the convolution and matrix FLOPs of one condition's tiles (torch's FLOP counter
on one denoiser pass and one decode, times the passes the sampler makes), the rate the goal would need, the rate
this run's generation reached, and this host's own matrix-multiply rate at the sampler's precision as a ceiling.
Goal (issue 4): >= 10 conditions/s on 2 cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.precision import PRECISIONS, bfloat16_autocast, resolve_bfloat16  # noqa: E402
from models.surrogate.model import DECODE_BATCH, DEFAULT_MODEL_DIR, LatentDiffusionSurrogate  # noqa: E402
from models.surrogate.predictor import SurrogatePredictor  # noqa: E402


def random_conditions(predictor: SurrogatePredictor, n: int, seed: int = 5) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        cond = {}
        for spec in predictor.surrogate.schema.specs:
            cond[spec.name] = (str(rng.choice(spec.choices)) if spec.kind == "categorical"
                               else float(rng.uniform(spec.low, spec.high)))
        out.append(cond)
    return out


def warmed(predictor: SurrogatePredictor, conditions: list[dict]) -> SurrogatePredictor:
    """``predictor`` after one prediction: one-time costs (the stack's GP factorisation, 7 s with 3200 samples;
    first kernels) stay out of the timings."""
    predictor.predict(conditions[:1], n_images=1)
    return predictor


def screen(predictor: SurrogatePredictor, conditions: list[dict], n: int, per_condition: bool) -> dict:
    t0 = time.perf_counter()
    if per_condition:
        tiles = [predictor.generate([c], n, seed=0) for c in conditions]
        tiles = {m: np.concatenate([t[m] for t in tiles]) for m in ("low", "high")}
    else:
        tiles = predictor.generate(conditions, n, seed=0)
    t1 = time.perf_counter()
    predictor.describe(conditions, tiles)
    t2 = time.perf_counter()
    return {"conditions_per_s": len(conditions) / (t2 - t0), "generate_s": t1 - t0, "describe_s": t2 - t1}


GOAL_CONDITIONS_PER_S = 10.0


def matmul_gflops(bfloat16: bool, size: int = 2048, repeats: int = 10) -> float:
    """This host's dense matrix-multiply rate (GFLOP/s) at the sampler's precision: a practical ceiling."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    with bfloat16_autocast(bfloat16):
        for _ in range(2):
            a @ b
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        seconds = (time.perf_counter() - t0) / repeats
    return 2 * size**3 / seconds / 1e9


def compute_budget(predictor: SurrogatePredictor, conditions: list[dict], n: int) -> dict:
    """FLOPs (convolutions and matrix products; elementwise work not counted) of generating one condition's
    tiles at this setting, and the rate :data:`GOAL_CONDITIONS_PER_S` would need."""
    from torch.utils.flop_counter import FlopCounterMode

    sur, cfg = predictor.surrogate, predictor.surrogate.config
    latents = torch.randn(16, cfg.latent_channels, cfg.latent_px, cfg.latent_px)
    emb = sur.encoder(torch.from_numpy(sur.condition_vectors(conditions[:1] * 16, "low")))
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            sur.unet(latents, torch.tensor(500), class_labels=emb)
        unet = counter.get_total_flops() / 16
        with FlopCounterMode(display=False) as counter:
            sur.vae.decode(latents / cfg.latent_scale)
        decoder = counter.get_total_flops() / 16
    setting = predictor.tile_setting(n)
    passes = {mag: sur.denoiser_passes(mag, s, predictor.guidance_scale) for mag, (_, s) in setting.items()}
    per_condition = sum(k * (passes[mag] * unet + decoder) for mag, (k, _) in setting.items())
    return {"denoiser_gflop_per_pass": unet / 1e9, "decoder_gflop_per_tile": decoder / 1e9,
            "denoiser_passes_per_tile": passes, "gflop_per_condition": per_condition / 1e9,
            "goal_gflop_per_s": GOAL_CONDITIONS_PER_S * per_condition / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--conditions", type=int, default=32)
    parser.add_argument("--n", type=int, default=4, help="tiles per condition and magnification")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 6])
    parser.add_argument("--precision", nargs="+", default=["auto"], choices=list(PRECISIONS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline-config", type=json.loads, default=None,
                        help="JSON of surrogate config fields to override for a baseline screened in the same run")
    parser.add_argument("--baseline-decode-batch", type=int, default=None,
                        help="tiles per decoder call for a baseline screened in the same run")
    parser.add_argument("--high-steps", type=int, default=None, help="solver steps of the 30k× tiles")
    parser.add_argument("--high-n", type=int, default=None, help="30k× tiles per condition")
    parser.add_argument("--flops", action="store_true",
                        help="also report the FLOPs per condition, the rate the goal needs and this host's ceiling")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    baseline = None
    if args.baseline_config or args.baseline_decode_batch or args.high_steps or args.high_n:
        baseline = LatentDiffusionSurrogate.from_pretrained(args.model)
        baseline.config = dataclasses.replace(baseline.config, **(args.baseline_config or {}))
    baseline_decode_batch = args.baseline_decode_batch or DECODE_BATCH
    torch.set_num_threads(args.threads)
    rows = []
    for precision in args.precision:
        for steps in args.steps:
            predictor = SurrogatePredictor.from_pretrained(args.model, steps=steps, precision=precision,
                                                           high_steps=args.high_steps, high_images=args.high_n)
            conditions = random_conditions(predictor, args.conditions)
            warmed(predictor, conditions)
            batched = screen(predictor, conditions, args.n, per_condition=False)
            single = screen(predictor, conditions[: max(4, args.conditions // 4)], args.n, per_condition=True)
            row = {"precision": precision, "steps": steps, "batched": batched, "one_at_a_time": single,
                   "speedup": batched["conditions_per_s"] / single["conditions_per_s"]}
            if baseline is not None:
                base_predictor = SurrogatePredictor(baseline, steps=steps, precision=precision,
                                                    decode_batch=baseline_decode_batch)
                base = screen(warmed(base_predictor, conditions), conditions, args.n, per_condition=False)
                row["baseline"] = base
                row["over_baseline"] = batched["conditions_per_s"] / base["conditions_per_s"]
            if args.flops:
                budget = compute_budget(predictor, conditions, args.n)
                budget["generation_gflop_per_s"] = (budget["gflop_per_condition"] * len(conditions)
                                                    / batched["generate_s"])
                budget["host_matmul_gflop_per_s"] = matmul_gflops(resolve_bfloat16(precision))
                row["compute"] = budget
            rows.append(row)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary_path = args.model / "training_summary.json"
    training = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    result = {"model": str(args.model), "tiles_per_condition_per_magnification": args.n,
              "high_steps": args.high_steps, "high_tiles_per_condition": args.high_n, "threads": args.threads,
              "rows": rows, "peak_rss_mib": peak_mib,
              "training_wall_seconds": training.get("wall_seconds"), "training_minutes_budget":
                  training.get("minutes_budget")}
    if args.json:
        print(json.dumps(result))
        return
    high = (f" (30k×: {args.high_n or args.n} tiles at {args.high_steps or 'the same'} steps)"
            if args.high_steps or args.high_n else "")
    print(f"model {args.model}; {args.n} tiles per condition per magnification{high}; {args.threads} threads")
    print(f"{'precision':>9} {'steps':>5} {'batched cond/s':>15} {'one-at-a-time':>14} {'speedup':>8} {'gen s':>7} "
          f"{'describe s':>10}")
    for r in rows:
        b = r["batched"]
        print(f"{r['precision']:>9} {r['steps']:>5} {b['conditions_per_s']:>15.2f} "
              f"{r['one_at_a_time']['conditions_per_s']:>14.2f} "
              f"{r['speedup']:>8.2f} {b['generate_s']:>7.1f} {b['describe_s']:>10.1f}")
        if "baseline" in r:
            print(f"{'':>9} {'':>5} baseline {r['baseline']['conditions_per_s']:.2f} cond/s "
                  f"(generate {r['baseline']['generate_s']:.1f} s): x{r['over_baseline']:.2f} over the baseline")
        if "compute" in r:
            c = r["compute"]
            print(f"{'':>9} {'':>5} compute: {c['gflop_per_condition']:.1f} GFLOP per condition (denoiser "
                  f"{c['denoiser_gflop_per_pass']:.3f} GFLOP x passes per tile {c['denoiser_passes_per_tile']}, "
                  f"decoder {c['decoder_gflop_per_tile']:.3f} GFLOP per tile); {GOAL_CONDITIONS_PER_S:.0f} "
                  f"conditions/s need {c['goal_gflop_per_s']:.0f} GFLOP/s; generation here ran at "
                  f"{c['generation_gflop_per_s']:.0f}; this host's matrix multiply {c['host_matmul_gflop_per_s']:.0f}")
    print(f"peak RSS {peak_mib:.0f} MiB; goal {GOAL_CONDITIONS_PER_S:.0f} conditions/s")
    if training:
        print(f"training: {training.get('wall_seconds', float('nan')):.0f} s wall for a "
              f"{training.get('minutes_budget')} min budget")


if __name__ == "__main__":
    main()
