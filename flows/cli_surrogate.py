"""``morphloop surrogate``: build a training set, train, generate, report (paper 000's forward model).

``--json`` output goes to stdout, one object per line, and nothing else does; progress and logs go to stderr.
"""
from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import typer

surrogate_app = typer.Typer(help="Conditional diffusion surrogate: synthesis conditions -> SEM images.",
                            no_args_is_help=True)


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _console():
    from rich.console import Console

    return Console(file=sys.stderr)


def _default_model(model: Optional[Path]) -> Path:
    from models.surrogate.model import CONFIG_FILE, DEFAULT_MODEL_DIR

    path = model or DEFAULT_MODEL_DIR
    if not (path / CONFIG_FILE).is_file():
        _err(f"error: {path} is not a surrogate model ({CONFIG_FILE} missing); pass --model MODEL_DIR written by "
             "'morphloop surrogate train'")
        raise typer.Exit(2)
    return path


def parse_conditions_arg(text: str) -> list[dict]:
    """A JSON object, a JSON list of objects, or a path to a .json / .jsonl file holding them."""
    source = text
    path = Path(text)
    if not text.lstrip().startswith(("{", "[")):
        if not path.is_file():
            raise ValueError(f"--conditions {text!r} is neither JSON nor an existing file; pass e.g. "
                             "'{\"ph\": 10.5, ...}' or a .json/.jsonl file")
        source = path.read_text()
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in source.splitlines() if line.strip()]
    try:
        data = json.loads(source)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--conditions is not valid JSON ({exc})") from exc
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(i, dict) for i in items):
        raise ValueError("--conditions must be a JSON object or a non-empty list of objects (name -> value)")
    return items


@surrogate_app.command("build-data")
def build_data(
    out: Path = typer.Option(..., "--out", help="New folder for tiles + tiles.parquet + design.json."),
    n_interior: int = typer.Option(256, "--interior", help="Sobol conditions inside the box."),
    n_faces: int = typer.Option(64, "--faces", help="Conditions on the box's faces."),
    n_heldout: int = typer.Option(32, "--heldout", help="Interpolation conditions left out of training."),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(2, "--workers", help="Rendering processes."),
    n_log_uniform: int = typer.Option(
        0, "--log-uniform", min=0, help="More training conditions with the NaOH and NH4OH loadings and the aging "
        "time drawn over their log-range."),
) -> None:
    """Render the surrogate's training set on the virtual lab (design documented in flows/surrogate_data.py)."""
    from rich.progress import Progress

    from flows.surrogate_data import build_training_set

    try:
        with Progress(console=_console(), transient=True) as progress:
            task = progress.add_task("rendering conditions", total=n_interior + n_faces + n_heldout + n_log_uniform)
            table = build_training_set(out, n_interior=n_interior, n_faces=n_faces, n_heldout=n_heldout,
                                       seed=seed, workers=workers, progress=lambda k: progress.advance(task, k),
                                       n_log_uniform=n_log_uniform)
    except (FileExistsError, ValueError) as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2)
    _err(f"wrote {len(table)} tiles to {out}")


@surrogate_app.command("train")
def train(
    data: Path = typer.Option(..., "--data", help="Training set from 'morphloop surrogate build-data'."),
    out: Path = typer.Option(..., "--out", help="Model folder (diffusers parts: safetensors + config.json)."),
    minutes: float = typer.Option(30.0, "--minutes", help="Training time budget (autoencoder + denoiser)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint."),
    seed: int = typer.Option(0, "--seed"),
    init_from: Optional[Path] = typer.Option(
        None, "--init-from", help="Start from this trained model: keep its autoencoder and continue its denoiser "
        "for the whole budget (a warm restart of a finished run)."),
    low_weight: float = typer.Option(
        1.0, "--low-weight", help="Draw low-magnification tiles this many times as often as high ones."),
    calibration_conditions: int = typer.Option(
        64, "--calibration-conditions", min=0,
        help="Training conditions the generation calibration is fitted on at the end (0: none)."),
) -> None:
    """Train the surrogate from scratch as a Prefect flow (checkpoints every 100 steps)."""
    if not (minutes > 0 and math.isfinite(minutes)):
        _err(f"error: --minutes must be a positive number, got {minutes}")
        raise typer.Exit(2)
    if not (low_weight > 0 and math.isfinite(low_weight)):
        _err(f"error: --low-weight must be a positive number, got {low_weight}")
        raise typer.Exit(2)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.surrogate_flow import train_surrogate

    t0 = time.perf_counter()
    with Progress(TextColumn("training surrogate"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=_console(), transient=True) as progress:
        task = progress.add_task("train", total=minutes * 60.0, info="")

        def report(phase: str, step: int, loss: float) -> None:
            progress.update(task, completed=min(time.perf_counter() - t0, minutes * 60.0),
                            info=f"{phase} step {step}, loss {loss:.4f}")

        try:
            summary = train_surrogate(str(data), str(out), minutes=minutes, resume=resume, seed=seed,
                                      progress=report, init_from=str(init_from) if init_from else None,
                                      low_magnification_weight=low_weight,
                                      calibration_conditions=calibration_conditions)
        except (FileNotFoundError, ValueError) as exc:
            _err(f"error: {exc}")
            raise typer.Exit(2)
    _err(f"model saved to {out} ({summary['wall_seconds']:.0f} s)")


@surrogate_app.command("generate")
def generate(
    conditions: str = typer.Option(..., "--conditions", help="JSON object/list, or a .json/.jsonl file."),
    n: int = typer.Option(4, "--n", help="Images per condition and magnification."),
    out: Path = typer.Option(..., "--out", help="Folder for the generated TIFF tiles."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model folder (default: the shipped model)."),
    seed: int = typer.Option(0, "--seed", help="Noise seed: the same seed gives the same images."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Solver steps (default: the model's)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per condition on stdout."),
) -> None:
    """Generate SEM tiles for synthesis conditions and describe them with describe's pipeline."""
    from models.surrogate.conditioning import ConditionInputError, OutOfDomainWarning
    from models.surrogate.predictor import SurrogatePredictor
    from simulators.fields import write_sem_tiff

    if n < 1:
        _err(f"error: --n must be at least 1, got {n}")
        raise typer.Exit(2)
    try:
        items = parse_conditions_arg(conditions)
    except ValueError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2)
    predictor = SurrogatePredictor.from_pretrained(_default_model(model), steps=steps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OutOfDomainWarning)
        try:
            predictions = predictor.predict(items, n_images=n, seed=seed, keep_images=True)
        except ConditionInputError as exc:
            _err(f"error: {exc}")
            raise typer.Exit(2)
    for w in caught:
        if issubclass(w.category, OutOfDomainWarning):
            _err(f"warning: {w.message}")
    px = predictor.surrogate.config.pixel_size_um
    for i, pred in enumerate(predictions):
        paths: dict[str, list[str]] = {}
        for mag, stack in pred.images.items():
            paths[mag] = []
            for k, tile in enumerate(stack):
                path = out / f"condition_{i:03d}" / f"{mag}_{k}.tif"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_sem_tiff(path, tile, px[mag], bits=16, extra={"conditions": pred.conditions,
                                                                    "generated_by": "morphloop surrogate"})
                paths[mag].append(str(path))
        clean = lambda d: {k: (None if not math.isfinite(v) else v) for k, v in d.items()}  # noqa: E731
        # descriptors of the generated images; the stacked screening prediction (images + training-set GP) apart
        record = {"conditions": pred.conditions, "images": paths, "pixel_size_um": px,
                  "descriptors": clean(pred.generated), "predicted": clean(pred.descriptors),
                  "domain_distance": None if not math.isfinite(pred.domain_distance) else pred.domain_distance}
        if as_json:
            typer.echo(json.dumps(record))
        else:
            d = pred.generated
            _err(f"condition {i}: D50 {d['d50_um']:.2f} µm, sphericity {d['sphericity_mean']:.3f} "
                 f"± {d['sphericity_std']:.3f}, texture {d['texture']:.3f} -> {out / f'condition_{i:03d}'}")


def _model_with_training_descriptors(model: Optional[Path], verb: str) -> Path:
    """The model folder, or exit 2 when it lacks the training descriptors that ``verb`` fits on."""
    from models.surrogate.descriptors import TRAINING_DESCRIPTORS_FILE

    model_dir = _default_model(model)
    if not (model_dir / TRAINING_DESCRIPTORS_FILE).is_file():
        _err(f"error: {model_dir} has no {TRAINING_DESCRIPTORS_FILE}; {verb} a model written by "
             "'morphloop surrogate train'")
        raise typer.Exit(2)
    return model_dir


@surrogate_app.command("calibrate")
def calibrate(
    model: Path = typer.Option(..., "--model", help="Model folder to calibrate (its surrogate.json is rewritten)."),
    conditions: int = typer.Option(64, "--conditions", min=1, help="Training conditions to fit on."),
    n: int = typer.Option(4, "--n", min=1, help="Tiles per condition and magnification."),
    seed: int = typer.Option(1, "--seed", help="Noise seed of the fitting tiles (keep it off the report's 0)."),
    as_json: bool = typer.Option(False, "--json", help="Print the fit as one JSON object on stdout."),
) -> None:
    """Fit the generation calibration (generated -> simulated descriptors) on training conditions; rewrites
    MODEL/surrogate.json, weights unchanged."""
    from flows.surrogate_flow import calibrate_generation

    model_dir = _model_with_training_descriptors(model, "calibrate")
    with _console().status(f"generating up to {conditions} training conditions x {n} tiles"):
        fit = calibrate_generation(model_dir, conditions, n, seed)
    if as_json:
        typer.echo(json.dumps(fit, default=float))
    else:
        rows = ["| descriptor | a | b | R² before | R² after |", "| --- | --- | --- | --- | --- |"]
        rows += [f"| {k} | {a:.4f} | {b:.4f} | {fit['r2_before'].get(k, float('nan')):.3f} | "
                 f"{fit['r2_after'].get(k, float('nan')):.3f} |"
                 for k, (a, b) in fit["generation_calibration"].items()]
        _err("\n".join(rows) if fit["generation_calibration"] else
             f"only {fit['n_conditions']} training conditions: calibration left at the identity")
    _err(f"generation calibration written to {model_dir / 'surrogate.json'} ({fit['n_conditions']} conditions)")


@surrogate_app.command("stack")
def stack(
    model: Path = typer.Option(..., "--model", help="Model folder (its surrogate.json is rewritten)."),
    conditions: int = typer.Option(160, "--conditions", min=8, help="Training conditions to fit on."),
    n: int = typer.Option(2, "--n", min=1, help="Tiles per condition and magnification (as screening uses)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Solver steps (default: the model's)."),
    seed: int = typer.Option(1, "--seed", help="Noise seed of the fitting tiles (keep it off the report's 0)."),
    as_json: bool = typer.Option(False, "--json", help="Print the stack as one JSON object on stdout."),
) -> None:
    """Fit the descriptor stack (generated descriptors + a GP on the training set's) for one sampler setting;
    rewrites MODEL/surrogate.json, weights unchanged."""
    from flows.surrogate_flow import stack_descriptors

    model_dir = _model_with_training_descriptors(model, "stack")
    with _console().status(f"generating {conditions} training conditions x {n} tiles, cross-validating the GP"):
        fit = stack_descriptors(model_dir, conditions, n, steps, seed)
    if as_json:
        typer.echo(json.dumps(fit, default=float))
    else:
        rows = ["| descriptor | a | b (generated) | c (GP) | R² generated | R² GP (cv) | R² stacked |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        rows += [f"| {k} | {a:.4f} | {b:.4f} | {c:.4f} | {fit['r2']['generated'][k]:.3f} | "
                 f"{fit['r2']['gp_cv'][k]:.3f} | {fit['r2']['stacked'][k]:.3f} |"
                 for k, (a, b, c) in fit["weights"].items()]
        _err("\n".join(rows))
    _err(f"stack for {fit['steps']} steps x {fit['n_images']} tiles written to {model_dir / 'surrogate.json'} "
         f"({fit['n_conditions']} conditions)")


def _with_sample_progress(description: str, total: int, as_json: bool, run) -> dict:
    """``run(progress)`` under a progress bar of ``total`` samples; its summary printed (one JSON object on stdout
    with ``as_json``, else indented on stderr) and returned; a ValueError or a missing file exits 2 with its
    message."""
    from rich.progress import Progress

    with Progress(console=_console(), transient=True) as bar:
        task = bar.add_task(description, total=total)
        try:
            summary = run(lambda k: bar.advance(task, k))
        except (ValueError, FileNotFoundError) as exc:
            _err(f"error: {exc}")
            raise typer.Exit(2)
    if as_json:
        typer.echo(json.dumps(summary, default=float))
    else:
        _err(json.dumps(summary, indent=1, default=float))
    return summary


def _reused(summary: dict, reuse_from: Optional[Path]) -> str:
    """`` (N taken from DIR)`` when samples were copied from another model, else nothing."""
    return f" ({summary['n_reused']} taken from {reuse_from})" if reuse_from else ""


@surrogate_app.command("measure-training")
def measure_training(
    model: Path = typer.Option(..., "--model", help="Model folder (training_descriptors.json and the GP rewritten)."),
    data_seed: int = typer.Option(0, "--data-seed", help="The --seed the training set was built with."),
    world_seed: int = typer.Option(0, "--world-seed", help="The virtual lab's world the training set came from."),
    workers: int = typer.Option(2, "--workers", min=1, help="Samples made and measured at once."),
    restack: bool = typer.Option(True, "--restack/--no-restack", help="Refit the model's descriptor stacks."),
    reuse_from: Optional[Path] = typer.Option(
        None, "--reuse-from", help="Another model folder (e.g. the one this was warm-started from): its measured "
                                   "samples that are the same samples are taken, not made again."),
    keep_hyperparameters: bool = typer.Option(
        False, "--keep-hyperparameters",
        help="Condition the GP on the measured samples with its fitted length scales and noise instead of fitting "
             "them again (seconds instead of many minutes once the model holds thousands of lab samples)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
) -> None:
    """Make the training samples again in the virtual lab (same world and batch seeds) and measure their full
    SEM frames with describe, as the lab measures every experiment; the training-set GP and the descriptor
    stacks then predict on the lab's scale."""
    from flows.surrogate_flow import measure_training as measure
    from models.surrogate.descriptors import TRAINING_DESCRIPTORS_FILE

    model_dir = _model_with_training_descriptors(model, "measure the training samples of")
    n = len(json.loads((model_dir / TRAINING_DESCRIPTORS_FILE).read_text()))
    summary = _with_sample_progress("training samples made and measured", n, as_json,
                                    lambda progress: measure(model_dir, data_seed, world_seed, workers, restack,
                                                             progress=progress, reuse_from=reuse_from,
                                                             keep_hyperparameters=keep_hyperparameters))
    _err(f"measured descriptors of {summary['n_conditions']} training samples{_reused(summary, reuse_from)} "
         f"written to {model_dir}; {len(summary['stacks'])} stack(s) refitted")


@surrogate_app.command("measure-lab")
def measure_lab(
    model: Path = typer.Option(..., "--model", help="Model folder (lab_descriptors.json and the GP rewritten)."),
    n: int = typer.Option(..., "--n", help="Lab samples to add (each one experiment in the virtual lab)."),
    world_seed: int = typer.Option(0, "--world-seed", help="The virtual lab's world (the training set's)."),
    workers: int = typer.Option(2, "--workers", min=1, help="Samples made and measured at once."),
    restack: bool = typer.Option(True, "--restack/--no-restack", help="Refit the model's descriptor stacks."),
    keep_hyperparameters: bool = typer.Option(
        False, "--keep-hyperparameters",
        help="Condition the GP on all samples with its fitted length scales and noise instead of fitting them "
             "again (seconds instead of many minutes once there are thousands of samples)."),
    reuse_from: Optional[Path] = typer.Option(
        None, "--reuse-from", help="Another model folder (e.g. the one this was warm-started from): its measured "
                                   "samples that are the same samples are taken, not made again."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
) -> None:
    """Make N more samples in the virtual lab at space-filling conditions and measure them as every experiment is
    measured; the training-set GP (and so the stacked prediction) learns from them beside the training samples.
    The images are not trained on: more samples cost experiments, not training."""
    from flows.surrogate_flow import measure_lab as measure

    if n < 1:
        _err(f"error: --n must be at least 1, got {n}")
        raise typer.Exit(2)
    model_dir = _model_with_training_descriptors(model, "add lab samples to")
    summary = _with_sample_progress("lab samples made and measured", n, as_json,
                                    lambda progress: measure(model_dir, n, world_seed, workers, restack,
                                                             progress=progress, reuse_from=reuse_from,
                                                             keep_hyperparameters=keep_hyperparameters))
    _err(f"{summary['n_new']} lab samples measured{_reused(summary, reuse_from)} ({summary['n_lab_samples']} in "
         f"all) and written to {model_dir}; "
         f"{len(summary['stacks'])} stack(s) refitted")


@surrogate_app.command("fit-gp")
def fit_gp(
    model: Path = typer.Option(..., "--model", help="Model folder (its GP, config and stacks rewritten)."),
    fit_rows: int = typer.Option(1280, "--fit-rows", min=16,
                                 help="Samples the length scales and noise are fitted on (the GP then conditions "
                                      "on all): an exact fit costs O(n³) per optimiser step."),
    log_ratio: Optional[list[str]] = typer.Option(
        None, "--log-ratio", help="DESCRIPTOR:NUMERATOR/DENOMINATOR: the log ratio of two conditions as one more "
                                  "input of that descriptor's GP, e.g. texture:naoh_wt_pct/nh4oh_wt_pct "
                                  "(repeatable; 'none' for none; default: the model's)."),
    log_condition: Optional[list[str]] = typer.Option(
        None, "--log-condition", help="A positive continuous condition every descriptor's GP reads over its "
                                      "log-range, e.g. time_min (repeatable; 'none' for none; default: the "
                                      "model's)."),
    restack: bool = typer.Option(True, "--restack/--no-restack", help="Refit the model's descriptor stacks."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
) -> None:
    """Fit the training-set GP (conditions -> measured descriptors) again from scratch: new length scales and
    noise, optionally new inputs; then refit the stacks that weigh it."""
    from flows.surrogate_flow import fit_gp as fit

    ratios: dict[str, list[list[str]]] | None = None
    if log_ratio:
        ratios = {}
        for spec in [] if [r.lower() for r in log_ratio] == ["none"] else log_ratio:
            descriptor, _, pair = spec.partition(":")
            names = pair.split("/")
            if not descriptor or len(names) != 2 or not all(names):
                _err(f"error: --log-ratio takes DESCRIPTOR:NUMERATOR/DENOMINATOR (e.g. "
                     f"texture:naoh_wt_pct/nh4oh_wt_pct), got {spec!r}")
                raise typer.Exit(2)
            ratios.setdefault(descriptor, []).append(names)
    log_conditions = None
    if log_condition:
        log_conditions = [] if [c.lower() for c in log_condition] == ["none"] else list(log_condition)
    model_dir = _model_with_training_descriptors(model, "fit the GP of")
    try:
        with _console().status(f"fitting the GP's hyperparameters on {fit_rows} samples per descriptor"):
            summary = fit(model_dir, fit_rows, ratios, restack, log_conditions)
    except ValueError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(summary, default=float))
    _err("GP 5-fold cross-validated R² on all " f"{summary['n_samples']} samples: "
         + ", ".join(f"{k} {v:.3f}" for k, v in summary["gp_cv_r2"].items())
         + f"; written to {model_dir}; {len(summary['stacks'])} stack(s) refitted")


@surrogate_app.command("report")
def report(
    model: Optional[Path] = typer.Option(None, "--model", help="Model folder (default: the shipped model)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default: MODEL/report)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Training set, for the memorisation check."),
    heldout: int = typer.Option(32, "--heldout", help="Interpolation conditions (never trained on)."),
    unseen: int = typer.Option(16, "--unseen", help="Fresh random conditions."),
    n: int = typer.Option(8, "--n", help="Tiles per condition and magnification."),
    seeds: list[int] = typer.Option(
        [0, 1, 2], "--seed", help="Noise seeds (repeat the option); the first gives every figure, the others the "
        "surrogate's R² again, and the goals judge the mean over all."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object on stdout."),
) -> None:
    """Fidelity on held-out conditions (R² vs simulator, baselines, distributions, memorisation) + a PNG grid."""
    from rich.progress import Progress

    from flows.surrogate_report import fidelity_report, report_markdown

    model_dir = _default_model(model)
    out_dir = out or (model_dir / "report")
    if data is not None and not (data / "tiles.parquet").is_file():
        _err(f"error: --data {data} holds no tiles.parquet; pass a folder from 'morphloop surrogate build-data'")
        raise typer.Exit(2)
    if min(seeds) < 0:
        _err(f"error: --seed must be >= 0, got {min(seeds)}")
        raise typer.Exit(2)
    with Progress(console=_console(), transient=True) as progress:
        task = progress.add_task("simulating held-out conditions", total=heldout + unseen)
        result = fidelity_report(model_dir, out_dir, data_dir=data, n_heldout=heldout, n_unseen=unseen,
                                 n_images=n, seed=seeds[0], more_seeds=seeds[1:],
                                 progress=lambda phase, k: progress.advance(task, k))
    if as_json:
        typer.echo(json.dumps({k: v for k, v in result.items() if k != "per_condition"}, default=float))
    else:
        _err(report_markdown(result))
    _err(f"report written to {out_dir}")
