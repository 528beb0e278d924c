"""The ``morphloop`` command line.

``--json`` output goes to stdout, one object per line, and nothing else does; progress and logs go to stderr.
"""
from __future__ import annotations

import json
import math
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

# Prefect's temporary API server takes 20-30 s to start on 2 busy cores; its 20-s default gives up too early.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network at run time

app = typer.Typer(
    name="morphloop",
    help="MorphoLoop: autonomous design of battery cathode-precursor microstructure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class KindChoice(str, Enum):
    particles = "particles"
    texture = "texture"
    auto = "auto"


class SegmenterChoice(str, Enum):
    watershed = "watershed"
    sam = "sam"


@app.callback()
def _root() -> None:
    """MorphoLoop: quantify SEM morphology, predict it from synthesis conditions, design and run campaigns."""


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _json_line(record: dict) -> str:
    """One strict-JSON line: NaN and infinities (which ``json`` would write as bare ``NaN``) become null."""
    def clean(value):
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    return json.dumps({k: clean(v) for k, v in record.items()}, default=_json_default, allow_nan=False)


@app.command()
def describe(
    images: list[Path] = typer.Argument(..., help="SEM image files (TIFF, PNG, JPEG).", show_default=False),
    pixel_size_um: Optional[float] = typer.Option(
        None, "--pixel-size-um", help="Pixel size in µm; overrides the file's calibration tags."),
    kind: KindChoice = typer.Option(
        KindChoice.auto, "--kind",
        help="particles (low magnification: D50, sphericity), texture (high magnification), or auto "
             "(by pixel size: finer than 0.025 µm/px is texture)."),
    segmenter: SegmenterChoice = typer.Option(
        SegmenterChoice.watershed, "--segmenter", help="Instance segmentation for particle images."),
    sam_checkpoint: Optional[Path] = typer.Option(
        None, "--sam-checkpoint", help="Local Segment-Anything checkpoint (.pth or .safetensors); "
                                       "implies --segmenter sam."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per image on stdout."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write the per-particle table to this CSV file."),
    overlay: Optional[Path] = typer.Option(
        None, "--overlay", help="Write PNG overlays (outlines coloured by sphericity) into this directory."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1,
        help="Images described at once, in worker processes. Default: one per CPU core (1 with --segmenter sam)."),
) -> None:
    """Quantify morphology: D50 and sphericity of secondary particles, texture of primary particles.

    Each image is described independently: a bad image is reported on stderr (and as a JSON record with an
    "error" key) while the others are still described; the exit code is 1 if any image failed.
    """
    import pandas as pd
    from rich.progress import Progress

    from models.describe import JSON_KEYS, DescribeError, DescribeOptions, Describer, default_workers, describe_files
    from models.imageio import ImageInputError, validate_pixel_size

    try:
        validate_pixel_size(pixel_size_um)
    except ImageInputError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2)
    if sam_checkpoint is not None:
        if not sam_checkpoint.is_file():
            _err(f"error: --sam-checkpoint: {sam_checkpoint} is not a file; pass a local SAM checkpoint "
                 "(.pth or .safetensors); no weights are downloaded")
            raise typer.Exit(2)
        segmenter = SegmenterChoice.sam
    options = DescribeOptions(kind=kind.value, segmenter=segmenter.value,
                              sam_checkpoint=str(sam_checkpoint) if sam_checkpoint else None)
    try:
        Describer(options)  # validates the options before any image
    except DescribeError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2)

    # A checkpoint that cannot be loaded is a bad flag, not a bad image: stop at once (exit 2) rather than
    # retrying the load and failing every image of the batch.
    bad_flag_errors: tuple[type[Exception], ...] = ()
    if segmenter is SegmenterChoice.sam:
        from models.sam import SamCheckpointError

        bad_flag_errors = (SamCheckpointError,)

    n_workers = workers or default_workers(options, len(images))
    tables, failures, overlay_failures, used_overlay_names = [], 0, 0, set()
    with Progress(console=_stderr_console(), transient=True, disable=len(images) < 2) as progress:
        task = progress.add_task("describing", total=len(images))
        described = describe_files(images, pixel_size_um, options, workers=n_workers,
                                   keep_arrays=overlay is not None)  # arrays only travel back for overlays
        for path, result in described:
            try:
                if isinstance(result, BaseException):
                    raise result
            except bad_flag_errors as exc:
                _err(f"error: --sam-checkpoint: {exc}")
                raise typer.Exit(2)
            except DescribeError as exc:
                failures += 1
                _err(f"error: {exc}")
                if as_json:
                    record = {key: None for key in JSON_KEYS}
                    record.update(image=str(path), error=str(exc))
                    print(_json_line(record), flush=True)
                progress.advance(task)
                continue
            except Exception as exc:  # noqa: BLE001 - one broken image must not stop the batch
                failures += 1
                _err(f"error: {path}: unexpected {type(exc).__name__}: {exc}")
                if as_json:
                    record = {key: None for key in JSON_KEYS}
                    record.update(image=str(path), error=f"{type(exc).__name__}: {exc}")
                    print(_json_line(record), flush=True)
                progress.advance(task)
                continue
            if overlay is not None:
                from models.overlay import save_overlay

                try:
                    save_overlay(result, overlay / _overlay_name(Path(path), used_overlay_names))
                except Exception as exc:  # noqa: BLE001 - a failed overlay is reported, the batch goes on
                    overlay_failures += 1
                    _err(f"error: {path}: overlay not written ({type(exc).__name__}: {exc})")
            record = result.record()
            if as_json:
                print(_json_line(record), flush=True)
            else:
                _print_human(record, result.kind)
            if not result.particles.empty:
                tables.append(result.particles.assign(image=str(path)))
            progress.advance(task)
    if csv is not None:
        table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["image"])
        cols = ["image"] + [c for c in table.columns if c != "image"]
        csv.parent.mkdir(parents=True, exist_ok=True)
        table[cols].to_csv(csv, index=False)
        _err(f"per-particle table: {csv} ({len(table)} particles)")
    if failures:
        _err(f"{failures} of {len(images)} image(s) could not be described")
    if overlay_failures:
        _err(f"{overlay_failures} overlay(s) could not be written to {overlay}")
    if failures or overlay_failures:
        raise typer.Exit(1)


@app.command()
def simulate(
    conditions: str = typer.Option(
        ..., "--conditions", help="Synthesis conditions: a JSON object or list of objects, or a .json file. "
                                  "Missing keys take their defaults (see the README's conditions table)."),
    out: Path = typer.Option(..., "--out", help="New folder for the image files and the Bluesky documents."),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulated lab (world, batch noise, imaging)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per sample on stdout."),
    time_compression: Optional[float] = typer.Option(
        None, "--time-compression", help="Lab seconds per wall second (e.g. 1e4); default: instant syntheses."),
) -> None:
    """Make and image samples on the simulated lab: reactor and SEM devices driven by Bluesky plans.

    Each sample is one synthesize_and_image run; every document is appended to OUT/documents.jsonl as it is
    emitted. The JSON record carries the sample id, the conditions, the image paths and pixel sizes at low and
    high magnification, and the simulator's truth (d50_um, sphericity_mean, sphericity_std, texture).
    """
    from rich.progress import Progress

    from flows.simulate import parse_conditions, simulate_samples
    from simulators.conditions import ConditionError
    from simulators.faults import LabFault

    if seed < 0:
        _err(f"error: --seed must be >= 0, got {seed}")
        raise typer.Exit(2)
    if time_compression is not None and not (time_compression > 0 and math.isfinite(time_compression)):
        _err(f"error: --time-compression must be a positive number of lab seconds per wall second, "
             f"got {time_compression}")
        raise typer.Exit(2)
    try:
        items = parse_conditions(conditions)
    except ConditionError as exc:
        _err(f"error: --conditions: {exc}")
        raise typer.Exit(2)

    with Progress(console=_stderr_console(), transient=True, disable=len(items) < 2) as progress:
        task = progress.add_task("simulating", total=len(items))

        def report(sample) -> None:
            if as_json:
                print(_json_line(sample.record()), flush=True)
            else:
                truth = sample.truth
                _err(f"{sample.sample_id}: D50 {truth['d50_um']:.2f} µm, sphericity {truth['sphericity_mean']:.3f}"
                     f" ± {truth['sphericity_std']:.3f}, texture {truth['texture']:.2f}; images "
                     + ", ".join(f"{k}: {v}" for k, v in sample.images.items()))
            progress.advance(task)

        try:
            simulate_samples(items, out, seed=seed, time_compression=time_compression, on_sample=report)
        except FileExistsError as exc:
            _err(f"error: --out: {exc}")
            raise typer.Exit(2)
        except LabFault as exc:
            _err(f"error: the simulated lab faulted: {exc}; samples finished before it are in {out}")
            raise typer.Exit(1)


def _overlay_name(path: Path, used: set[str]) -> str:
    """``STEM_overlay.png``, made unique within one call (``a/x.tif`` and ``b/x.png`` both have stem x)."""
    name, i = f"{path.stem}_overlay.png", 1
    while name in used:
        i += 1
        name = f"{path.stem}_{i}_overlay.png"
    used.add(name)
    return name


def _print_human(record: dict, kind: str) -> None:
    def fmt(v, spec=".4g"):
        return "-" if v is None else format(v, spec)

    if kind == "texture":
        typer.echo(f"{record['image']}: texture={fmt(record['texture'], '.3f')} "
                   f"energy={fmt(record['texture_energy'], '.4f')} (pixel {record['pixel_size_um']:g} µm)")
    else:
        typer.echo(f"{record['image']}: n={record['n_particles']} D50={fmt(record['d50_um'])} µm "
                   f"D50(vol)={fmt(record['d50_volume_um'])} µm D10={fmt(record['d10_um'])} "
                   f"D90={fmt(record['d90_um'])} sphericity={fmt(record['sphericity_mean'], '.3f')}"
                   f"±{fmt(record['sphericity_std'], '.3f')} (pixel {record['pixel_size_um']:g} µm)")


def _stderr_console():
    from rich.console import Console

    return Console(file=sys.stderr)


def main() -> None:  # pragma: no cover - console entry point
    app()


from flows.cli_tomo import indi_app, tomo_app  # noqa: E402 - the sub-commands register on the app defined above

app.add_typer(tomo_app, name="tomo")
app.add_typer(indi_app, name="indi")

from flows.cli_surrogate import surrogate_app  # noqa: E402

app.add_typer(surrogate_app, name="surrogate")

from flows.cli_campaign import campaign_app, dry_run  # noqa: E402

app.command("dry-run")(dry_run)
app.add_typer(campaign_app, name="campaign")

from flows.cli_design import design  # noqa: E402

app.command("design")(design)


if __name__ == "__main__":  # pragma: no cover - after every sub-command has registered
    app()
