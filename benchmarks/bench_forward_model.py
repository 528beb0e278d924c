"""How far the design's forward model (the surrogate's training-set GP) is from the virtual lab, and whether its
uncertainty says so.

Random conditions (``SearchSpace.default().sample``) are each made and measured ``--replicates`` times in the
virtual lab (``bench_campaign.Lab``: the RunEngine, the simulated reactor and SEM, ``describe``). Per descriptor
the GP's posterior mean is compared with the replicate mean:

* ``rmse``: RMS of (GP mean − replicate mean);
* ``model_error``: the same with the replicate means' own noise taken out in quadrature (the GP's error against
  the lab's expected value);
* ``gp_sigma``: the GP's mean posterior standard deviation;
* ``z_rms``: RMS of the error over ``sqrt(sigma² + se²)``, 1 for a calibrated uncertainty (the design's
  ``uncertainty_weight`` of 4 compensates a ``z_rms`` near 2);
* ``lab_noise``: the lab's per-sample standard deviation.

Usage::

    python benchmarks/bench_forward_model.py --conditions 30 --replicates 16 --reference ref.json --json

30 conditions x 16 replicates take about 11 min on 2 cores; ``--reference`` keeps the measured samples so that
another model can be compared on the same ones (an existing file is read instead of measuring again).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_campaign import Lab  # noqa: E402  (sets Prefect's environment before importing flows)
from loop.config import DESCRIPTORS  # noqa: E402
from loop.space import SearchSpace  # noqa: E402


def measure_reference(n_conditions: int, replicates: int, seed: int, work: Path) -> list[dict]:
    """``[{"conditions": ..., "samples": [describe record, ...]}]`` for ``n_conditions`` random conditions."""
    lab = Lab(work, stream=seed)
    out = []
    for i, conditions in enumerate(SearchSpace.default().sample(n_conditions, np.random.default_rng(seed))):
        out.append({"conditions": conditions, "samples": [lab.measure(conditions) for _ in range(replicates)]})
        print(f"  condition {i + 1}/{n_conditions} measured {replicates}x", file=sys.stderr, flush=True)
    return out


def gp_errors(reference: list[dict], model_dir: str | None) -> dict[str, dict[str, float]]:
    """Per descriptor: ``rmse``, ``model_error``, ``gp_sigma``, ``z_rms``, ``lab_noise`` (see the module doc)."""
    from models.surrogate.descriptors import DESCRIPTOR_NAMES
    from models.surrogate.model import DEFAULT_MODEL_DIR
    from models.surrogate.predictor import SurrogatePredictor

    predictor = SurrogatePredictor.from_pretrained(model_dir or DEFAULT_MODEL_DIR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mean, sigma = predictor.training_gp().posterior(
            predictor.surrogate.gp_inputs([r["conditions"] for r in reference]))
    out = {}
    for name in DESCRIPTORS:
        j = DESCRIPTOR_NAMES.index(name)
        samples = np.array([[np.nan if s.get(name) is None else float(s[name]) for s in r["samples"]]
                            for r in reference], float)
        count = np.isfinite(samples).sum(axis=1)
        ok = count >= 2
        lab_mean = np.nanmean(samples[ok], axis=1)
        lab_sd = np.nanstd(samples[ok], axis=1, ddof=1)
        se = lab_sd / np.sqrt(count[ok])
        err = mean[ok, j] - lab_mean
        out[name] = {
            "conditions": int(ok.sum()),
            "rmse": float(np.sqrt(np.mean(err ** 2))),
            "model_error": float(np.sqrt(max(np.mean(err ** 2) - np.mean(se ** 2), 0.0))),
            "gp_sigma": float(np.mean(sigma[ok, j])),
            "z_rms": float(np.sqrt(np.mean(err ** 2 / (sigma[ok, j] ** 2 + se ** 2)))),
            "lab_noise": float(np.mean(lab_sd)),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conditions", type=int, default=30)
    parser.add_argument("--replicates", type=int, default=16)
    parser.add_argument("--seed", type=int, default=4242, help="Picks the conditions and the lab's batches.")
    parser.add_argument("--model", default=None, help="Surrogate directory (default: the shipped model).")
    parser.add_argument("--reference", default=None,
                        help="JSON file of measured samples: read if it exists, else written after measuring.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.conditions < 1 or args.replicates < 2:
        parser.error("--conditions must be >= 1 and --replicates >= 2 (the noise needs two samples)")

    ref_path = Path(args.reference) if args.reference else None
    if ref_path is not None and ref_path.is_file():
        reference = json.loads(ref_path.read_text())
    else:
        with tempfile.TemporaryDirectory() as work:
            reference = measure_reference(args.conditions, args.replicates, args.seed, Path(work))
        if ref_path is not None:
            ref_path.write_text(json.dumps(reference, default=float))
    result = {"conditions": len(reference), "replicates": len(reference[0]["samples"]),
              "gp": gp_errors(reference, args.model)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['conditions']} conditions x {result['replicates']} replicates")
        print(f"{'descriptor':<16}{'rmse':>9}{'model err':>11}{'GP sigma':>10}{'z rms':>8}{'lab noise':>11}")
        for name, row in result["gp"].items():
            print(f"{name:<16}{row['rmse']:9.4f}{row['model_error']:11.4f}{row['gp_sigma']:10.4f}"
                  f"{row['z_rms']:8.2f}{row['lab_noise']:11.4f}")
    return result


if __name__ == "__main__":
    main()
