"""``morphloop design``: conditions whose surrogate-generated images match a target morphology (paper 000, PSO).

It returns candidates; it never runs experiments (``morphloop simulate`` or a campaign does). ``--json`` prints one
object on stdout; progress goes to stderr.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import List, Optional

import typer

from loop.pso import DESIGN_POLISH_STARTS, DESIGN_UNCERTAINTY_WEIGHT


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _target(d50, sphericity, texture, sphericity_std, images: list[Path], pixel_size_um):
    """A :class:`loop.objective.Target` from numbers, from reference images, or both (numbers win)."""
    from loop.objective import Target, target_from_description

    if images:
        from models.describe import DescribeError, Describer

        describer = Describer()
        try:
            records = [describer.describe(p, pixel_size_um).record() for p in images]
        except DescribeError as exc:
            raise ValueError(str(exc)) from exc
        merged = {k: v for k, v in {"d50_um": d50, "sphericity_mean": sphericity, "texture": texture,
                                    "sphericity_std": sphericity_std}.items() if v is not None}
        return target_from_description(records + ([merged] if merged else []))
    missing = [flag for flag, v in (("--target-d50-um", d50), ("--target-sphericity", sphericity),
                                    ("--target-texture", texture)) if v is None]
    if missing:
        raise ValueError(f"give {', '.join(missing)} (or --target-image PATH for a reference image)")
    return Target(d50, sphericity, texture, sphericity_std)


def design(
    target_d50_um: Optional[float] = typer.Option(None, "--target-d50-um", help="Target number-median D50 (µm)."),
    target_sphericity: Optional[float] = typer.Option(None, "--target-sphericity", help="Target mean sphericity."),
    target_texture: Optional[float] = typer.Option(None, "--target-texture", help="Target texture in [0, 1]."),
    target_sphericity_std: Optional[float] = typer.Option(None, "--target-sphericity-std",
                                                          help="Target sphericity std (optional)."),
    target_image: Optional[List[Path]] = typer.Option(None, "--target-image",
                                                      help="Reference SEM image(s): a low- and a high-mag one."),
    pixel_size_um: Optional[float] = typer.Option(None, "--pixel-size-um", help="Pixel size of the reference."),
    model: Optional[Path] = typer.Option(None, "--model", help="Surrogate folder (default: the shipped model)."),
    particles: int = typer.Option(40, "--particles", help="Swarm size (paper 000: 40)."),
    iters: int = typer.Option(50, "--iters", help="Iterations at most (paper 000: 50)."),
    n_images: int = typer.Option(2, "--n-images", help="Generated tiles per condition and magnification."),
    steps: int = typer.Option(6, "--steps", help="Solver steps (the shipped model's stacked prediction is as "
                                                 "good at 6 as at 10: texture R² 0.93 and 0.92)."),
    uncertainty_weight: float = typer.Option(
        DESIGN_UNCERTAINTY_WEIGHT, "--uncertainty-weight",
        help="Weight of the prediction's own uncertainty in the score (1: expected F; 4: with the GP's sd doubled; "
             "0: F of the predicted mean, ignoring how sure the surrogate is)."),
    polish: int = typer.Option(
        DESIGN_POLISH_STARTS, "--polish",
        help="Refine this many of the swarm's best distinct candidates by pattern search (as many predictions as "
             "the swarm's): a closer predicted answer, but on the shipped GP no more targets met in the lab."),
    precision: str = typer.Option("auto", "--precision",
                                  help="Surrogate sampling: auto (CPU bfloat16 autocast where the CPU has bfloat16 "
                                       "instructions, x2.2 faster; float32 elsewhere), float32 or bfloat16."),
    seed: int = typer.Option(0, "--seed"),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the best candidate's generated tiles."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
) -> None:
    """Particle swarm over the surrogate toward a numeric or reference-image target."""
    from loop.objective import Objective
    from loop.predictor import CachedPredictor
    from loop.pso import inverse_design
    from loop.space import SearchSpace
    from models.precision import PRECISIONS
    from models.surrogate.model import DEFAULT_MODEL_DIR, SurrogateModelError
    from models.surrogate.predictor import SurrogatePredictor
    from simulators.fields import write_sem_tiff

    for flag, value in (("--particles", particles), ("--iters", iters), ("--n-images", n_images), ("--steps", steps)):
        if value < 1:
            _err(f"error: {flag} must be at least 1, got {value}")
            raise typer.Exit(2)
    if precision not in PRECISIONS:
        _err(f"error: --precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        raise typer.Exit(2)
    if polish < 0:
        _err(f"error: --polish must be a number of candidates >= 0, got {polish}")
        raise typer.Exit(2)
    if not (math.isfinite(uncertainty_weight) and uncertainty_weight >= 0):
        _err(f"error: --uncertainty-weight must be a finite number >= 0, got {uncertainty_weight}")
        raise typer.Exit(2)
    try:
        target = _target(target_d50_um, target_sphericity, target_texture, target_sphericity_std,
                         list(target_image or []), pixel_size_um)
    except ValueError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2)
    try:
        surrogate = SurrogatePredictor.from_pretrained(model or DEFAULT_MODEL_DIR, steps=steps, precision=precision)
    except SurrogateModelError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2)
    predictor = CachedPredictor(surrogate)
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(file=sys.stderr), transient=True) as progress:
        task = progress.add_task("particle swarm", total=iters)
        result = inverse_design(predictor, Objective(target), SearchSpace.default(), n_particles=particles,
                                iters=iters, n_images=n_images, seed=seed, uncertainty_weight=uncertainty_weight,
                                polish_starts=polish,
                                progress=lambda i, best: progress.update(task, completed=i))
    best = result.best
    images: dict[str, list[str]] = {}
    if out is not None:
        tiles = surrogate.generate([best.conditions], n_images, seed)
        for mag, stack in tiles.items():
            images[mag] = []
            for k, tile in enumerate(stack[0]):
                path = out / f"{mag}_{k}.tif"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_sem_tiff(path, tile, surrogate.surrogate.config.pixel_size_um[mag], bits=16,
                               extra={"conditions": best.conditions, "generated_by": "morphloop design"})
                images[mag].append(str(path))
    clean = lambda d: {k: (None if v is None or not math.isfinite(v) else v) for k, v in d.items()}  # noqa: E731
    record = {"conditions": best.conditions, "predicted": clean(best.descriptors), "spread": clean(best.spread),
              "uncertainty": clean(best.uncertainty), "objective": best.objective,
              "uncertainty_cost": best.uncertainty_cost, "met": best.met, "residuals": clean(best.residuals),
              "target": target.as_dict(), "images": images, "evaluations": result.evaluations,
              "wall_time_s": result.wall_time_s, "stopped": result.stopped,
              "polish_evaluations": result.extra.get("polish_evaluations", 0)}
    if as_json:
        typer.echo(json.dumps(record))
    else:
        _err(json.dumps(record, indent=1))
    if not best.met:
        _err("note: no candidate meets the target within tolerance; the closest one and its residuals are shown")
