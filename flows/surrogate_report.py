"""``morphloop surrogate report``: how faithful is the surrogate to the virtual lab on conditions it never saw?

Held-out conditions: the training set's interpolation points (``design_conditions(...)["heldout"]``, inside the
box, never trained on) and fresh uniformly random conditions ("unseen"). For each, the virtual lab synthesises
two samples and images them (8 tiles per magnification), and the surrogate generates 8 tiles per magnification;
both are described with the same pipeline and calibration. Figures:

* R² of per-condition mean descriptors (D50, texture, sphericity mean and std), surrogate vs simulator, beside
  two baselines: the nearest training condition's simulated tiles, and a GP from conditions to descriptors; for a
  model with a generation calibration (:mod:`models.surrogate.calibration`, fitted on training conditions only)
  also the surrogate's R² before it. The goals judge the generated images; a model's descriptor stack
  (:mod:`models.surrogate.stacking`) is not shown: it predicts what the lab measures on full SEM frames
  (``surrogate measure-training``), not the tile descriptors these references are, and its cross-validated R²
  is in ``surrogate.json`` (``descriptor_stacks[].r2``);
* the surrogate's R² again for every further noise seed (``seeds``): all conditions share each seed's noise
  tensors (common random numbers), so one seed shifts every condition's generated D50 alike and a single-seed R²
  is one draw (the shipped model's D50 R² at 4 tiles ranges 0.59-0.86 over seeds 0-5). The goals judge the mean
  over the seeds;
* Wasserstein distances of pooled particle diameters and sphericities, beside the distance between two
  independent simulated sample sets (the noise floor);
* memorisation: RMS distance of generated tiles to their nearest training tile, beside that of fresh simulated
  tiles (needs ``--data``);
* a PNG grid of simulated vs generated tiles across a pH sweep.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from flows.surrogate_data import CONTINUOUS, design_conditions, load_training_set, render_condition_tiles
from flows.surrogate_flow import load_tiles
from models.surrogate.calibration import training_tile_descriptors
from models.surrogate.descriptors import (DESCRIPTOR_NAMES, TRAINING_DESCRIPTORS_FILE, describe_high_tiles,
                                         describe_low_tiles)
from models.surrogate.fidelity import (gp_predict, mean_wasserstein, nearest_condition_index, nearest_neighbour_rms,
                                       r2_score)
from models.surrogate.predictor import SurrogatePredictor
from simulators.conditions import DEFAULT_CONDITIONS, validate_conditions

GOALS = {"texture": 0.94, "d50_um": 0.91}


def unseen_conditions(n: int, seed: int = 2026) -> list[dict]:
    """Uniformly random conditions (a generator no other part of the project uses)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cond = {c.name: round(float(rng.uniform(c.low, c.high)), 4) for c in CONTINUOUS}
        cond["atmosphere"] = ("n2", "sealed", "air")[i % 3]
        out.append(validate_conditions(cond))
    return out


def simulate_reference(conditions: list[dict], calibration: dict, pixel_size_um: dict, samples: int = 2,
                       seed: int = 777, progress: Callable[[int], None] | None = None) -> list[dict]:
    """Simulated tiles of each condition (``samples`` synthesised samples, 4 tiles each per magnification) and
    their pooled, calibrated descriptors."""
    out = []
    for i, cond in enumerate(conditions):
        stacks = {"low": [], "high": []}
        truth = []
        for s in range(samples):
            tiles, _, morphology = render_condition_tiles(cond, seed * 1000 + i * samples + s)
            truth.append(morphology)
            for mag in stacks:
                stacks[mag].append(tiles[mag])
        low_tiles, high_tiles = np.concatenate(stacks["low"]), np.concatenate(stacks["high"])
        low = describe_low_tiles(low_tiles, pixel_size_um["low"])
        half = describe_low_tiles(low_tiles[: len(low_tiles) // 2], pixel_size_um["low"])
        other = describe_low_tiles(low_tiles[len(low_tiles) // 2:], pixel_size_um["low"])
        a, b = calibration["d50_calibration"]
        out.append({"conditions": cond, "low": low_tiles, "high": high_tiles,
                    "descriptors": {"d50_um": a + b * low["d50_um"], "sphericity_mean": low["sphericity_mean"],
                                    "sphericity_std": low["sphericity_std"],
                                    "texture": describe_high_tiles(high_tiles, pixel_size_um["high"],
                                                                   calibration["texture_calibration"])["texture"]},
                    "truth": {k: float(np.mean([t[k] for t in truth])) for k in DESCRIPTOR_NAMES},
                    "diameters_um": low["diameters_um"], "sphericities": low["sphericities"],
                    "half_split": (half["diameters_um"], other["diameters_um"],
                                   half["sphericities"], other["sphericities"])})
        if progress:
            progress(1)
    return out


def _baselines(model_dir: Path, predictor: SurrogatePredictor, conditions: list[dict]) -> dict[str, np.ndarray]:
    """Nearest-training-condition and GP predictions (``n x 4``, DESCRIPTOR_NAMES order), calibrated."""
    path = model_dir / TRAINING_DESCRIPTORS_FILE
    if not path.is_file():
        return {}
    train_conditions, y = training_tile_descriptors(pd.read_json(path, orient="records"), predictor.surrogate.config)
    schema = predictor.surrogate.schema
    train_x, test_x = schema.encode(train_conditions), schema.encode(conditions)
    nearest = y[nearest_condition_index(test_x, train_x)]
    return {"nearest training condition": nearest, "GP conditions->descriptors": gp_predict(train_x, y, test_x)}


def sweep_grid_png(predictor: SurrogatePredictor, path: Path, values=(9.6, 10.1, 10.6, 11.1, 11.4)) -> Path:
    """Simulated vs generated tiles across a pH sweep (other conditions at their defaults)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = [validate_conditions({**DEFAULT_CONDITIONS, "ph": v}) for v in values]
    generated = predictor.generate(conditions, 1, seed=0)
    fig, axes = plt.subplots(4, len(values), figsize=(2.2 * len(values), 9.2))
    for j, cond in enumerate(conditions):
        simulated, _, _ = render_condition_tiles(cond, 4242 + j, n_tiles=1)
        rows = [("simulated 3k×", simulated["low"][0]), ("generated 3k×", generated["low"][j, 0]),
                ("simulated 30k×", simulated["high"][0]), ("generated 30k×", generated["high"][j, 0])]
        for i, (label, tile) in enumerate(rows):
            ax = axes[i, j]
            ax.imshow(tile, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label)
            if i == 0:
                ax.set_title(f"pH {cond['ph']:.1f}")
    fig.suptitle("Surrogate vs virtual lab across a pH sweep (128-px tiles; 0.2 and 0.01 µm/px)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fidelity_report(model_dir: str | Path, out_dir: str | Path, *, data_dir: str | Path | None = None,
                    n_heldout: int = 32, n_unseen: int = 16, n_images: int = 8, seed: int = 0,
                    more_seeds: Sequence[int] = (), progress: Callable[[str, int], None] | None = None) -> dict:
    """Compute the figures, write ``report.json``, ``report.md`` and ``sweep.png`` into ``out_dir``.

    ``seed`` gives the tiles of every figure; each of ``more_seeds`` generates the tiles again for the
    surrogate's R² alone (``r2_surrogate_by_seed``, ``r2_surrogate_over_seeds``), and the goals judge the mean
    over all of them."""
    seeds = list(dict.fromkeys([int(seed), *(int(s) for s in more_seeds)]))  # in order, once each
    if min(seeds) < 0:
        raise ValueError(f"noise seeds must be >= 0, got {seeds}")
    t0 = time.monotonic()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = SurrogatePredictor.from_pretrained(model_dir)
    cfg = predictor.surrogate.config
    heldout = design_conditions(n_heldout=max(n_heldout, 1))["heldout"][:n_heldout]
    conditions = heldout + unseen_conditions(n_unseen)
    groups = ["interpolation"] * len(heldout) + ["unseen"] * n_unseen
    calibration = {"d50_calibration": cfg.d50_calibration, "texture_calibration": cfg.texture_calibration}
    reference = simulate_reference(conditions, calibration, cfg.pixel_size_um,
                                   progress=(lambda k: progress("simulating", k)) if progress else None)
    t_gen = time.monotonic()
    predictions = predictor.predict(conditions, n_images=n_images, seed=seed, keep_images=True)
    generation_seconds = time.monotonic() - t_gen
    ref = np.array([[r["descriptors"][k] for k in DESCRIPTOR_NAMES] for r in reference], float)
    # the images' own descriptors are what the fidelity goals judge
    gen = np.array([[p.generated[k] for k in DESCRIPTOR_NAMES] for p in predictions], float)
    truth = np.array([[r["truth"][k] for k in DESCRIPTOR_NAMES] for r in reference], float)
    methods = {"surrogate": gen}
    if cfg.generation_calibration:
        methods["surrogate before generation calibration"] = np.array(
            [[p.uncalibrated[k] for k in DESCRIPTOR_NAMES] for p in predictions], float)
    methods.update(_baselines(model_dir, predictor, conditions))
    r2 = {name: {k: r2_score(ref[:, j], pred[:, j]) for j, k in enumerate(DESCRIPTOR_NAMES)}
          for name, pred in methods.items()}
    r2_by_seed = {str(seed): r2["surrogate"]}
    for extra in seeds[1:]:
        again = predictor.predict(conditions, n_images=n_images, seed=extra)
        values = np.array([[p.generated[k] for k in DESCRIPTOR_NAMES] for p in again], float)
        r2_by_seed[str(extra)] = {k: r2_score(ref[:, j], values[:, j]) for j, k in enumerate(DESCRIPTOR_NAMES)}
    by_seed = np.array([[r[k] for k in DESCRIPTOR_NAMES] for r in r2_by_seed.values()], float)
    over_seeds = {k: {"mean": float(by_seed[:, j].mean()), "min": float(by_seed[:, j].min()),
                      "max": float(by_seed[:, j].max())} for j, k in enumerate(DESCRIPTOR_NAMES)}
    r2_by_group = {g: {k: r2_score(ref[[i for i, x in enumerate(groups) if x == g], j],
                                   gen[[i for i, x in enumerate(groups) if x == g], j])
                       for j, k in enumerate(DESCRIPTOR_NAMES)} for g in ("interpolation", "unseen")}
    r2_simulator_vs_truth = {k: r2_score(truth[:, j], ref[:, j]) for j, k in enumerate(DESCRIPTOR_NAMES)}
    distribution = {
        "diameter_wasserstein_um": mean_wasserstein([p.diameters_um for p in predictions],
                                                    [r["diameters_um"] for r in reference]),
        "diameter_wasserstein_noise_floor_um": mean_wasserstein([r["half_split"][0] for r in reference],
                                                                [r["half_split"][1] for r in reference]),
        "sphericity_wasserstein": mean_wasserstein([p.sphericities for p in predictions],
                                                   [r["sphericities"] for r in reference]),
        "sphericity_wasserstein_noise_floor": mean_wasserstein([r["half_split"][2] for r in reference],
                                                               [r["half_split"][3] for r in reference]),
    }
    memorisation = None
    if data_dir is not None:
        table = load_training_set(data_dir)
        train = load_tiles(data_dir, table[table["split"] == "train"].reset_index(drop=True))
        memorisation = {}
        for mag in ("low", "high"):
            pool = train.tiles[[i for i, m in enumerate(train.magnifications) if m == mag]]
            gen_tiles = np.concatenate([p.images[mag] for p in predictions])[:256]
            sim_tiles = np.concatenate([r[mag] for r in reference])[:256]
            memorisation[mag] = {"generated_nn_rms": float(np.median(nearest_neighbour_rms(gen_tiles, pool))),
                                 "simulated_nn_rms": float(np.median(nearest_neighbour_rms(sim_tiles, pool)))}
    sweep = sweep_grid_png(predictor, out_dir / "sweep.png")
    report = {"model": str(model_dir), "n_conditions": len(conditions), "n_interpolation": len(heldout),
              "n_unseen": n_unseen, "images_per_condition": n_images,
              "generation_calibration": cfg.generation_calibration, "r2": r2, "r2_surrogate_by_group": r2_by_group,
              "r2_simulator_vs_truth": r2_simulator_vs_truth, "goals": GOALS,
              "seeds": seeds, "r2_surrogate_by_seed": r2_by_seed, "r2_surrogate_over_seeds": over_seeds,
              "goals_met": {k: bool(over_seeds[k]["mean"] >= v) for k, v in GOALS.items()},
              "distribution": distribution, "memorisation": memorisation,
              "generation_seconds": generation_seconds,
              "conditions_per_second": len(conditions) / generation_seconds,
              "grid_png": str(sweep), "wall_seconds": time.monotonic() - t0,
              "per_condition": [{"group": g, "conditions": c, "simulated": dict(zip(DESCRIPTOR_NAMES, r)),
                                 "generated": dict(zip(DESCRIPTOR_NAMES, p))}
                                for g, c, r, p in zip(groups, conditions, ref.tolist(), gen.tolist())]}
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, default=float))
    (out_dir / "report.md").write_text(report_markdown(report))
    return report


def report_markdown(report: dict) -> str:
    """The report's headline tables in markdown (also the Prefect artifact)."""
    names = list(DESCRIPTOR_NAMES)
    lines = [f"# Surrogate fidelity: {report['model']}", "",
             f"{report['n_conditions']} held-out conditions ({report['n_interpolation']} interpolation, "
             f"{report['n_unseen']} unseen), {report['images_per_condition']} tiles per magnification each.", "",
             "| R² vs simulator | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for method, values in report["r2"].items():
        lines.append(f"| {method} | " + " | ".join(f"{values[k]:.3f}" for k in names) + " |")
    if len(report.get("seeds", [])) > 1:
        over = report["r2_surrogate_over_seeds"]
        lines.append(f"| surrogate over noise seeds {', '.join(map(str, report['seeds']))}: mean (min-max) | "
                     + " | ".join(f"{over[k]['mean']:.3f} ({over[k]['min']:.3f}-{over[k]['max']:.3f})"
                                  for k in names) + " |")
    lines.append("| goal | " + " | ".join(f"{report['goals'].get(k, float('nan')):.2f}" for k in names) + " |")
    lines += ["", "| distribution | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4f} |" for k, v in report["distribution"].items()]
    if report.get("memorisation"):
        lines += ["", "| memorisation (median NN RMS to training tiles) | generated | simulated |", "| --- | --- | --- |"]
        lines += [f"| {m} | {v['generated_nn_rms']:.4f} | {v['simulated_nn_rms']:.4f} |"
                  for m, v in report["memorisation"].items()]
    lines += ["", f"Generation + description: {report['conditions_per_second']:.2f} conditions/s.",
              f"![sweep]({report['grid_png']})"]
    return "\n".join(lines) + "\n"
