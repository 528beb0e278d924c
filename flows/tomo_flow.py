"""Prefect flows of the tomography station: the end-of-run processing of one scan, and the in-situ dry run.

``tomo_end_of_run`` runs after each scan (reconstruct → enhance → segment → quantify → artifacts + PNG);
``tomo_dry_run`` is what ``morphloop tomo dry-run`` runs: the in-situ plan on the simulated beamline, one
high-quality reference scan, the end-of-run flow on every scan, and the LQ / HQ / enhanced comparison.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from bluesky import RunEngine
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from devices.beamline import TomoStation
from devices.beamline_sim import SimulatedBeamline
from devices.tomo_plans import beam_suspender, insitu_tomography, tomo_scan
from flows.run_store import open_run_store
from flows.simulate import DocumentLog
from flows.tomo import (
    compare_qualities,
    hq_reference_rows,
    load_model,
    lq_over_hq_field,
    quantify,
    read_scan_file,
    reconstruct_slices,
    save_before_after,
    save_steps_plot,
    scan_attempts,
    summary_json,
)
from models.indi import upsample_lq
from models.tomo_metrics import segment_particles
from models.volume_io import write_volume
from simulators.tomography import QUALITIES, ElectrodeCell


@task(name="reconstruct")
def reconstruct_task(scan_file: str, quality: str) -> tuple[np.ndarray, float]:
    return reconstruct_slices(read_scan_file(scan_file), QUALITIES[quality].voxel_nm)


@task(name="enhance")
def enhance_task(volume: np.ndarray, model_dir: str | None, steps: tuple[int, ...]) -> dict[int, np.ndarray]:
    """The volume enhanced at each number of InDI steps (the model loaded once)."""
    model = load_model(model_dir)
    return {n: model.enhance(volume, steps=n) for n in steps}


@flow(name="tomo-end-of-run")
def tomo_end_of_run(scan_file: str, quality: str, out_dir: str, model_dir: str | None = None, steps: int = 8,
                    rows: int = 4) -> dict[str, Any]:
    """Reconstruct one scan; for LQ scans enhance ``rows`` central slices 2× with InDI; segment and quantify.

    Writes ``<scan>_recon.h5`` (and ``<scan>_enhanced.h5``) and a before/after PNG into ``out_dir``, and a
    Prefect markdown artifact with the figures. Returns them.
    """
    logger = get_run_logger()
    out = Path(out_dir)
    stem = Path(scan_file).stem
    volume, center = reconstruct_task(scan_file, quality)
    write_volume(out / f"{stem}_recon.h5", volume)
    voxel = QUALITIES[quality].voxel_nm
    middle = volume.shape[0] // 2
    picked = volume[max(middle - rows // 2, 0): middle - rows // 2 + rows]
    result: dict[str, Any] = {"scan": scan_file, "quality": quality, "center_px": center}
    if quality == "lq":
        by_steps = enhance_task(picked, model_dir, (steps, 1))
        enhanced = by_steps[steps]
        write_volume(out / f"{stem}_enhanced.h5", enhanced)
        mask = np.stack([segment_particles(s) for s in enhanced])
        result["enhanced"] = quantify(enhanced, mask, voxel / 2)
        bicubic = upsample_lq(picked)
        result["lq"] = quantify(bicubic, mask, voxel / 2)  # the same particles, before enhancement
        # and by plain regression (N = 1), paper 001's baseline
        result["one_step"] = quantify(by_steps[1], mask, voxel / 2)
        result["png"] = str(save_before_after(out / f"{stem}_before_after.png", bicubic[0], enhanced[0],
                                              title=f"{stem}: centre {center:.1f} px"))
    else:
        mask = np.stack([segment_particles(s) for s in picked])
        result[quality] = quantify(picked, mask, voxel)
    figures = result.get("enhanced", result.get(quality))
    create_markdown_artifact(
        key="tomo-scan", description=f"end of run: {stem}",
        markdown=(f"### {stem} ({quality})\n\n| centre (px) | resolution (nm) | CNR | particle fraction |\n"
                  f"|---|---|---|---|\n| {center:.2f} | {figures['resolution_nm']:.0f} | {figures['cnr']:.2f} | "
                  f"{figures['particle_fraction']:.3f} |\n" + (f"\n![before/after]({result['png']})\n"
                                                              if "png" in result else "")))
    logger.info("%s: centre %.2f px, resolution %.0f nm, CNR %.2f", stem, center, figures["resolution_nm"],
                figures["cnr"])
    return result


def phantom_over_hq_field(beamline: SimulatedBeamline, soc: float) -> np.ndarray:
    """The noise-free phantom the HQ scan sees at ``soc``, in the HQ reference's rows (pairs averaged)."""
    return hq_reference_rows(beamline.volume(soc, QUALITIES["hq"]))


def phantom_figures(beamline: SimulatedBeamline, soc: float) -> dict[str, float]:
    """Resolution and CNR of the noise-free phantom at ``soc`` over the HQ field, on its own particle mask: what a
    perfect image would score. Cracks, dense phases and the binder/pore background give the phantom a finite CNR
    that falls with charge; an enhancement scoring above it has smoothed real structure away."""
    truth = phantom_over_hq_field(beamline, soc)
    return quantify(truth, np.stack([segment_particles(s) for s in truth]), QUALITIES["hq"].voxel_nm)


class ScanCollector:
    """Remembers, per Bluesky run, its start metadata and the HDF5 file its frames went to."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self.runs.append({"uid": doc["uid"], "quality": doc.get("quality"), "soc": doc.get("soc"),
                              "timepoint": doc.get("timepoint"), "file": None})
        elif name == "resource" and self.runs:
            self.runs[-1]["file"] = str(Path(doc["root"]) / doc["resource_path"])


def attach_end_of_run(store: Any, uid: str, result: dict[str, Any]) -> None:
    """Attach :func:`tomo_end_of_run`'s ``result`` (JSON-clean) to run ``uid`` in ``store`` as ``end_of_run``."""
    store.annotate(uid, "end_of_run", json.loads(summary_json(result)))


class EndOfRunProcessing:
    """A RunEngine callback that runs :func:`tomo_end_of_run` on every scan whose run closes successfully.

    Processing is keyed to the stop document and runs in one background thread, so the RunEngine goes on with
    the next plan (or the next in-situ timepoint) while the last scan is reconstructed and enhanced: what the
    queue-server profile subscribes (``flows/deploy/qserver/``). A run without frames (no HDF5 resource) or that
    did not end in success is logged and skipped. ``results`` maps each processed run's uid to a future of the
    flow's result; :meth:`wait` blocks until all are done. With a ``store`` (:class:`flows.run_store.RunStore`)
    each result is also attached to its run in Tiled, as the annotation ``end_of_run``.
    """

    def __init__(self, out_dir: str | Path, model_dir: str | None = None, steps: int = 8, rows: int = 4,
                 store: Any = None) -> None:
        self.out_dir, self.model_dir, self.steps, self.rows = str(out_dir), model_dir, steps, rows
        self.store = store
        self.collector = ScanCollector()
        self.results: dict[str, Future] = {}
        self.skipped: dict[str, str] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tomo-end-of-run")

    def __call__(self, name: str, doc: dict) -> None:
        self.collector(name, doc)
        if name != "stop":
            return
        run = next((r for r in reversed(self.collector.runs) if r["uid"] == doc["run_start"]), None)
        if run is None or run["file"] is None:
            self._skip(doc["run_start"], "the run wrote no frames")
        elif doc.get("exit_status") != "success":
            self._skip(doc["run_start"], f"the run ended {doc.get('exit_status')}: {doc.get('reason', '')}")
        else:
            self.results[run["uid"]] = self._executor.submit(self._process, run["uid"], run["file"], run["quality"])

    def _process(self, uid: str, scan_file: str, quality: str) -> dict[str, Any]:
        result = tomo_end_of_run(scan_file, quality, self.out_dir, self.model_dir, self.steps, self.rows)
        if self.store is not None:
            try:  # the figures are in the result and in out_dir either way: a catalog hiccup must not lose them
                attach_end_of_run(self.store, uid, result)
            except Exception as exc:  # noqa: BLE001
                logging.getLogger(__name__).warning("could not attach the end-of-run results to run %s in "
                                                    "Tiled: %s", uid, exc)
        return result

    def _skip(self, uid: str, why: str) -> None:
        self.skipped[uid] = why
        logging.getLogger(__name__).warning("end-of-run processing skipped for run %s: %s", uid, why)

    def wait(self, timeout: float | None = None) -> dict[str, dict[str, Any]]:
        """Every submitted scan's result by run uid (re-raises the first flow that failed)."""
        return {uid: future.result(timeout) for uid, future in list(self.results.items())}


@flow(name="tomo-dry-run")
def tomo_dry_run(data_dir: str, model_dir: str | None = None, seed: int = 7, n_timepoints: int = 3,
                 c_rate: float = 2.0, interval_min: float = 15.0, n_projections: int = 180,
                 steps: int = 8, beam_loss: bool = True, noise_seed: int | None = None) -> dict[str, Any]:
    """The in-situ series on the simulated beamline, end-of-run processing, and the quality comparison.

    The cell (``seed``) is not the one the InDI model was trained on. LQ scans at ``n_timepoints`` states of
    charge (open-circuit hold before each), then one HQ reference scan at the final state; all documents go to
    ``data_dir/documents.jsonl`` and to the Tiled catalog in ``data_dir/tiled``. The returned summary compares
    LQ, HQ and enhanced slices of the final state over the HQ field of view (``resolution_nm`` and ``cnr``, each
    with ``lq``, ``hq``, ``enhanced``); ``scans`` gives each scan's run ``uid`` and ``attempts``, and
    ``tiled_catalog`` the catalog. With ``beam_loss`` the beam drops halfway through the HQ reference scan: the
    run suspends until it is back and the scan is repeated (``attempts`` 2). ``noise_seed`` (default ``seed``)
    draws the detector's noise and column gains: the same cell scanned by another detector realisation.
    """
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    # a 20-min outage (2 s of wall time here): the suspender has ample time to take the spoilt frame over
    beamline = SimulatedBeamline(data / "raw", seed=seed if noise_seed is None else noise_seed,
                                 cell=ElectrodeCell(seed=seed), time_compression=600.0, beam_outage_s=1200.0)
    station = TomoStation.simulated(beamline, quality="lq")
    if beam_loss:  # the fault counts projection frames: this one is halfway through the HQ reference scan
        beamline.faults.arm("beam_loss", skip=n_timepoints * n_projections + n_projections // 2)
    engine = RunEngine({})
    log = DocumentLog(data / "documents.jsonl")
    processed = data / "processed"
    store = open_run_store(data)  # None without Tiled
    processing = EndOfRunProcessing(processed, model_dir, steps, store=store)  # each scan once its run closes
    engine.subscribe(log)
    if store is not None:
        engine.subscribe(store.writer)
    engine.subscribe(processing)
    engine.install_suspender(beam_suspender(station.beam))
    devices = (station.detector, station.rotation, station.sample_stage, station.shutter)
    try:
        engine(insitu_tomography(station.potentiostat, *devices, c_rate=c_rate, interval_min=interval_min,
                                 n_timepoints=n_timepoints, ocv_hold_min=1.0, quality="lq",
                                 n_projections=n_projections))
        engine(tomo_scan(*devices, n_projections=n_projections, quality="hq", potentiostat=station.potentiostat))
        results = processing.wait()
    finally:
        log.close()
        if store is not None:
            store.close()
    runs = processing.collector.runs
    scans = [{**run, **results[run["uid"]], "attempts": scan_attempts(run["file"])} for run in runs
             if run["uid"] in results]
    lq_final = next(r for r in reversed(runs) if r["quality"] == "lq" and r["file"])
    hq_final = next(r for r in reversed(runs) if r["quality"] == "hq" and r["file"])
    lq_volume, _ = reconstruct_slices(read_scan_file(lq_final["file"]), QUALITIES["lq"].voxel_nm)
    hq_volume, _ = reconstruct_slices(read_scan_file(hq_final["file"]), QUALITIES["hq"].voxel_nm)
    # the phantom the HQ scan saw, noise-free: the ceiling of the HQ-field figures
    truth = phantom_over_hq_field(beamline, hq_final["soc"] if hq_final["soc"] is not None else beamline.soc())
    comparison = compare_qualities(lq_over_hq_field(lq_volume), hq_reference_rows(hq_volume), load_model(model_dir),
                                   steps=steps, truth=truth)
    images = comparison.pop("images")
    steps_png = save_steps_plot(processed / "quality_vs_steps.png", comparison)
    png = save_before_after(processed / "comparison.png", images["lq"][0], images["enhanced"][0], images["hq"][0],
                            title=f"final state of charge {hq_final['soc']:.2f}")
    summary = {
        "data_dir": str(data),
        "scans": [{k: s[k] for k in ("uid", "timepoint", "soc", "quality", "file", "attempts", "center_px") if k in s}
                  for s in scans],
        "tiled_catalog": None if store is None else str(store.catalog_path),
        "resolution_nm": {k: comparison[k]["resolution_nm"] for k in ("lq", "hq", "enhanced", "truth")},
        "cnr": {k: comparison[k]["cnr"] for k in ("lq", "hq", "enhanced", "truth")},
        "fidelity": {k: {m: comparison[k][m] for m in ("psnr_db", "ssim", "sift_matches")}
                     for k in ("lq", "enhanced", "one_step")},
        "one_step": comparison["one_step"],
        "by_steps": comparison["by_steps"],
        "timepoints": [{"soc": s["soc"], **{k: s[k] for k in ("lq", "enhanced", "one_step")},
                        "phantom": phantom_figures(beamline, s["soc"])} for s in scans if s["quality"] == "lq"],
        "comparison_png": str(png),
        "steps_png": str(steps_png),
    }
    create_markdown_artifact(
        key="tomo-dry-run", description="LQ vs enhanced vs HQ",
        markdown=("| | LQ (bicubic) | InDI | HQ | noise-free phantom |\n|---|---|---|---|---|\n"
                  + "".join(f"| {label} | " + " | ".join(fmt.format(summary[key][k]) for k in
                                                        ("lq", "enhanced", "hq", "truth")) + " |\n"
                            for label, key, fmt in (("resolution (nm)", "resolution_nm", "{:.0f}"),
                                                    ("CNR", "cnr", "{:.2f}")))))
    return summary
