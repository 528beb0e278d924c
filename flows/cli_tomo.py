"""``morphloop tomo ...`` and ``morphloop indi ...``: in-situ tomography dry run, InDI training and enhancement.

``--json`` output goes to stdout and nothing else does; progress and logs go to stderr.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

tomo_app = typer.Typer(help="In-situ X-ray tomography: dry run on the simulated beamline, InDI enhancement.",
                       no_args_is_help=True)
indi_app = typer.Typer(help="InDI restoration models (paper 001): training on one LQ/HQ pair.", no_args_is_help=True)


def _err(message: str) -> None:
    typer.echo(message, err=True)


@tomo_app.command("dry-run")
def dry_run(
    data_dir: Path = typer.Option(Path("tomo-dry-run"), "--data-dir", help="Folder for frames, documents, results."),
    model: Optional[Path] = typer.Option(None, "--model", help="InDI model folder (default: the shipped model)."),
    steps: int = typer.Option(8, "--steps", help="InDI sampling steps."),
    cell: int = typer.Option(7, "--cell", help="Seed of the simulated electrode cell (the shipped model was trained "
                                               "on cell 101; any other is unseen)."),
    noise_seed: Optional[int] = typer.Option(None, "--noise-seed", help="Seed of the detector's noise and column "
                                             "gains (default: --cell): the same cell, another noise draw."),
    beam_loss: bool = typer.Option(True, "--beam-loss/--no-beam-loss",
                                   help="Drop the beam halfway through the HQ reference scan (the run suspends and "
                                        "the scan is repeated once the beam is back)."),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON object on stdout."),
) -> None:
    """The in-situ plan on the simulated beamline (LQ scans at three states of charge with an open-circuit hold
    before each, one HQ reference), the end-of-run flow on every scan, and LQ vs enhanced vs HQ figures. Every
    run is in the Tiled catalog of --data-dir (``morphloop tomo runs``)."""
    if steps < 1 or cell < 0 or (noise_seed is not None and noise_seed < 0):
        _err(f"error: --steps must be >= 1 and --cell and --noise-seed >= 0, got {steps}, {cell} and {noise_seed}")
        raise typer.Exit(2)
    model_dir = _check_model(model)
    if (data_dir / "documents.jsonl").exists():
        _err(f"error: --data-dir {data_dir} already holds a dry run; pass a new folder so nothing is overwritten")
        raise typer.Exit(2)
    from flows.tomo import summary_json
    from flows.tomo_flow import tomo_dry_run

    summary = tomo_dry_run(str(data_dir), model_dir=model_dir, seed=cell, steps=steps, beam_loss=beam_loss,
                           noise_seed=noise_seed)
    if as_json:
        print(summary_json(summary), flush=True)
    else:
        for key in ("resolution_nm", "cnr"):
            v = summary[key]
            _err(f"HQ field, HQ's particle mask: {key}: LQ {v['lq']:.2f}, enhanced {v['enhanced']:.2f}, "
                 f"HQ {v['hq']:.2f}, noise-free phantom {v['truth']:.2f}")
        f = summary["fidelity"]
        _err("HQ field, against HQ: " + ", ".join(f"{name} PSNR {f[k]['psnr_db']:.1f} dB SSIM {f[k]['ssim']:.3f} "
                                                  f"SIFT matches {f[k]['sift_matches']}" for
                                                  name, k in (("LQ", "lq"), ("enhanced", "enhanced"),
                                                              ("N = 1", "one_step"))))
        for t in summary["timepoints"]:
            lq, enhanced, one, phantom = t["lq"], t["enhanced"], t["one_step"], t["phantom"]
            _err(f"state of charge {t['soc']:.2f}, same particles: CNR LQ {lq['cnr']:.2f} -> enhanced "
                 f"{enhanced['cnr']:.2f} (N = 1: {one['cnr']:.2f}; noise-free phantom {phantom['cnr']:.2f}); "
                 f"resolution {lq['resolution_nm']:.0f} -> {enhanced['resolution_nm']:.0f} nm (N = 1: "
                 f"{one['resolution_nm']:.0f} nm)")
        repeated = [s for s in summary["scans"] if s["attempts"] > 1]
        _err(f"scans repeated after a beam loss: {len(repeated)} of {len(summary['scans'])}; runs in Tiled: "
             f"{summary['tiled_catalog']} (morphloop tomo runs --data-dir {data_dir})")
        _err(f"comparison: {summary['comparison_png']}; quality vs steps: {summary['steps_png']}")


@tomo_app.command("process")
def process(
    scans: list[Path] = typer.Argument(..., metavar="SCAN.h5...", help="Scan files the detector wrote (HDF5)."),
    out: Path = typer.Option(..., "--out", help="Folder for reconstructions, enhanced slices and PNGs."),
    model: Optional[Path] = typer.Option(None, "--model", help="InDI model folder (default: the shipped model)."),
    steps: int = typer.Option(8, "--steps", help="InDI sampling steps."),
    rows: int = typer.Option(4, "--rows", help="Central slices of an LQ scan to enhance."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Also attach each scan's figures to its run "
                                                                     "in this folder's Tiled catalog."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per scan on stdout."),
) -> None:
    """The end-of-run flow (reconstruct, enhance LQ scans with InDI, segment, quantify) on scans already taken:
    after a crash cut the processing short, or with another model. The quality is read from each file; a scan
    that fails is reported and the others are still processed (exit code 1). With --data-dir the figures are
    attached to the run that wrote each file (``end_of_run``, as after the scan; ``runs`` in the JSON line)."""
    if steps < 1 or rows < 1:
        _err(f"error: --steps and --rows must be >= 1, got {steps} and {rows}")
        raise typer.Exit(2)
    model_dir = _check_model(model)
    from contextlib import nullcontext

    store = None if data_dir is None else _open_catalog(data_dir)
    failed = 0
    with store or nullcontext():
        for scan in scans:
            failed += _process_one(scan, out, model_dir, steps, rows, store, as_json)
    if failed:
        raise typer.Exit(1)


def _process_one(scan: Path, out: Path, model_dir: Optional[str], steps: int, rows: int, store: Any,
                 as_json: bool) -> int:
    """Process one scan file and attach its figures to the runs in ``store`` that wrote it; 1 if it failed."""
    from flows.tomo import scan_quality, summary_json
    from flows.tomo_flow import attach_end_of_run, tomo_end_of_run

    failed = 0
    try:
        result = tomo_end_of_run(str(scan), scan_quality(scan), str(out), model_dir, steps, rows)
        if store is not None:
            result["runs"] = store.find(scan_file=scan.absolute().as_posix())
            for uid in result["runs"]:
                attach_end_of_run(store, uid, result)
            if not result["runs"]:
                _err(f"warning: no run in the catalog wrote {scan}; its figures are in {out} only")
    except Exception as exc:  # noqa: BLE001 -- one bad scan must not stop the others
        failed = 1
        message = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        result = {"scan": str(scan), "error": message}
        _err(f"error: {message}")
    if as_json:
        print(summary_json(result), flush=True)
    elif "error" not in result:
        figures = result.get("enhanced", result.get(result["quality"]))
        _err(f"{scan}: {result['quality']}, centre {result['center_px']:.2f} px, resolution "
             f"{figures['resolution_nm']:.0f} nm, CNR {figures['cnr']:.2f}")
    return failed


@tomo_app.command("runs")
def runs(
    data_dir: Path = typer.Option(..., "--data-dir", help="The beamline's data folder (a dry run's --data-dir, "
                                                          "the queue-server profile's MORPHLOOP_BEAMLINE_DIR)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per run on stdout."),
) -> None:
    """Every run in the folder's Tiled catalog, oldest first: plan, quality, timepoint and state of charge, how it
    ended, its scan file, the frames of each stream (after a beam loss, those of the repeated scan), the events
    a suspension made it take again, and the end-of-run processing's figures once they are attached."""
    from collections import Counter

    from flows.tomo import summary_json

    with _open_catalog(data_dir) as store:
        for uid in store.runs():
            summary = store.run_summary(uid)
            start = summary["start"]
            frames = dict(Counter(frame["stream"] for frame in summary["images"]))
            run = {"uid": uid, "plan_name": summary["plan_name"],
                   **{k: start.get(k) for k in ("quality", "timepoint", "soc", "insitu_id")},
                   "exit_status": summary["exit_status"], "reason": summary["reason"] or None,
                   "file": summary["images"][0]["path"] if summary["images"] else None, "frames": frames,
                   "repeated_events": summary["repeated_events"],
                   "end_of_run": summary["annotations"].get("end_of_run")}
            if as_json:
                print(summary_json(run), flush=True)
            else:
                soc = "" if run["soc"] is None else f", state of charge {run['soc']:.2f}"
                repeated = sum(run["repeated_events"].values())
                again = f" ({repeated} events taken again after a suspension)" if repeated else ""
                quality = f" {run['quality']}" if run["quality"] else ""
                processed = run["end_of_run"] or {}
                figures = processed.get("enhanced") or processed.get(run["quality"] or "")
                if figures and figures.get("resolution_nm") is not None and figures.get("cnr") is not None:
                    again += (f"; processed: {'enhanced ' if 'enhanced' in processed else ''}resolution "
                              f"{figures['resolution_nm']:.0f} nm, CNR {figures['cnr']:.2f}")
                _err(f"{uid}  {run['plan_name']}{quality}{soc}: {run['exit_status'] or 'open'}, "
                     + ", ".join(f"{n} {stream}" for stream, n in frames.items()) + f"{again}  {run['file'] or ''}")


def _open_catalog(data_dir: Path) -> Any:
    """The Tiled run store of a beamline data folder, or exit 2 with a message saying what is wrong."""
    from flows.run_store import CATALOG_FILE, TILED_DIR, RunStore

    catalog = data_dir / TILED_DIR / CATALOG_FILE
    if not catalog.is_file():
        _err(f"error: no Tiled catalog in {data_dir} (expected {catalog}); pass the --data-dir of a dry run or the "
             "queue-server profile's MORPHLOOP_BEAMLINE_DIR")
        raise typer.Exit(2)
    try:
        return RunStore.open(data_dir)
    except Exception as exc:  # noqa: BLE001 -- a damaged or foreign catalog: say so, no traceback
        _err(f"error: cannot open the Tiled catalog {catalog}: {exc}")
        raise typer.Exit(2)


@tomo_app.command("enhance")
def enhance(
    input_path: Path = typer.Argument(..., metavar="INPUT", help="LQ slice or stack (.tif, .npy, .h5)."),
    model: Optional[Path] = typer.Option(None, "--model", help="InDI model folder (default: the shipped model)."),
    steps: int = typer.Option(8, "--steps", help="InDI sampling steps (1 = plain regression)."),
    out: Path = typer.Option(..., "--out", help="Output file, 2x the input's resolution, same format by suffix."),
    precision: str = typer.Option("auto", "--precision",
                                  help="auto (bfloat16 where the CPU runs it natively, about 2x faster), float32 "
                                       "or bfloat16."),
) -> None:
    """Enhance a low-quality slice or stack 2x with InDI."""
    from models.precision import PRECISIONS
    from models.volume_io import VolumeIOError, read_volume, write_volume

    if steps < 1:
        _err(f"error: --steps must be >= 1, got {steps}")
        raise typer.Exit(2)
    if precision not in PRECISIONS:
        _err(f"error: --precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        raise typer.Exit(2)
    model_dir = _check_model(model)
    try:
        lq = read_volume(input_path)
        from flows.tomo import load_model

        t0 = time.perf_counter()
        enhanced = load_model(model_dir).enhance(lq, steps=steps, precision=precision)
        write_volume(out, enhanced)
    except VolumeIOError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2)
    _err(f"{input_path} {lq.shape} -> {out} {enhanced.shape} in {time.perf_counter() - t0:.1f} s ({steps} steps)")


@tomo_app.command("simulate-pair")
def simulate_pair(
    out: Path = typer.Option(..., "--out", help="Folder for lq.npy and hq.npy."),
    seed: int = typer.Option(101, "--seed", help="Electrode cell of the pair (the dry run uses another one)."),
    soc: float = typer.Option(0.5, "--soc", help="State of charge of the cell, 0..1."),
    rows: int = typer.Option(16, "--rows", help="Detector rows of both scans (a multiple of 4): the pair's depth. "
                                                "More rows give a taller volume, more particles to learn from."),
) -> None:
    """Simulate and reconstruct one LQ/HQ scan pair of the same cell: the training pair of ``indi train``.

    lq.npy: the LQ slices over the HQ field of view (rows/2 x 64 x 64 at 100 nm); hq.npy: the HQ slices averaged
    over row pairs to the LQ row height (rows/2 x 128 x 128 at 50 nm). The cell is as deep as the LQ scan.
    """
    if not 0.0 <= soc <= 1.0 or seed < 0 or rows < 4 or rows % 4:
        _err(f"error: --soc must be in [0, 1], --seed >= 0 and --rows a multiple of 4 (>= 4), got soc={soc}, "
             f"seed={seed}, rows={rows}")
        raise typer.Exit(2)
    from dataclasses import replace

    from flows.tomo import ScanData, hq_reference_rows, lq_over_hq_field, reconstruct_slices
    from models.volume_io import write_volume
    from simulators.tomography import HQ, LQ, ElectrodeCell, simulate_scan

    hq_quality, lq_quality = replace(HQ, n_rows=rows), replace(LQ, n_rows=rows)
    cell = ElectrodeCell(seed, depth_um=rows * LQ.voxel_um)  # as deep as the LQ scan (1.6 µm for 16 rows)
    volumes = {}
    for quality in (lq_quality, hq_quality):
        scan = simulate_scan(cell, soc, quality, seed=seed + (1 if quality is hq_quality else 0))
        volumes[quality.name], _ = reconstruct_slices(
            ScanData(scan.projections, scan.flats, scan.darks, scan.angles_deg), quality.voxel_nm)
    lq = write_volume(out / "lq.npy", lq_over_hq_field(volumes["lq"], hq_quality, lq_quality))
    hq = write_volume(out / "hq.npy", hq_reference_rows(volumes["hq"]))
    _err(f"wrote {lq} and {hq}")


REGIONS = ("all", "top", "bottom")


@tomo_app.command("real-pair")
def real_pair(
    scan: Path = typer.Argument(..., metavar="SCAN", help="Projections, flats and darks in the APS data-exchange "
                                                          "layout (.h5), e.g. tomopy's tooth.h5."),
    out: Path = typer.Option(..., "--out", help="Folder for lq.npy, hq.npy and pair.png."),
    row: Optional[int] = typer.Option(None, "--row", help="Detector row (default: the middle one)."),
    angle_step: int = typer.Option(4, "--angle-step", help="The LQ scan keeps every N-th projection."),
    bin_factor: int = typer.Option(2, "--bin", help="The LQ voxel is this many HQ voxels wide (2 for InDI)."),
    region: str = typer.Option("all", "--region", help="all, top or bottom half of the slice: train on one half "
                                                       "and evaluate on the other, so the test region is unseen."),
    center: Optional[float] = typer.Option(None, "--center", help="Rotation axis (detector column); "
                                                                  "default: found on the full scan."),
) -> None:
    """A real LQ/HQ slice pair from one measured scan: LQ from every N-th projection and 2x binned detector
    pixels, HQ from all projections at full resolution (the degradations of paper 001's LQ scans)."""
    if region not in REGIONS:
        _err(f"error: --region must be one of {', '.join(REGIONS)}, got {region!r}")
        raise typer.Exit(2)
    if angle_step < 2 or bin_factor < 1:
        _err(f"error: --angle-step must be >= 2 and --bin >= 1, got {angle_step} and {bin_factor}")
        raise typer.Exit(2)
    from models.tomo_reconstruction import read_data_exchange, sparse_angle_pair
    from models.volume_io import write_volume

    try:
        data = read_data_exchange(scan)
        lq, hq = sparse_angle_pair(data["projections"], data["flats"], data["darks"], data["angles_deg"],
                                   angle_step, row=row, center=center, bin_factor=bin_factor)
    except (OSError, KeyError, ValueError) as exc:
        _err(f"error: {scan}: {exc}")
        raise typer.Exit(2)
    if region != "all":
        half_lq, half_hq = lq.shape[0] // 2, lq.shape[0] // 2 * bin_factor
        lq, hq = (lq[:half_lq], hq[:half_hq]) if region == "top" else (lq[half_lq:], hq[half_hq:2 * half_hq])
    out.mkdir(parents=True, exist_ok=True)
    write_volume(out / "lq.npy", lq)
    write_volume(out / "hq.npy", hq)
    from flows.tomo import save_before_after
    from models.indi import upsample_lq

    png = save_before_after(out / "pair.png", upsample_lq(lq, bin_factor) if bin_factor > 1 else lq, hq,
                            title=f"{scan.name}: every {angle_step}th projection, {bin_factor}x voxel vs all "
                                  f"projections ({region})")
    _err(f"wrote {out / 'lq.npy'} {lq.shape}, {out / 'hq.npy'} {hq.shape} and {png}")


@tomo_app.command("evaluate")
def evaluate(
    lq: Path = typer.Option(..., "--lq", help="LQ slice or stack (.tif, .npy, .h5), half the HQ resolution."),
    hq: Path = typer.Option(..., "--hq", help="HQ slice or stack of the same region (the reference)."),
    model: Optional[Path] = typer.Option(None, "--model", help="InDI model folder (default: the shipped model)."),
    steps: int = typer.Option(8, "--steps", help="InDI sampling steps."),
    voxel_nm: Optional[float] = typer.Option(None, "--voxel-nm", help="HQ voxel size; without it resolutions "
                                                                     "are in HQ pixels."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for comparison.png and quality_vs_steps.png."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """LQ (bicubic 2x) vs InDI (N steps and N = 1) vs HQ on a held-out pair: edge resolution and CNR with HQ's
    particle mask, PSNR, SSIM and SIFT matches against HQ, and quality against the number of steps."""
    from models.volume_io import VolumeIOError, read_volume

    if steps < 1 or (voxel_nm is not None and not (voxel_nm > 0 and math.isfinite(voxel_nm))):
        _err(f"error: --steps must be >= 1 and --voxel-nm a positive number, got {steps} and {voxel_nm}")
        raise typer.Exit(2)
    model_dir = _check_model(model)
    try:
        lq_data, hq_data = read_volume(lq), read_volume(hq)
    except VolumeIOError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2)
    lq_data = lq_data[None] if lq_data.ndim == 2 else lq_data
    hq_data = hq_data[None] if hq_data.ndim == 2 else hq_data
    if lq_data.ndim != 3 or hq_data.ndim != 3 or lq_data.shape[0] != hq_data.shape[0] \
            or any(2 * a != b for a, b in zip(lq_data.shape[1:], hq_data.shape[1:])):
        _err(f"error: LQ {lq_data.shape} must be half the HQ {hq_data.shape} in y and x (same number of rows); "
             "crop both to the same region")
        raise typer.Exit(2)
    from flows.tomo import compare_qualities, load_model, save_before_after, save_steps_plot, summary_json

    comparison = compare_qualities(lq_data, hq_data, load_model(model_dir), steps=steps,
                                   voxel_nm=voxel_nm or 1.0)
    unit = "nm" if voxel_nm else "px"
    images = comparison.pop("images")
    result = {name: _in_unit(comparison[name], unit) for name in ("lq", "enhanced", "one_step", "hq")}
    result["by_steps"] = {n: _in_unit(v, unit) for n, v in comparison["by_steps"].items()}
    result.update(steps=steps, voxel_nm=voxel_nm, resolution_unit=unit,
                  resolution_gain=comparison["lq"]["resolution_nm"] / comparison["enhanced"]["resolution_nm"],
                  cnr_gain=comparison["enhanced"]["cnr"] / comparison["lq"]["cnr"])
    if out is not None:
        result["comparison_png"] = str(save_before_after(out / "comparison.png", images["lq"][0],
                                                         images["enhanced"][0], images["hq"][0],
                                                         title=f"{lq.name}: LQ vs InDI ({steps} steps) vs HQ"))
        result["steps_png"] = str(save_steps_plot(out / "quality_vs_steps.png", comparison,
                                                  title="Enhancement quality vs number of steps",
                                                  resolution_label=f"edge resolution ({unit}, lower is sharper)"))
    if as_json:
        print(summary_json(result), flush=True)
        return
    r = f"resolution_{unit}"
    for name, label in (("lq", "LQ (bicubic)"), ("enhanced", f"InDI N = {steps}"), ("one_step", "InDI N = 1"),
                        ("hq", "HQ")):
        v = result[name]
        extra = (f", PSNR {v['psnr_db']:.1f} dB, SSIM {v['ssim']:.3f}, SIFT matches {v['sift_matches']}"
                 if "ssim" in v else "")
        _err(f"{label}: resolution {v[r]:.2f} {unit}, CNR {v['cnr']:.2f}{extra}")
    _err(f"resolution x{result['resolution_gain']:.2f}, CNR x{result['cnr_gain']:.2f} over LQ")


def _in_unit(measures: dict, unit: str) -> dict:
    """``resolution_nm`` renamed ``resolution_px`` when no voxel size was given (the value is in pixels)."""
    return {(f"resolution_{unit}" if k == "resolution_nm" else k): v for k, v in measures.items()}


@indi_app.command("train")
def train(
    lq: Path = typer.Option(..., "--lq", help="LQ slice or stack (.tif, .npy, .h5), half the HQ resolution."),
    hq: Path = typer.Option(..., "--hq", help="HQ slice or stack of the same region."),
    out: Path = typer.Option(..., "--out", help="Model folder (model.safetensors + config.json)."),
    minutes: float = typer.Option(10.0, "--minutes", help="Training time budget."),
    seed: int = typer.Option(0, "--seed", help="Seed of patch sampling and initialisation."),
    width: int = typer.Option(24, "--width", help="U-Net channels at full resolution (doubled per level); the "
                                                  "shipped model has 24."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in OUT/checkpoint "
                                                        "(same --width)."),
) -> None:
    """Train InDI on one LQ/HQ pair, as paper 001 does (LQ registered onto HQ first)."""
    from models.volume_io import VolumeIOError, read_volume

    if not (minutes > 0 and math.isfinite(minutes)):
        _err(f"error: --minutes must be a positive number, got {minutes}")
        raise typer.Exit(2)
    if not 4 <= width <= 128:
        _err(f"error: --width must be between 4 and 128 channels, got {width}")
        raise typer.Exit(2)
    try:
        lq_data, hq_data = read_volume(lq), read_volume(hq)
    except VolumeIOError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(2)
    if lq_data.ndim != hq_data.ndim or any(2 * a != b for a, b in zip(lq_data.shape[-2:], hq_data.shape[-2:])) \
            or (lq_data.ndim == 3 and lq_data.shape[0] != hq_data.shape[0]):
        _err(f"error: LQ {lq_data.shape} must be half the HQ {hq_data.shape} in y and x (same number of rows); "
             "crop both to the same region")
        raise typer.Exit(2)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from models.indi import InDIConfig, train_indi

    with Progress(TextColumn("training InDI"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                  console=_stderr_console(), transient=True) as progress:
        task = progress.add_task("train", total=minutes * 60.0, info="")
        t0 = time.perf_counter()

        def report(iteration: int, loss: float) -> None:
            progress.update(task, completed=min(time.perf_counter() - t0, minutes * 60.0),
                            info=f"iteration {iteration}, loss {loss:.4f}")

        try:
            model = train_indi(lq_data, hq_data, InDIConfig(seed=seed, base_channels=width), minutes=minutes,
                               progress=report, checkpoint_dir=out / "checkpoint", resume=resume)
        except ValueError as exc:  # e.g. resuming a checkpoint of another width
            hint = "; resume with the checkpoint's --width, or train afresh without --resume" if resume else ""
            _err(f"error: {exc}{hint}")
            raise typer.Exit(2)
    model.save(out)
    _err(f"model saved to {out} ({time.perf_counter() - t0:.0f} s)")


def _check_model(model: Optional[Path]) -> Optional[str]:
    if model is None:
        return None
    if not (model / "config.json").is_file():
        _err(f"error: --model {model} has no config.json; pass a folder written by 'morphloop indi train'")
        raise typer.Exit(2)
    return str(model)


def _stderr_console():
    from rich.console import Console

    return Console(file=sys.stderr)
